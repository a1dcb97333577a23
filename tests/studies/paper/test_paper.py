"""convsight paper on a tiny plan: every part runs, the report loads in a real browser."""

import json
import sys
from pathlib import Path

import pytest
import torch.hub

from convsight.errors import ConvsightError
from convsight.studies.numbers import STUDY
from convsight.studies.paper import PaperInputs, Plan, check_paper_inputs, remake, run_paper
from tests.conftest import assert_images_loaded, open_page

TINY = Plan(
    mnist_epochs=1,
    channels=2,
    robust_steps=4,
    robust_size=48,
    class_steps=4,
    subset_epochs=1,
    subset_size=32,
    backbone_size=48,
    paper_size=48,
    class_size=64,
    mnist_train_limit=2000,
    compression_thresholds=(0.8,),
    compression_repeats=1,
    compression_finetune_images=200,
    threads_k=1,
    threads_vgg16_size=32,
    threads_channels=1,
)


LOADS: list[tuple[str, str | None]] = []  # (spec, weights file name) of every load_model call
PAPER_LOADS: list[tuple[str, str | None]] = []  # those of the report's run


def _count_loads(patch: pytest.MonkeyPatch) -> None:
    """Record every ``load_model`` call in :data:`LOADS`, wherever the name was imported."""
    from convsight.models import loading

    original = loading.load_model

    def counted(spec, weights=None, *args, **kwargs):
        LOADS.append((str(spec), Path(weights).name if weights else None))
        return original(spec, weights, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "load_model", None) is original:
            patch.setattr(module, "load_model", counted)


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared, monkeypatch_module):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("no network in tests")

    # The ImageNet VGG16 classifier download fails, as on an offline machine.
    monkeypatch_module.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch_module.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch")))
    _count_loads(monkeypatch_module)
    out = tmp_path_factory.mktemp("paper")
    fashion = tmp_path_factory.mktemp("fashion")
    _fake_fashion(fashion, shared)
    inputs = PaperInputs(
        data_dir=shared / "data",
        vgg16_weights=shared / "models" / "vgg16_hed_features.pt",
        classifier_weights=shared / "models" / "mobilenet_v2_imagenet.pt",
        photos=shared / "data" / "imagenet-samples",
        fashion_mnist=fashion,
    )
    run = remake(out, inputs, quick=True, plan=TINY, show_progress=False)
    PAPER_LOADS.extend(LOADS)  # the loads of this run alone
    return out, run


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _fake_fashion(folder, shared):
    """Fashion-MNIST's file layout, filled with MNIST digits (the test needs only the format)."""
    import shutil

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(shared / "data" / "mnist" / name, folder / name)


@pytest.mark.slow
def test_vgg16_is_loaded_once_and_shared_by_the_parts(report):
    # The parts share the VGG16 the inputs' check loaded (channels, invariances, projections:
    # eleven loads of it before); the ImageNet classifier is tried once (offline: it fails).
    assert PAPER_LOADS.count(("vgg16", "vgg16_hed_features.pt")) == 1
    assert PAPER_LOADS.count(("vgg16", None)) == 1


@pytest.mark.slow
def test_every_part_ran(report):
    out, run = report
    assert [o.skipped for o in run.outcomes] == [None] * 7
    mnist = run.outcome("mnist").result
    assert mnist.test_accuracy > 0.5  # one epoch on 2000 digits; chance is 0.1
    assert [(r.layer, r.preset) for r in run.outcome("vgg16_channels").result.runs] == [
        (layer, preset)
        for layer in ("features.0", "features.2", "features.28")
        for preset in ("paper", "robust")
    ]
    classes = run.outcome("class_models").result
    assert classes.model.spec == "mobilenet_v2"
    assert "unavailable" in classes.note
    assert [(r.init, r.preset) for r in classes.runs] == [
        ("random", "paper"),
        ("random", "robust"),
        ("mean", "paper"),
        ("mean", "robust"),
    ]
    # five digit classes in the Fashion-MNIST layout, one epoch: about 0.96; chance is 0.2
    assert run.outcome("five_class").result.self_built.test_accuracy > 0.6
    assert run.outcome("attribution").result.methods == [
        "saliency",
        "deconvnet",
        "guided",
        "gradcam",
    ]
    # the compression part scores the networks this run trained, on the same test sets
    compression = run.outcome("compression").result
    assert [r.network for r in compression.runs] == ["MNIST CNN", "five-class CNN"]
    mnist_run, five_run = compression.runs
    assert mnist_run.result["baseline_accuracy"] == mnist.test_accuracy
    five = run.outcome("five_class").result.self_built.test_accuracy
    assert five_run.result["baseline_accuracy"] == pytest.approx(five, abs=1e-12)
    assert mnist_run.result["summary"]  # one epoch: some first-layer filters are near-copies
    assert all(row["redundant_finetuned"] is not None for row in mnist_run.result["summary"])
    threads = run.outcome("open_threads").result
    assert [(i.network, i.unit) for i in threads.invariances] == [
        ("MNIST CNN", "features.3 channel 0"),
        ("VGG16", "features.28 channel 0"),
    ]
    for found in threads.invariances:  # the softplus surrogate's Hessian is a linear map
        assert found.summary["check"]["linearity_error"] < 1e-3
        assert (out / found.gif).is_file()
    assert [(p.layer, len(p.figures)) for p in threads.projections] == [
        ("features.8", 1),
        ("features.28", 1),
    ]
    for projected in threads.projections:  # one channel's top 4 photos
        assert projected.summary["high_frequency"]["projections_measured"] == 4
    saved = json.loads((out / "results.json").read_text())
    assert saved["compression"]["MNIST CNN"]["baseline_accuracy"] == mnist.test_accuracy
    assert saved["settings"]["quick"] is True
    assert list(saved["part_seconds"]) == [o.part.key for o in run.outcomes]
    assert 0 < sum(saved["part_seconds"].values()) <= saved["seconds"]
    assert saved["mnist"]["test_accuracy"] == mnist.test_accuracy
    assert list(saved["class_models"]["runs"]) == [
        "random/paper",
        "random/robust",
        "mean/paper",
        "mean/robust",
    ]


@pytest.mark.slow
def test_report_page_in_a_real_browser(report, browser):
    out, run = report
    page, errors, dialogs = open_page(browser, (out / "index.html").as_uri())
    text = page.inner_text("body")
    measured = f"{run.outcome('mnist').result.test_accuracy:.4f}"  # this run's, beside the study's
    assert (
        f"reaches test accuracy {measured}; the study reports {STUDY.mnist_test_accuracy}" in text
    )
    assert "Fashion-MNIST" in text  # the stand-in is labelled
    assert "mobilenet_v2" in text  # the caption says which model made the class models
    compressed = run.outcome("compression").result.runs[0].result
    assert f"All filters: {compressed['baseline_accuracy']:.4f} on MNIST test set" in text
    assert_images_loaded(page)
    assert page.eval_on_selector_all("img", "els => els.length") >= 15
    assert not errors and not dialogs


# --- the check phase: every given input before any work ----------------------------------------


def _photo_folder(tmp_path, shared, names):
    folder = tmp_path / "photos"
    folder.mkdir()
    samples = shared / "data" / "imagenet-samples"
    for name in names:
        (folder / name).symlink_to(next(samples.glob(f"*_{name.split('_', 1)[1]}")))
    return folder


STUDY_PHOTOS = ["n01518878_ostrich.JPEG", "n01443537_goldfish.JPEG", "n07749582_lemon.JPEG"]


@pytest.mark.slow
def test_check_paper_inputs_accepts_the_real_inputs(shared, tmp_path):
    check_paper_inputs(
        data_dir=shared / "data",
        vgg16_weights=shared / "models" / "vgg16_hed_features.pt",
        classifier_weights=shared / "models" / "mobilenet_v2_imagenet.pt",
        photos=shared / "data" / "imagenet-samples",
        fashion_mnist=shared / "data" / "mnist",
    )
    check_paper_inputs(photos=_photo_folder(tmp_path, shared, STUDY_PHOTOS))


def test_check_paper_inputs_refuses_odd_photos(shared, tmp_path):
    folder = _photo_folder(tmp_path, shared, STUDY_PHOTOS)
    (folder / "lemon.JPEG").symlink_to(folder / "n07749582_lemon.JPEG")
    with pytest.raises(ConvsightError, match=r"photo lemon.JPEG in --photos .* <synset>_<class"):
        check_paper_inputs(photos=folder)
    (folder / "lemon.JPEG").unlink()
    (folder / "n07749582_lemon.JPEG").unlink()
    with pytest.raises(ConvsightError, match="has no photo of lemon"):
        check_paper_inputs(photos=folder)
    (folder / "n07749582_lemon.JPEG").write_bytes(b"not a JPEG")
    with pytest.raises(ConvsightError, match="n07749582_lemon.JPEG"):
        check_paper_inputs(photos=folder)
    (folder / "n07749582_lemon.JPEG").unlink()
    (folder / "lemons").mkdir()
    with pytest.raises(ConvsightError, match="holds sub-folders"):
        check_paper_inputs(photos=folder)


@pytest.mark.slow
def test_check_paper_inputs_refuses_bad_folders_and_weights(shared, tmp_path):
    subset = tmp_path / "subset"
    (subset / "train" / "a").mkdir(parents=True)
    with pytest.raises(ConvsightError, match="no test/ folder"):
        check_paper_inputs(subset=subset)
    (subset / "test" / "a").mkdir(parents=True)
    with pytest.raises(ConvsightError, match="same classes"):
        check_paper_inputs(subset=subset)
    (subset / "train" / "b").mkdir()
    (subset / "test" / "b").mkdir()
    with pytest.raises(ConvsightError, match="holds no images"):
        check_paper_inputs(subset=subset)
    with pytest.raises(ConvsightError, match="MNIST file"):
        check_paper_inputs(fashion_mnist=tmp_path)
    with pytest.raises(ConvsightError, match="is not a folder"):
        check_paper_inputs(photos=shared / "models" / "vgg16_hed_features.pt")
    with pytest.raises(ConvsightError, match="is not a file"):
        check_paper_inputs(vgg16_weights=tmp_path)
    features_only = shared / "models" / "vgg16_hed_features.pt"
    with pytest.raises(ConvsightError, match="class"):  # no class scores for the class models
        check_paper_inputs(classifier="vgg16", classifier_weights=features_only)


def test_run_paper_writes_nothing_for_bad_input(tmp_path):
    out = tmp_path / "paper"
    with pytest.raises(ConvsightError, match="--subset"):
        run_paper(out, subset=tmp_path / "missing", show_progress=False)
    assert not out.exists()
