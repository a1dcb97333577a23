"""The trust options of maximize and classviz: a bad --dataset or a judge with other classes
is one sentence, exit 2, before any render; a good one puts trust in the summary."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from convsight.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _said(result, text: str) -> bool:
    return text in " ".join(result.output.split()) and "Traceback" not in result.output


def test_bad_dataset_and_mismatched_judge_exit_2_before_rendering(tmp_path):
    out = tmp_path / "never"
    base = ["--steps", "2", "--out", out, "--quiet"]
    result = _run("maximize", "mnist-cnn", "--layer", "features.0", "--channels", "0",
                  "--dataset", tmp_path / "missing", *base)  # fmt: skip
    assert result.exit_code == 2 and _said(result, "missing"), result.output
    (tmp_path / "empty").mkdir()
    result = _run("classviz", "mnist-cnn", "--classes", "3", "--dataset", tmp_path / "empty", *base)
    assert result.exit_code == 2 and _said(result, "no images"), result.output
    result = _run("classviz", "mnist-cnn", "--classes", "3", "--judge", "five-class-cnn", *base)
    assert result.exit_code == 2 and _said(result, "same labels in the same order"), result.output
    result = _run("classviz", "mnist-cnn", "--classes", "margin:3", "--judge", "mnist-cnn", *base)
    assert result.exit_code == 2 and _said(result, "give classes only"), result.output
    assert not out.exists()


def test_maximize_with_a_dataset_writes_trust(tmp_path, samples):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in samples[:3]:
        (photos / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    result = _run("maximize", "mnist-cnn", "--layer", "features.3", "--channels", "0,1",
                  "--steps", "2", "--dataset", photos, "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "off-path:" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trust"]["images"] == 3
    assert all(row["trust"]["reach"]["of"] == 3 for row in summary["channels"])
