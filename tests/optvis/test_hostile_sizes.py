"""Hostile sizes, views, batches, steps and channel numbers: refused in one sentence that
names the largest that fits (or asks for --yes), before any large allocation and before the
output folder is created."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import convsight.optvis.budget as budget
import convsight.studies.atlas.build as atlas_build
import convsight.studies.attribution as attribution_jobs
import convsight.studies.optvis as optvis_jobs
from convsight.budget import available_memory, largest_fitting
from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.optvis.objectives import channel
from convsight.optvis.settings import settings_for

runner = CliRunner()
GB = 10**9
FITS = re.compile(r"the largest (--[a-z-]+|number of [a-z]+) that fits(?: in the [^;]*)? is (\d+)$")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="convsight")


def refusal(result) -> str:
    """The one line on stderr of an exit-2 refusal (no traceback, no usage box)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def largest(line: str, flag: str) -> int:
    """The largest value the refusal says fits, for ``flag``."""
    found = FITS.search(line)
    assert found and found[1] == flag, line
    return int(found[2])


@pytest.fixture
def memory(monkeypatch):
    """Pretend this machine has a fixed amount of memory available (16 GB by default)."""

    def pretend(n: int = 16 * GB) -> None:
        for module in (budget, attribution_jobs):
            monkeypatch.setattr(module, "available_memory", lambda device=None: n)

    pretend()
    return pretend


@pytest.fixture(scope="module")
def mnist():
    return load_model("mnist-cnn")


# --- maximize and classviz ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [100000, 6000])
def test_a_size_above_the_largest_side_is_refused(tmp_path, size):
    out = tmp_path / "out"
    line = refusal(
        run("maximize", "mnist-cnn", "--layer", "features.0", "--size", size, "--out", out)
    )
    assert f"--size {size} is more than convsight renders (at most 4096 pixels a side)" in line
    assert 8 <= largest(line, "--size") <= budget.MAX_SIDE
    assert not out.exists()


@pytest.mark.slow
def test_a_size_that_does_not_fit_names_the_largest_that_does(tmp_path, memory, monkeypatch):
    out = tmp_path / "out"
    memory(GB)
    args = ["maximize", "mnist-cnn", "--layer", "features.3", "--channels", "0-3"]
    line = refusal(run(*args, "--size", 4000, "--out", out))
    assert line.startswith("error: --size 4000 needs about ")
    assert "for features.3 (4 channels of 4000x4000 px, 1 view a step)" in line
    assert "this machine has 1.0 GB available" in line
    fit = largest(line, "--size")
    assert 8 <= fit < 4000
    assert not out.exists()

    def stop(*args, **kwargs):  # the render itself, after every check
        raise ConvsightError("reached the render")

    monkeypatch.setattr(optvis_jobs, "render_channels", stop)
    assert refusal(run(*args, "--size", fit, "--out", out)) == "error: reached the render"


def test_views_that_do_not_fit_are_refused_naming_the_largest(tmp_path, memory):
    out = tmp_path / "out"
    result = run("maximize", "mnist-cnn", "--layer", "features.3", "--views", 100000, "--out", out)
    line = refusal(result)
    assert line.startswith("error: --views 100000 needs about ")
    assert "this machine has 16 GB available" in line
    assert 1 <= largest(line, "--views") < 100000
    assert not out.exists()


@pytest.mark.slow
def test_views_refused_with_the_real_memory(tmp_path):
    out = tmp_path / "out"
    result = run("maximize", "mnist-cnn", "--layer", "features.3", "--views", 100000, "--out", out)
    line = refusal(result)  # about 290 GB
    assert 1 <= largest(line, "--views") < 100000 and not out.exists()


def test_classviz_size_is_checked_too(tmp_path):
    out = tmp_path / "out"
    line = refusal(run("classviz", "mnist-cnn", "--classes", "3", "--size", 100000, "--out", out))
    assert "--size 100000 is more than convsight renders" in line and not out.exists()


def test_classviz_classes_that_do_not_fit(tmp_path, memory):
    out = tmp_path / "out"
    memory(GB // 2)
    line = refusal(run("classviz", "mnist-cnn", "--classes", "all", "--views", 4096, "--out", out))
    assert "for the class scores (10 classes of 28x28 px, 4096 views a step)" in line
    assert 1 <= largest(line, "--views") < 4096 and not out.exists()


def test_very_many_steps_need_yes_and_then_fit_in_memory(tmp_path, memory):
    out = tmp_path / "out"
    args = ["maximize", "mnist-cnn", "--layer", "features.0", "--out", out]
    line = refusal(run(*args, "--steps", 1000000000))
    assert line == (
        "error: --steps 1000000000 is more than the 100000 steps convsight runs without --yes "
        "(the presets take 20 and 256); pass --yes to run it anyway"
    )
    # With --yes the objective trace (steps x channels) must still fit: 64 GB here.
    line = refusal(run(*args, "--steps", 1000000000, "--yes"))
    assert line.startswith("error: --steps 1000000000 needs about 64 GB for features.0")
    fit = largest(line, "--steps")
    assert 100000 < fit < 1000000000 and fit * 16 * 4 < 16 * GB
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("channels", "shown"),
    [("9" * 5000, "999999999999... (5000 digits)"), ("0-99999999999", "99999999999")],
)
def test_huge_channel_numbers_name_the_layer_channel_count(tmp_path, channels, shown):
    out = tmp_path / "out"
    line = refusal(
        run("maximize", "mnist-cnn", "--layer", "features.0", "--channels", channels, "--out", out)
    )
    assert line == f"error: channel {shown} is out of range: the layer has 32 channels (0-31)"
    line = refusal(
        run("atlas", "mnist-cnn", "--layers", "features.3", "--channels", channels, "--out", out)
    )
    assert f"channel {shown} is out of range: the layer has 64 channels (0-63)" in line
    assert not out.exists()


# --- the atlas ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_atlas_size_and_steps_are_checked_before_the_folder(tmp_path, memory):
    out = tmp_path / "out"
    line = refusal(run("atlas", "mnist-cnn", "--layers", "all", "--size", 100000, "--out", out))
    assert "--size 100000 is more than convsight renders" in line
    line = refusal(
        run("atlas", "mnist-cnn", "--layers", "all", "--steps", 1000000000, "--out", out)
    )
    assert "pass --yes to run it anyway" in line
    args = ["atlas", "mnist-cnn", "--layers", "all", "--steps", 1000000000, "--yes", "--out", out]
    line = refusal(run(*args))  # 16 channels a chunk: the trace alone is 64 GB
    assert ", preset " in line and 1 <= largest(line, "--steps") < 1000000000
    assert not out.exists()


@pytest.mark.slow
def test_an_absurd_atlas_plan_needs_yes(tmp_path, monkeypatch):
    def stop(*args, **kwargs):  # the work itself, after every check
        raise ConvsightError("reached the work")

    monkeypatch.setattr(atlas_build, "_run", stop)  # never the real work, whatever the plan
    out = tmp_path / "out"
    args = ["atlas", "mnist-cnn", "--layers", "all", "--size", 256, "--batch", 2, "--steps", 100000]
    line = refusal(run(*args, "--quiet", "--out", out))  # thousands of hours on one worker
    hours = re.search(r"the atlas plan estimates ([\d,]+) h of rendering on 1 worker", line)
    assert hours and int(hours[1].replace(",", "")) > 24, line
    assert "pass --yes to start it anyway" in line and not out.exists()
    assert refusal(run(*args, "--quiet", "--out", out, "--yes")) == "error: reached the work"
    assert not out.exists()


@pytest.mark.slow
def test_atlas_steps_with_yes_get_past_every_check(tmp_path, monkeypatch, memory):
    memory(64 * GB)  # one channel a chunk: a 4 GB trace
    reached = {}

    def stop(job, run_record, out, work, show_progress, planned):
        reached["plan"] = planned
        raise ConvsightError("reached the work")

    monkeypatch.setattr(atlas_build, "_run", stop)
    out = tmp_path / "out"
    args = ["atlas", "mnist-cnn", "--layers", "all", "--steps", 1000000000, "--batch", 1]
    assert refusal(run(*args, "--yes", "--quiet", "--out", out)) == "error: reached the work"
    assert reached["plan"]["estimated_seconds"] > 24 * 3600
    assert not out.exists()


# --- saliency -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_saliency_batch_that_does_not_fit(tmp_path, memory):
    memory(GB)
    out = tmp_path / "out"
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(image)
    args = ["saliency", "mnist-cnn", "--image", image, "--methods", "ig", "--out", out]
    line = refusal(run(*args, "--ig-steps", 100000, "--batch-size", 100000))
    assert line.startswith("error: --batch-size 100000 needs about ")
    assert "100000 images of 28x28 px through mnist-cnn with their gradients" in line
    assert 1 <= largest(line, "--batch-size") < 100000 and not out.exists()


# --- the estimate -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_estimate_grows_with_every_knob(mnist):
    cost = budget.render_cost(mnist, channel("features.3", [0, 1]), settings_for("robust"))
    base = dict(rows=4, side=(64, 64), views=2, steps=256)
    peak = cost.peak(**base)
    assert peak > 0
    for knob, more in (("rows", 8), ("side", (128, 128)), ("views", 4), ("steps", 512)):
        assert cost.peak(**{**base, knob: more}) > peak, knob
    one = {**base, "rows": 1}  # one row a pass at either side
    assert cost.peak(**{**one, "side": (256, 256)}) > 8 * cost.peak(**one)  # about side squared


def test_largest_fitting_is_the_boundary():
    assert largest_fitting(lambda n: n * n <= 1000, 1, 10**6) == 31
    assert largest_fitting(lambda n: n <= 0, 1, 10) is None
    assert largest_fitting(lambda n: True, 8, 4096) == 4096


def test_the_named_size_is_the_largest_that_fits(mnist, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 3 * GB)
    objective = channel("features.3", list(range(16)))
    with pytest.raises(ConvsightError) as info:
        budget.check_render(mnist, objective, settings_for(size=4000), 16, "x", ["size"])
    fit = largest(str(info.value), "--size")
    budget.check_render(mnist, objective, settings_for(size=fit), 16, "x", ["size"])
    with pytest.raises(ConvsightError):
        budget.check_render(mnist, objective, settings_for(size=fit + 1), 16, "x", ["size"])


def test_available_memory_is_read_from_the_machine():
    free = available_memory("cpu")
    if sys.platform.startswith("linux"):
        assert free is not None and 0 < free
        total = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
        assert free <= total
    assert available_memory("meta") is None


MEASURE = """
import json, sys
from convsight.models import load_model
from convsight.optvis import budget
from convsight.optvis.objectives import channel
from convsight.optvis.render import render_channels
from convsight.optvis.settings import settings_for

model = load_model("mnist-cnn")
settings = settings_for("robust", size=int(sys.argv[1]), views=int(sys.argv[2]), steps=2)
objective = channel("features.3", [0, 1])
cost = budget.render_cost(model, objective, settings)
estimate = budget.RenderRequest.of(model, settings, 2).peak(cost)
warm = settings_for("robust", size=16, views=1, steps=1)  # code and libraries loaded first
render_channels(model, "features.3", [0, 1], settings=warm)
with open("/proc/self/status") as status:
    rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
render_channels(model, "features.3", [0, 1], settings=settings)
with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss would
    # start from the peak of the pytest process it was forked from)
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
print(json.dumps({"estimate": estimate, "measured": peak - rss}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize(("size", "views"), [(384, 8)])
def test_the_estimate_is_near_the_measured_peak(size, views):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEASURE), str(size), str(views)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = numbers["measured"] / numbers["estimate"]
    assert numbers["estimate"] > 100e6  # large enough to measure
    assert 1 / 3 < ratio < 3, numbers


def test_a_gpu_reports_its_free_memory(monkeypatch):
    """CUDA's free memory is what the GPU says (torch's query, faked on a machine without one;
    on a GPU machine the real one is read too)."""
    if torch.cuda.is_available():
        free = available_memory("cuda")
        assert free is not None and free <= torch.cuda.get_device_properties(0).total_memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * 2**30, 8 * 2**30))
    assert available_memory("cuda") == 5 * 2**30

    def no_driver(device=None):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_driver)
    assert available_memory("cuda") is None  # unknown: the checks are skipped, not failed
