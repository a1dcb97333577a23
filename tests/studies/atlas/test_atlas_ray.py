"""The atlas on Ray: the same files as a local run, a node lost mid-run, the driver killed and
restarted, and bad addresses refused before any work (a Ray cluster of several nodes on this
one machine, ``ray.cluster_utils.Cluster``)."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from convsight.analysis.dataset_examples import (
    ImageStats,
    image_stats,
    layer_stats,
    top_examples,
)
from convsight.cli import app
from convsight.data import load_mnist
from convsight.distributed import LocalWork, shards
from convsight.models import Model, build_seed, load_model
from convsight.report import write_checkpoint
from convsight.studies.atlas import AtlasRequest, build_atlas

LAYERS = "features.0,features.3"
SETTINGS = ["--channels", "0-11", "--top-k", "3", "--steps", "150", "--batch", "2"]
CHANNELS = 2 * 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist_dir):
    """An (untrained, seeded) MNIST CNN checkpoint and twenty digits in class folders."""
    base = tmp_path_factory.mktemp("ray-inputs")
    torch.manual_seed(0)
    module, card = build_seed("mnist-cnn", {"stride": 1, "padding": "valid"})
    ckpt = write_checkpoint(base / "mnist.pt", module, card)
    images, labels = load_mnist("test", mnist_dir)
    for i in range(20):
        folder = base / "digits" / f"digit {int(labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].numpy()).save(folder / f"{i:02d}.png")
    return ckpt, base / "digits"


def atlas_command(inputs, out, *extra):
    ckpt, digits = inputs
    return [
        sys.executable, "-m", "convsight.cli", "atlas", str(ckpt), "--layers", LAYERS,
        "--dataset", str(digits), *SETTINGS, "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def local_atlas(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "atlas"
    result = subprocess.run(atlas_command(inputs, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def cluster():
    """A head node that runs no tasks and two worker nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def records(out):
    return sorted(out.glob("*/records/c*.json"))


def wait_for_records(out, count, process, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and len(records(out)) < count and process.poll() is None:
        time.sleep(0.05)
    assert len(records(out)) >= count, "the run did not get going"


def start_ray_atlas(inputs, out, cluster):
    """The atlas CLI on ``cluster``, in the background, once it has recorded 4 channels."""
    command = atlas_command(inputs, out, "--ray", cluster.address)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_records(out, 4, process)
    except BaseException:
        process.kill()
        raise
    return command, process


def assert_same_atlas(local, other):
    """Every file of the local atlas is in ``other`` with the same content: images to one
    grey level, records and arrays to float tolerance, pages exactly (the run summaries,
    which hold timings and what ran the work, aside)."""
    summaries = {"atlas.json", "atlas-run.json", "index.html"}
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for name in files:
        a, b = local / name, other / name
        if name.suffix in (".png", ".gif"):
            with Image.open(a) as x, Image.open(b) as y:
                assert np.abs(np.asarray(x, int) - np.asarray(y, int)).max() <= 1, name
        elif name.suffix == ".npz":
            with np.load(a) as x, np.load(b) as y:
                for key in x.files:
                    np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=1e-6)
        elif name.suffix == ".json" and name.name not in summaries:
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            x.pop("rendered_at"), y.pop("rendered_at")
            assert x.keys() == y.keys() and x["examples"] == y["examples"], name
            for preset, value in x["values"].items():
                assert y["values"][preset] == pytest.approx(value, rel=1e-5, abs=1e-6)
        elif name.name not in summaries and name.suffix != ".lock":
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.slow
def test_ray_atlas_loses_a_node_midway_and_matches_the_local_run(
    inputs, local_atlas, cluster, tmp_path
):
    cluster, workers = cluster
    out = tmp_path / "atlas"
    _, process = start_ray_atlas(inputs, out, cluster)
    try:
        cluster.remove_node(workers[1])  # its running task is retried on the other node
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
        cluster.add_node(num_cpus=1)  # two workers again for the next test
    assert process.returncode == 0, stderr.decode()
    summary = json.loads((out / "atlas.json").read_text())
    assert summary["rendered_this_run"] == CHANNELS
    work = summary["work"]
    assert work["backend"] == "ray" and work["retries"] >= 1
    assert (work["nodes"], work["workers"]) == (2, 1)  # the head and the one worker left
    assert not list(out.rglob("*.part"))
    assert_same_atlas(local_atlas, out)


@pytest.mark.slow
def test_ray_driver_killed_resumes_from_its_records(inputs, local_atlas, cluster, tmp_path):
    cluster, _ = cluster
    out = tmp_path / "atlas"
    command, process = start_ray_atlas(inputs, out, cluster)
    try:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    done = {p: p.stat().st_mtime_ns for p in records(out)}
    assert 4 <= len(done) < CHANNELS, "the driver was not stopped midway"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "atlas.json").read_text())
    assert summary["rendered_this_run"] == CHANNELS - len(done)
    for path, stamp in done.items():  # recorded before the kill: untouched
        assert path.stat().st_mtime_ns == stamp
    assert not list(out.rglob("*.part"))
    assert_same_atlas(local_atlas, out)


@pytest.mark.slow
def test_unreachable_ray_address_fails_before_any_work(inputs, tmp_path):
    out = tmp_path / "atlas"
    result = CliRunner().invoke(
        app, ["atlas", "no-such-model", "--layers", "x", "--ray", "127.0.0.1:1", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_ray_not_installed_is_one_sentence(inputs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    out = tmp_path / "atlas"
    result = CliRunner().invoke(
        app, ["atlas", str(inputs[0]), "--layers", "features.0", "--ray", "auto", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "needs Ray, which is not installed" in result.output and not out.exists()


@pytest.mark.slow
def test_a_local_atlas_does_not_import_ray():
    code = (
        "import sys, tempfile, torch\n"
        "from tests.conftest import TinyNet\n"
        "from convsight.models import Model, ModelCard\n"
        "from convsight.studies.atlas import AtlasRequest, build_atlas\n"
        "card = ModelCard(name='t', arch='test', input_size=(32, 32), channels=3,"
        " mean=(0.5,) * 3, std=(0.25,) * 3, labels=['a', 'b'])\n"
        "build_atlas(Model(TinyNet(2), card), AtlasRequest(['features.0'], tempfile.mkdtemp(),"
        " presets=['paper'], steps=2, show_progress=False))\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shards_start_at_batch_boundaries_and_cover_every_image():
    for count, batch, parts in ((0, 16, 4), (1, 16, 4), (100, 16, 4), (64, 16, 8), (17, 4, 3)):
        found = shards(count, batch, parts)
        assert len(found) <= max(parts, 1)
        assert all(s["start"] % batch == 0 for s in found)
        covered = [i for s in found for i in range(s["start"], s["stop"])]
        assert covered == list(range(count))


@pytest.mark.slow
def test_sharded_dataset_pass_equals_the_single_pass(tiny):
    pixels = torch.rand(37, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = top_examples(tiny, pixels, "features.3", top_k=5, batch_size=8)
    shared = {"model": tiny, "pixels": pixels, "layer": "features.3", "batch_size": 8}
    parts = dict(LocalWork().map(image_stats, shared, shards(37, 8, 3)))
    joined = ImageStats.join([parts[i] for i in sorted(parts)])
    assert torch.equal(joined.maxima.T, whole.max_per_image)
    assert torch.equal(joined.means.T, whole.mean_per_image)


@pytest.mark.slow
def test_one_pass_for_several_layers_equals_a_pass_for_each(tiny):
    """Statistics are taken as each layer runs: a conv followed by an in-place ReLU keeps its
    own (negative) values."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
        nn.ReLU(inplace=True),
    )  # fmt: skip
    model = Model(module, tiny.card)
    pixels = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    together = layer_stats(model, pixels, ["0", "1", "3", "4"], batch_size=4)
    for name, stats in together.items():
        alone = image_stats(model, pixels, name, batch_size=4)
        assert torch.equal(stats.maxima, alone.maxima) and torch.equal(stats.means, alone.means)
        assert torch.equal(stats.positions, alone.positions)
    assert (together["0"].means < 0).any() and (together["1"].means >= 0).all()


@pytest.mark.slow
def test_layers_all_takes_every_map_layer_and_prints_a_plan(tmp_path, capsys):
    torch.manual_seed(0)
    module, card = build_seed("mnist-cnn", {"stride": 1, "padding": "valid"})
    ckpt = write_checkpoint(tmp_path / "m.pt", module, card)
    model = load_model(str(ckpt))
    summary = build_atlas(model, AtlasRequest(
        ["all"], tmp_path / "atlas", channels="0-1", presets=["paper"], steps=4,
        show_progress=True,
    )).to_json()  # fmt: skip
    names = [row["name"] for row in summary["layers"]]
    assert names == ["features.0", "features.1", "features.2", "features.3", "features.4",
                     "features.5"]  # fmt: skip
    plan = summary["plan"]
    assert [row["layer"] for row in plan["layers"]] == names
    assert all(row["seconds_per_channel"] > 0 and row["to_render"] == 2 for row in plan["layers"])
    assert plan["estimated_seconds"] == pytest.approx(plan["render_seconds_one_worker"])
    printed = capsys.readouterr().err
    assert "atlas plan" in printed and "estimated" in printed and "features.5" in printed
