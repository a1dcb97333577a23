"""Hostile input on the command line: one sentence on stderr, exit 2, no output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.optvis import channels
from convsight.optvis.channels import MAX_CHANNELS, parse_channels

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="convsight")


def assert_one_line_error(result, fragment: str) -> None:
    """Exit 2 and exactly one line on stderr, saying ``fragment``; no usage box, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output and "╭" not in result.output


# --- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["maximize", "mnist-cnn"], "missing option '--layer'; see 'convsight maximize --help'"),
        (["maximize", "mnist-cnn", "--layer", "features.0", "--ou", "x"], "no such option: --ou"),
        (["train", "mnist", "--epochs", "0"], "invalid value for '--epochs'"),
        (["layers"], "missing argument 'model'"),
        (["trian"], "no such command 'trian' (did you mean 'train'?)"),
        (["layers", "mnist-cnn", "extra"], "unexpected extra argument"),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_help_still_works():
    for args in (["--help"], ["maximize", "--help"], ["train", "mnist", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage" in result.output, result.output
    result = run()  # no command: the help, as before
    assert "Usage" in result.output and "error:" not in result.output


def _convsight() -> list[str]:
    script = Path(sys.executable).parent / "convsight"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from convsight.cli import main; main()"]


@pytest.mark.slow
def test_usage_error_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the sentence
    done = subprocess.run(
        [*_convsight(), "maximize", "mnist-cnn", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: missing option '--layer'; see 'convsight maximize --help'"
    ]
    assert not out.exists()


# --- channels -----------------------------------------------------------------------------------


def test_parse_channels_reads_numbers_and_ranges():
    assert parse_channels("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_channels(" 0 - 2, 9, ") == [0, 1, 2, 9]
    assert parse_channels("0-63", limit=64) == list(range(64))


@pytest.mark.parametrize(
    ("text", "limit", "message"),
    [
        ("0-100000000", 64, "channel 100000000 is out of range: the layer has 64 channels (0-63)"),
        ("0-100000000", None, "channel 100000000 is out of range: channel numbers go up to "),
        ("0-64", 64, "channel 64 is out of range"),
        ("5-2", None, "reversed range 5-2 (did you mean 2-5?)"),
        ("-3", None, "channel -3 is negative"),
        ("3--5", None, "channel -5 is negative"),
        ("a-b", None, "cannot read channels 'a-b'"),
        ("0,x", None, "cannot read channels '0,x' (at 'x')"),
        ("", None, "no channels given"),
        (" , ", None, "no channels given"),
        ("0-40,20-63", 64, "channel 20 is given twice"),
        ("3,3", None, "channel 3 is given twice"),
    ],
)
def test_parse_channels_refuses_with_one_sentence(text, limit, message):
    with pytest.raises(ConvsightError) as info:
        parse_channels(text, limit=limit)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_huge_range_is_refused_before_a_list_is_built(monkeypatch):
    # Building the list for 0-100000000 takes gigabytes: refuse from the bound alone.
    def no_range(*args):
        raise AssertionError("a list of channels was built")

    monkeypatch.setattr(channels, "range", no_range, raising=False)  # the module's own range()
    for limit in (64, None):
        with pytest.raises(ConvsightError, match="out of range"):
            parse_channels("0-100000000", limit=limit)
    assert MAX_CHANNELS >= 4096  # no real layer is refused by the default bound


@pytest.mark.parametrize(
    ("channels", "fragment"),
    [("0-100000000", "channel 100000000 is out of range"), ("5-2", "reversed range 5-2")],
)
def test_maximize_refuses_bad_channels_before_any_output(tmp_path, channels, fragment):
    out = tmp_path / "out"
    result = run(
        "maximize", "mnist-cnn", "--layer", "features.0", "--channels", channels, "--out", out
    )
    assert_one_line_error(result, fragment)
    assert not out.exists()


# --- refusals that used to come after writing ---------------------------------------------------


def test_activations_checks_every_layer_before_writing(tmp_path, mnist_dir):
    out = tmp_path / "out"
    result = run(
        "activations",
        "mnist-cnn",
        "--layers",
        "features,classifier.4",
        "--data-dir",
        mnist_dir,
        "--out",
        out,
    )
    assert_one_line_error(result, "layer 'classifier.4' outputs 10 per input, not C x H x W maps")
    assert not out.exists()  # input.png used to be written first


@pytest.mark.slow
def test_diverging_training_exits_2_and_writes_nothing(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = run(
        "train",
        "mnist",
        "--lr",
        "1e30",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--data-dir",
        mnist_dir,
        "--out",
        out,
        "--quiet",
    )
    assert_one_line_error(result, "training diverged")
    assert "try a lower --lr" in result.stderr
    assert not out.exists()  # no checkpoint, not even an empty folder


def test_train_refuses_a_learning_rate_that_cannot_train(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = run("train", "mnist", "--lr", "inf", "--data-dir", mnist_dir, "--out", out)
    assert_one_line_error(result, "--lr must be a finite number, not inf")
    assert not out.exists()


@pytest.mark.slow
def test_paper_refuses_bad_inputs_before_creating_the_output(tmp_path, shared):
    out = tmp_path / "paper"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    odd = tmp_path / "photos"
    odd.mkdir()
    (odd / "goldfish.JPEG").write_bytes(b"")
    data = ["--data-dir", shared / "data"]
    cases = [
        (["--vgg16-weights", bad], "bad.pt"),
        (["--classifier-weights", tmp_path / "none.pt"], "does not exist"),
        (["--subset", tmp_path / "no-subset"], "--subset"),
        (["--photos", odd], "photo goldfish.JPEG in --photos"),
        (["--classifier", "mobilenet_v9"], "unknown --classifier 'mobilenet_v9'"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run("paper", *data, *args, "--out", out, "--quiet"), fragment)
        assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("paper", "--data-dir", empty, "--out", out, "--quiet")
    assert_one_line_error(result, "not found in")
    assert not out.exists()
