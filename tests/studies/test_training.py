"""The training results' views (curves, confusion matrix, facts) and save(), which copies
the files written while training."""

from __future__ import annotations

import pytest

from convsight.errors import ConvsightError
from convsight.report import OUT_MARKER
from convsight.studies.five_class import SubsetTrainingResult
from convsight.studies.mnist import MnistTrainingResult
from convsight.train import EpochResult
from tests.studies.views import assert_shows, names_and_bytes

HISTORY = [EpochResult(e, 1.0 / e, 0.5 + 0.1 * e, 1.1 / e, 0.45 + 0.1 * e, 0.1) for e in (1, 2)]
SETTINGS = {"train_examples": 20, "test_examples": 8, "device": "cpu"}


def _subset_result(tiny, files=()) -> SubsetTrainingResult:
    classes = tiny.card.labels
    return SubsetTrainingResult(
        model=tiny, spec="five-class-cnn", settings=SETTINGS, history=HISTORY,
        test_accuracy=0.65, seconds=2.5, finetune=False, weights=None, classes=classes,
        train_accuracy=0.7, per_class_accuracy={c: 0.5 for c in classes},
        confusion_matrix=[[2 if i == j else 0 for j in classes] for i in classes],
        skipped_images=[], files=list(files),
    )  # fmt: skip


@pytest.mark.slow
def test_subset_training_shows_curves_confusion_and_each_class(tiny):
    result = _subset_result(tiny)
    assert_shows(result, ["training curves, 2 epochs", "confusion matrix (rows: true class)"])
    assert len(result.tiles()) == 2 and result.title == "SubsetTraining: tiny"
    facts = dict(result.facts())
    assert facts["model"] == "tiny (five-class-cnn)" and facts["test accuracy"] == "0.6500"
    assert facts["examples"] == "20 train, 8 test" and facts["epochs"] == 2
    assert [facts[c] for c in tiny.card.labels] == ["0.5000"] * 4


@pytest.mark.slow
def test_mnist_training_shows_its_curves(tiny):
    settings = {**SETTINGS, "stride": 2, "padding": "same"}
    result = MnistTrainingResult(
        model=tiny, spec="tiny", settings=settings, history=HISTORY, test_accuracy=0.65,
        seconds=1.0, torch_threads=1,
    )  # fmt: skip
    assert_shows(result, ["training curves, 2 epochs"])
    assert dict(result.facts())["model"] == "tiny"
    assert "MNIST CNN, stride 2, padding same" in result.curves().texts[0].get_text()


def test_save_copies_the_files_written_while_training(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    files = []
    for name, data in (("model.pt", b"weights"), ("metrics.json", b"{}")):
        (run / name).write_bytes(data)
        files.append(run / name)
    (run / "not-listed.txt").write_text("left")
    result = _subset_result(tiny, files)
    copies = result.save(tmp_path / "copy")
    assert (
        copies
        == result.files
        == [tmp_path / "copy" / "model.pt", tmp_path / "copy" / "metrics.json"]
    )
    copied = names_and_bytes(tmp_path / "copy")
    assert set(copied) == {"model.pt", "metrics.json", OUT_MARKER}  # not not-listed.txt
    assert copied["model.pt"] == b"weights" and copied["metrics.json"] == b"{}"


def test_save_refuses_without_files_or_with_files_in_several_folders(tiny, tmp_path):
    with pytest.raises(ConvsightError, match="no files to copy"):
        _subset_result(tiny).save(tmp_path / "a")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "m.pt").write_bytes(b"1")
    (tmp_path / "n.json").write_bytes(b"2")
    with pytest.raises(ConvsightError, match="nothing copied"):
        _subset_result(tiny, [tmp_path / "x" / "m.pt", tmp_path / "n.json"]).save(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
