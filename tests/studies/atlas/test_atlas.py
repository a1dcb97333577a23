"""The atlas: pages in a real headless browser, escaping, and a killed run that resumes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from convsight.analysis.filters import filter_redundancy
from convsight.data import load_mnist
from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.report import OUT_MARKER, TEMP_PREFIX, TEMP_SUFFIX, write_checkpoint
from convsight.studies.atlas import LOCK_FILE, RUN_FILE, AtlasRequest, Compression, build_atlas
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
    summary = atlas(
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


@pytest.mark.slow
def test_atlas_files_and_redundancy(atlas_site, mnist_model):
    summary = json.loads((atlas_site / "atlas.json").read_text())
    assert summary["dataset_size"] == 24
    measured = {"features.0": 0, "features.3": 0}
    for layer, count in (("features.0", 32), ("features.3", 64)):
        for c in range(count):
            record = json.loads((atlas_site / layer / "records" / f"c{c}.json").read_text())
            assert set(record["values"]) == {"paper", "robust"}
            assert len(record["examples"]) == 4
            assert (atlas_site / layer / f"c{c}.html").exists()
            assert (atlas_site / layer / "img" / f"c{c}_projections.png").exists()
            page = (atlas_site / layer / f"c{c}.html").read_text()
            assert f'src="img/c{c}_projections.png"' in page  # under the patches
            for ex in record["examples"]:
                share, noise = ex["high_frequency_share"], ex["white_noise_share"]
                measured[layer] += share is not None
                assert share is None or (0 <= share <= 1 and 0.5 < noise < 1)
                shown = "–" if share is None else f"{share:.2f} ({noise:.2f})"
                assert f"<td>{ex['value']:.4g}</td><td>{shown}</td>" in page
    # features.0's 3 x 3 fields are too small to measure; features.3's 8 x 8 are measured
    # where the border does not clip them
    assert measured["features.0"] == 0 and measured["features.3"] > 0
    assert not list(atlas_site.rglob("*.part"))
    model = load_model(str(mnist_model[0]))
    redundancy = filter_redundancy(model.module, "features.0")
    curve = redundancy.curve()
    assert curve[-1][1] == 32 and all(a[1] <= b[1] for a, b in zip(curve, curve[1:], strict=False))


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# Resume, settings, lock and input checks, on the tiny model (fast: two steps, 8 channels).


def atlas(model, layers, out, **fields):
    """:func:`build_atlas` of ``model`` (a spec is loaded first), as its JSON."""
    loaded = load_model(model) if isinstance(model, str) else model
    return build_atlas(loaded, AtlasRequest(layers, out, **fields)).to_json()


def tiny_atlas(model, out, **options):
    settings = dict(layers=["features.0"], presets=["paper"], steps=2, show_progress=False)
    settings.update(options)
    return atlas(model, out=out, **settings)


def snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.slow
def test_atlas_records_its_settings_and_resumes_only_with_them(tiny, tmp_path):
    out = tmp_path / "atlas"
    first = tiny_atlas(tiny, out)
    assert first["rendered_this_run"] == 8
    run = json.loads((out / RUN_FILE).read_text())
    assert run["layers"] == ["features.0"] and run["presets"] == ["paper"]
    assert run["seed"] == 0 and run["render_settings"]["paper"]["steps"] == 2
    assert run["model"]["name"] == "tiny" and len(run["model"]["parameters_sha256"]) == 64

    before = snapshot(out)
    for change, fragment in [
        ({"seed": 1}, "seed (0 there, 1 here)"),
        ({"steps": 3}, "render settings of preset paper (steps 2 there, 3 here)"),
        ({"presets": ["paper", "robust"]}, "presets (paper there, paper, robust here)"),
        ({"top_k": 2}, "top_k"),
        ({"layers": ["features.3"]}, "layers (features.0 there, not here"),
    ]:
        with pytest.raises(ConvsightError, match=re.escape(fragment)) as info:
            tiny_atlas(tiny, out, **change)
        message = str(info.value)
        assert "another --out" in message and "delete" in message and "\n" not in message
        assert snapshot(out) == before  # the folder is untouched

    other = tiny
    with torch.no_grad():
        other.module.features[0].weight.add_(1.0)
    with pytest.raises(ConvsightError, match="the model"):
        tiny_atlas(other, out)
    assert snapshot(out) == before


@pytest.mark.slow
def test_identical_rerun_continues_and_may_add_a_layer(tiny, tmp_path):
    out = tmp_path / "atlas"
    tiny_atlas(tiny, out, batch=3)
    for c in (2, 5):  # as if the run had stopped before these channels
        (out / "features.0" / "records" / f"c{c}.json").unlink()
    again = tiny_atlas(tiny, out, batch=8)  # the batch size may change
    assert again["rendered_this_run"] == 2
    grown = tiny_atlas(tiny, out, layers=["features.3", "features.0"])
    assert grown["rendered_this_run"] == 16  # only the new layer's channels
    assert [layer["name"] for layer in grown["layers"]] == ["features.0", "features.3"]
    assert json.loads((out / RUN_FILE).read_text())["layers"] == ["features.0", "features.3"]
    assert (out / "features.3" / "c15.html").exists()


@pytest.mark.slow
def test_atlas_deletes_only_its_own_temporaries(tiny, tmp_path):
    out = tmp_path / "atlas"
    tiny_atlas(tiny, out)
    user = [out / ".movie.mkv.part", out / "sub" / ".movie.mkv.part", out / "features.0" / "x.part"]
    for path in user:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep me")
    ours = [
        out / f"{TEMP_PREFIX}index.html.0123abcd{TEMP_SUFFIX}",
        out / "features.0" / "records" / f"{TEMP_PREFIX}c3.json.89abcdef{TEMP_SUFFIX}",
        out / "features.0" / "img" / f"{TEMP_PREFIX}c3_paper.png.00000000{TEMP_SUFFIX}",
    ]
    for path in ours:
        path.write_text("half")
    tiny_atlas(tiny, out)
    assert all(path.read_text() == "keep me" for path in user)
    assert not any(path.exists() for path in ours)


@pytest.mark.slow
def test_a_second_atlas_in_the_same_folder_is_refused(tiny, tmp_path):
    import fcntl

    out = tmp_path / "atlas"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConvsightError, match=f"another convsight atlas is writing into {out}"):
            tiny_atlas(tiny, out)
        assert {p.name for p in out.iterdir()} == {LOCK_FILE, OUT_MARKER}  # nothing written
    finally:
        os.close(fd)
    assert tiny_atlas(tiny, out)["rendered_this_run"] == 8  # free again


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"presets": []}, "give at least one preset"),
        ({"presets": ["", " "]}, "give at least one preset"),
        ({"presets": ["nope"]}, "unknown preset"),
        ({"layers": []}, "give at least one layer"),
        ({"layers": ["features.0", "nope"]}, "nope"),
        ({"layers": ["classifier.1"]}, "not channels"),
        ({"top_k": 0}, "--top-k"),
        ({"dataset": "missing-folder"}, "does not exist"),
    ],
)
def test_atlas_checks_every_input_before_writing(tiny, tmp_path, options, fragment):
    out = tmp_path / "atlas"
    if options.get("dataset"):
        options["dataset"] = tmp_path / options["dataset"]
    with pytest.raises(ConvsightError, match=re.escape(fragment)):
        tiny_atlas(tiny, out, **options)
    assert not out.exists()


def test_atlas_cli_empty_presets_is_one_sentence(tmp_path):
    from typer.testing import CliRunner

    from convsight.cli import app

    out = tmp_path / "atlas"
    args = ["atlas", "mnist-cnn", "--layers", "features.0", "--presets", "", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "give at least one preset" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.slow
def test_duplicate_layers_are_rendered_once(tiny, tmp_path):
    out = tmp_path / "atlas"
    summary = tiny_atlas(tiny, out, layers=["features.0", " features.0", "features.0"])
    assert [layer["name"] for layer in summary["layers"]] == ["features.0"]
    assert summary["channels"] == 8 and summary["rendered_this_run"] == 8
    assert json.loads((out / RUN_FILE).read_text())["layers"] == ["features.0"]
    index = (out / "index.html").read_text()
    assert index.count('href="features.0/index.html"') == 1


@pytest.mark.slow
def test_atlas_renders_only_the_channels_asked_for(tiny, tmp_path):
    out = tmp_path / "atlas"
    summary = tiny_atlas(tiny, out, channels="5,0-2")
    assert summary["channels"] == 4 and summary["rendered_this_run"] == 4
    records = sorted(p.name for p in (out / "features.0" / "records").glob("c*.json"))
    assert records == ["c0.json", "c1.json", "c2.json", "c5.json"]
    assert json.loads((out / RUN_FILE).read_text())["channels"] == "0-2,5"
    assert summary["layers"][0]["channels"] == [0, 1, 2, 5]
    # Every link between channel pages points at a channel that was rendered.
    for page in (out / "features.0").glob("*.html"):
        linked = set(re.findall(r'href="c(\d+)\.html"', page.read_text()))
        assert linked <= {"0", "1", "2", "5"}, (page.name, linked)
    assert 'href="c5.html"' in (out / "features.0" / "c2.html").read_text()  # next of 2
    assert tiny_atlas(tiny, out, channels=[0, 1, 2, 5])["rendered_this_run"] == 0
    before = snapshot(out)
    with pytest.raises(ConvsightError, match=re.escape("channels (0-2,5 there, all here)")):
        tiny_atlas(tiny, out)
    assert snapshot(out) == before


@pytest.mark.slow
def test_atlas_channels_out_of_range_fail_before_writing(tiny, tmp_path):
    out = tmp_path / "atlas"
    with pytest.raises(ConvsightError, match=r"the layer has 8 channels .*layer 'features.0'"):
        tiny_atlas(tiny, out, channels="0-8")
    assert not out.exists()
    from typer.testing import CliRunner

    from convsight.cli import app

    args = ["atlas", "mnist-cnn", "--layers", "features.0", "--channels", "40", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "the layer has 32 channels" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_atlas_shows_each_channels_first_invariance(tiny, tmp_path):
    out = tmp_path / "atlas"
    tiny_atlas(tiny, out, channels="0-2", invariances=10.0)
    for c in range(3):
        record = json.loads((out / "features.0" / "records" / f"c{c}.json").read_text())
        found = record["invariance"]
        assert found["from"] == "paper" and found["reliable"] is True
        gif = Image.open(out / "features.0" / "img" / f"c{c}_invariance.gif")
        assert gif.n_frames == 16 and min(gif.size) >= 112  # 9 frames there, 7 back
        page = (out / "features.0" / f"c{c}.html").read_text()
        assert f'src="img/c{c}_invariance.gif"' in page and "softplus" in page
    assert json.loads((out / RUN_FILE).read_text())["invariances_softplus"] == 10.0
    with pytest.raises(ConvsightError, match=re.escape("invariances_softplus (10.0 there, 5.0")):
        tiny_atlas(tiny, out, channels="0-2", invariances=5.0)
    plain = tmp_path / "plain"
    tiny_atlas(tiny, plain, channels="0")
    record = json.loads((plain / "features.0" / "records" / "c0.json").read_text())
    assert "invariance" not in record
    assert "invariance.gif" not in (plain / "features.0" / "c0.html").read_text()


def test_atlas_invariances_need_a_relu_to_smooth(tmp_path):
    from convsight.models import Model

    card = load_model("mnist-cnn").card
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh())
    with pytest.raises(ConvsightError, match="no nn.ReLU"):
        tiny_atlas(Model(module, card), tmp_path / "atlas", layers=["0"], invariances=10.0)
    assert not (tmp_path / "atlas").exists()


@pytest.mark.slow
def test_atlas_shows_the_compression_trials(mnist_model, mnist_dir, tmp_path, browser):
    ckpt, _ = mnist_model
    out = tmp_path / "atlas"
    settings = dict(channels="0-3", presets=["paper"], steps=2, show_progress=True)  # bars
    trials = dict(compression=Compression(mnist_dir, 128, 256))
    summary = atlas(str(ckpt), ["features.0", "features.3"], out, **settings, **trials)
    result = json.loads((out / "compression" / "compression.json").read_text())
    assert result["summary"], "no near-copies removed: the pages below would show nothing"
    assert summary["compression"] == "compression/compression.json"
    assert result["settings"]["test_images"] == 256 and result["settings"]["finetune_images"] == 128
    page, errors, dialogs = open_page(browser, (out / "index.html").as_uri())
    assert "Compression: removing near-copy filters" in page.inner_text("body")
    assert_images_loaded(page)  # the accuracy curves
    body_rows = page.eval_on_selector_all("#compression ~ table tr", "els => els.length")
    assert body_rows == 1 + len(result["summary"])  # header and one row per removal
    for layer in ("features.0", "features.3"):
        mine = [r for r in result["summary"] if r["scope"] == layer]
        html = (out / layer / "index.html").read_text()
        assert ("Removing them" in html) == bool(mine)
        for row in mine:
            assert f"{row['kept']} / {row['total']}" in html
    assert not errors and not dialogs
    stamp = (out / "compression" / "compression.json").stat().st_mtime_ns
    atlas(str(ckpt), ["features.0", "features.3"], out, **settings, **trials)
    assert (out / "compression" / "compression.json").stat().st_mtime_ns == stamp  # run once
    with pytest.raises(ConvsightError, match="compression"):  # other trials: refused
        atlas(str(ckpt), ["features.0"], out, **settings, compression=Compression(mnist_dir))


def test_atlas_compression_data_must_fit_the_model(tiny, mnist_dir, tmp_path):
    out = tmp_path / "atlas"
    with pytest.raises(ConvsightError, match="not an MNIST model"):
        tiny_atlas(tiny, out, compression=Compression(mnist_dir))
    assert not out.exists()
