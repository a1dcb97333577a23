"""The atlas: pages in a real headless browser, escaping, and a killed run that resumes."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from convsight.analysis.filters import filter_redundancy
from convsight.data import load_mnist
from convsight.models import load_model
from convsight.report import write_checkpoint
from convsight.studies.atlas import build_atlas
from tests.conftest import assert_images_loaded, open_page

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory, mnist_dir):
    """A briefly trained MNIST CNN checkpoint and a small digit dataset with a hostile label."""
    from convsight.data import mnist_loaders
    from convsight.models import build_seed
    from convsight.train import fit

    base = tmp_path_factory.mktemp("atlas")
    torch.manual_seed(0)
    module, card = build_seed("mnist-cnn", {"stride": 1, "padding": "valid"})
    train, test = mnist_loaders(card, mnist_dir, 64, train_limit=1024, test_limit=256)
    fit(module, train, test, epochs=1, show_progress=False)
    ckpt = write_checkpoint(base / "mnist.pt", module, card)
    images, labels = load_mnist("test", mnist_dir)
    for i in range(24):
        folder = base / "digits" / (EVIL if i % 2 else f"digit {int(labels[i])}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].numpy()).save(folder / f"{i:02d}.png")
    return ckpt, base / "digits"


@pytest.fixture(scope="module")
def atlas_site(mnist_model, tmp_path_factory):
    ckpt, digits = mnist_model
    out = tmp_path_factory.mktemp("site")
    summary = build_atlas(
        str(ckpt),
        ["features.0", "features.3"],
        out,
        dataset=digits,
        top_k=4,
        steps=8,
        batch=16,
        show_progress=False,
    )
    assert summary["channels"] == 32 + 64 and summary["rendered_this_run"] == 96
    return out


def test_atlas_files_and_redundancy(atlas_site, mnist_model):
    summary = json.loads((atlas_site / "atlas.json").read_text())
    assert summary["dataset_size"] == 24
    for layer, count in (("features.0", 32), ("features.3", 64)):
        for c in range(count):
            record = json.loads((atlas_site / layer / "records" / f"c{c}.json").read_text())
            assert set(record["values"]) == {"paper", "robust"}
            assert len(record["examples"]) == 4
            assert (atlas_site / layer / f"c{c}.html").exists()
    assert not list(atlas_site.rglob("*.part"))
    model = load_model(str(mnist_model[0]))
    redundancy = filter_redundancy(model.module, "features.0")
    curve = redundancy.curve()
    assert curve[-1][1] == 32 and all(a[1] <= b[1] for a, b in zip(curve, curve[1:], strict=False))


def test_filter_redundancy_finds_rotated_and_recoloured_copies():
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[1] = torch.rot90(conv.weight[0], 1, dims=(1, 2))
        conv.weight[2] = conv.weight[0][[2, 0, 1]].flip(-1) * 3.0
    model = torch.nn.Sequential(conv)
    redundancy = filter_redundancy(model, "0")
    assert redundancy.similarity[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert redundancy.similarity[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert "rot" in redundancy.transform[1][0] and "colour" in redundancy.transform[0][2]
    assert redundancy.similarity[0, 3] < 0.9
    assert redundancy.remaining(0.99) == 2


def test_atlas_pages_in_a_real_browser(atlas_site, browser):
    page, errors, dialogs = open_page(browser, (atlas_site / "index.html").as_uri())
    assert "features.3" in page.inner_text("body")
    page.click("text=features.3")
    page.wait_for_load_state("load")
    assert page.url.endswith("features.3/index.html")
    assert_images_loaded(page)
    page.click("a[href='c7.html']")
    page.wait_for_load_state("load")
    assert page.url.endswith("features.3/c7.html")
    assert "channel 7" in page.inner_text("h1")
    assert_images_loaded(page)
    page.click("text=features.3 >> nth=0")  # breadcrumb back to the layer page
    assert page.url.endswith("features.3/index.html")
    assert not errors and not dialogs


def test_labels_from_the_data_are_escaped(atlas_site, browser):
    hits = [c for c in range(64) if EVIL in (atlas_site / "features.3" / f"c{c}.html").read_text()]
    assert not hits  # never raw in the HTML
    # Find a channel whose examples include an image of the hostile class and look at it.
    for c in range(64):
        record = json.loads((atlas_site / "features.3" / "records" / f"c{c}.json").read_text())
        if any(EVIL in ex["name"] for ex in record["examples"]):
            break
    page, errors, dialogs = open_page(browser, (atlas_site / "features.3" / f"c{c}.html").as_uri())
    assert EVIL in page.inner_text("body")  # shown as text
    assert page.eval_on_selector_all("main script", "els => els.length") == 0
    assert not dialogs and not errors


def test_killed_atlas_run_resumes_without_redoing_work(mnist_model, tmp_path):
    ckpt, digits = mnist_model
    out = tmp_path / "atlas"
    command = [
        sys.executable,
        "-m",
        "convsight.cli",
        "atlas",
        str(ckpt),
        "--layers",
        "features.0",
        "--dataset",
        str(digits),
        "--top-k",
        "3",
        "--steps",
        "120",
        "--batch",
        "4",
        "--out",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = out / "features.0" / "records"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(records.glob("c*.json"))) < 8:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".part" not in p.name
    }
    done = sorted(records.glob("c*.json"))
    assert 8 <= len(done) < 32, "the run was not stopped midway"
    assert not (out / "index.html").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "atlas.json").read_text())
    assert summary["rendered_this_run"] == 32 - len(done)
    for path in done:  # rendered before the kill: untouched
        assert path.stat().st_mtime_ns == before[path]
        channel = path.stem
        for image in (out / "features.0" / "img").glob(f"{channel}_*.png"):
            assert image.stat().st_mtime_ns == before[image]
    assert not list(out.rglob("*.part"))
    for png in out.rglob("*.png"):
        with Image.open(png) as img:
            img.load()  # whole file
    for record in out.rglob("records/*.json"):
        json.loads(record.read_text())
    assert (out / "index.html").exists() and (out / "features.0" / "c31.html").exists()
