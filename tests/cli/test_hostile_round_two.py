"""Hostile input, round two: numbers finite in the precision they are used in, --out that is
the user's, images as viewers show them, a full disk, damaged atlas records, odd flags."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from convsight.cli import app
from convsight.data import exif_orientation, load_image
from convsight.errors import ConvsightError
from convsight.models import ModelCard, load_model
from convsight.report import OUT_MARKER, write_checkpoint, write_json
from convsight.report import files as report_files
from convsight.studies.atlas import LOCK_FILE, AtlasRequest, build_atlas
from convsight.studies.saliency import SaliencyRequest, write_saliency
from tests.cli.test_inputs import assert_one_line_error

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="convsight")


def tiny_checkpoint(tiny, folder: Path, **card_changes) -> Path:
    """``tiny`` saved as a checkpoint; its card (beside it) changed as given, unchecked."""
    path = write_checkpoint(folder / "tiny.pt", tiny.module, tiny.card)
    card = json.loads(path.with_suffix(".json").read_text())
    card["input"].update(card_changes)
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


# --- 3. every number finite in the precision it is used in --------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("mean", 1e308, "bad input.mean"),  # finite in JSON, infinite in float32
        ("std", 1e-320, "bad input.std"),  # 0 in float32
        ("std", 1e-40, "overflows 32-bit"),  # a float32 std, but 1/std is not
    ],
)
def test_a_card_whose_numbers_overflow_float32_is_refused(tiny, tmp_path, field, value, fragment):
    ckpt = tiny_checkpoint(tiny, tmp_path, **{field: [value] * 3})
    with pytest.raises(ConvsightError, match=fragment):
        load_model(str(ckpt))
    out = tmp_path / "out"
    assert_one_line_error(run("layers", ckpt), fragment)
    result = run("maximize", ckpt, "--layer", "features.0", "--steps", "1", "--out", out)
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr", "inf"],
        ["--lr", "-inf"],
        ["--lr", "1e39"],  # finite in Python, infinite in float32
        ["--l1", "inf"],
        ["--set", "lr=inf"],
        ["--set", "scales=1,inf"],
        ["--mean", "1e308"],
    ],
)
def test_flags_that_are_not_finite_are_refused_before_work(tmp_path, flags):
    out = tmp_path / "out"
    result = run("maximize", "mnist-cnn", "--layer", "features.0", *flags, "--out", out)
    assert result.exit_code == 2, result.output
    assert "finite" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


# --- 4. --out names a folder, and a folder of the user's is not written into ----------------


def test_out_must_name_a_folder(tmp_path):
    assert_one_line_error(
        run("maximize", "mnist-cnn", "--layer", "features.0", "--out", ""),
        "--out must name a folder, not an empty string",
    )


@pytest.mark.slow
def test_a_folder_of_the_users_is_refused_unless_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my page")
    (out / "summary.json").write_text("{}")
    before = {p.name: p.read_text() for p in out.iterdir()}
    args = ("maximize", "mnist-cnn", "--layer", "features.0", "--channels", "0", "--steps", "1")
    result = run(*args, "--quiet", "--out", out)
    assert_one_line_error(result, "holds files convsight did not write")
    assert "--force" in result.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # untouched
    result = run(*args, "--quiet", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert (out / OUT_MARKER).is_file() and (out / "channel_0000.png").is_file()
    again = run(*args, "--quiet", "--out", out)  # now convsight's folder: no --force needed
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_new_and_empty_folders_are_taken_and_marked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ("maximize", "mnist-cnn", "--layer", "features.0", "--channels", "0", "--steps", "1")
    for out in (empty, tmp_path / "new" / "deeper"):
        result = run(*args, "--quiet", "--out", out)
        assert result.exit_code == 0, result.output
        assert (out / OUT_MARKER).is_file()


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    result = run("maximize", "mnist-cnn", "--layer", "features.0", "--out", target)
    assert_one_line_error(result, "exists and is not a folder")
    assert target.read_text() == "mine"


# --- 5. images as every viewer shows them -------------------------------------------------------


def sideways_photo(path: Path, orientation: int = 6) -> np.ndarray:
    """A 32x32 photo stored sideways: white left quarter; EXIF says turn it 90 degrees
    clockwise (orientation 6). Returns the upright pixels."""
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:, :8] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())
    return np.rot90(stored, k=-1)  # clockwise: the white band is now on top


@pytest.mark.slow
def test_exif_orientation_is_applied_and_recorded(tiny, tmp_path):
    photo = tmp_path / "phone.png"
    upright = sideways_photo(photo)
    assert exif_orientation(photo) == 6
    assert np.array_equal(np.asarray(load_image(photo)), upright)
    out = tmp_path / "out"
    write_saliency(tiny, SaliencyRequest([photo], methods=["saliency"]), out, False)
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["exif_orientation"] == [6]
    with np.load(out / "saliency.npz") as arrays:
        pixels = arrays["pixels"][0]
    assert pixels[:, :8].min() == 1.0 and pixels[:, 8:].max() == 0.0  # white on top


def test_an_image_without_exif_is_as_stored(tmp_path):
    plain = tmp_path / "plain.png"
    Image.fromarray(np.eye(8, 16, dtype=np.uint8) * 255).save(plain)
    assert exif_orientation(plain) == 1
    assert load_image(plain).size == (16, 8)


# --- 6. a full disk or a denied write: one sentence, exit 2, no half file ------------------------


@pytest.mark.slow
def test_full_disk_while_saving_a_checkpoint_is_one_sentence(tmp_path, mnist_dir):
    """`train mnist` into a 16 KiB file system (its own mount namespace): the marker fits,
    the checkpoint does not."""
    if shutil.which("unshare") is None:
        pytest.fail("the disk-full test needs util-linux's unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    convsight = [sys.executable, "-m", "convsight.cli"]
    train = [
        *convsight, "train", "mnist", "--epochs", "1", "--train-limit", "128",
        "--test-limit", "64", "--quiet", "--data-dir", str(mnist_dir), "--out", f"{disk}/run",
    ]  # fmt: skip
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {disk} || exit 99; "
        f'"$@"; code=$?; echo "exit $code"; ls -A {disk}/run'
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *train],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 99, f"cannot mount a small file system: {done.stderr}"
    lines = done.stdout.split()
    assert "exit" in lines and lines[lines.index("exit") + 1] == "2", (done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: no space left on"), done.stderr
    assert "model.pt" in errors[0]
    left = lines[lines.index("exit") + 2 :]
    assert "model.pt" not in left and not any(name.endswith(".part") for name in left), left


def test_a_denied_write_is_one_sentence(tmp_path, monkeypatch):
    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(report_files, "_temporary_name", denied)
    with pytest.raises(ConvsightError, match="permission denied while writing"):
        write_json(tmp_path / "x.json", {"a": 1})
    assert not (tmp_path / "x.json").exists()


# --- 7. the atlas redoes a damaged channel; its lock follows no link -----------------------------


def tiny_atlas(model, out):
    request = AtlasRequest(["features.0"], out, presets=["paper"], steps=2, show_progress=False)
    return build_atlas(model, request).to_json()


@pytest.mark.slow
def test_atlas_redoes_a_channel_whose_record_or_image_is_damaged(tiny, tmp_path):
    out = tmp_path / "atlas"
    assert tiny_atlas(tiny, out)["rendered_this_run"] == 8
    records, images = out / "features.0" / "records", out / "features.0" / "img"
    (records / "c1.json").write_text('{"channel": 1, "val')  # cut off
    (records / "c2.json").write_text("[]")  # not a record
    (images / "c3_paper.png").unlink()  # its picture deleted
    again = tiny_atlas(tiny, out)
    assert again["rendered_this_run"] == 3
    for c in (1, 2, 3):
        assert json.loads((records / f"c{c}.json").read_text())["channel"] == c
        assert Image.open(images / f"c{c}_paper.png").size[0] > 0
    assert tiny_atlas(tiny, out)["rendered_this_run"] == 0  # whole again


def test_atlas_lock_that_is_a_link_is_refused(tiny, tmp_path):
    out = tmp_path / "atlas"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, out / LOCK_FILE)
    with pytest.raises(ConvsightError, match="cannot take the atlas lock"):
        tiny_atlas(tiny, out)
    assert victim.read_text() == "precious"


# --- lesser: seeds, devices, labels, Ray addresses -----------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--seed", str(2**64)], "invalid value for '--seed'"),
        (["--seed", "-1"], "invalid value for '--seed'"),
    ],
)
def test_seed_out_of_range_is_a_usage_error(tmp_path, flags, fragment):
    result = run("maximize", "mnist-cnn", "--layer", "features.0", *flags, "--out", tmp_path / "o")
    assert_one_line_error(result, fragment)


def test_a_device_that_holds_no_data_is_refused(tmp_path, mnist_dir):
    out = tmp_path / "out"
    result = run("train", "mnist", "--device", "meta", "--data-dir", mnist_dir, "--out", out)
    assert_one_line_error(result, "device 'meta' holds no data")
    assert not out.exists()


def test_a_huge_class_name_is_refused_quickly(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("x" * 5_000_000 + "\n" + "\n".join(f"c{i}" for i in range(9)) + "\n")
    out = tmp_path / "out"
    result = run("classviz", "mnist-cnn", "--labels", labels, "--classes", "c1", "--out", out)
    assert_one_line_error(result, "more than the 1000 a class name may have")
    assert not out.exists()


@pytest.mark.slow
def test_an_address_that_answers_but_is_not_ray_is_one_sentence(tiny, tmp_path):
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # the test's own server says nothing on stderr
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "out"
        result = run("atlas", "mnist-cnn", "--layers", "features.0", "--ray", address, "--out", out)
        assert_one_line_error(result, "answers, but not as a Ray head node does")
        assert not out.exists()
    finally:
        server.shutdown()


def test_card_built_in_python_refuses_overflowing_numbers():
    with pytest.raises(ConvsightError, match="32-bit"):
        ModelCard(name="x", arch="a", input_size=(8, 8), channels=1, mean=0.5, std=1e-320)
    card = ModelCard(name="x", arch="a", input_size=(8, 8), channels=1, mean=0.5, std=1e-30)
    assert torch.isfinite((torch.ones(1) - card.mean[0]) / card.std[0]).all()  # small is fine
