"""train_mnist: a typed request, checked when made; a typed result that is what it wrote."""

import json

import pytest
import torch

from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.report import write_figure
from convsight.studies.mnist import MnistTrainingRequest, MnistTrainingResult, train_mnist
from convsight.train import EpochResult
from tests.studies.views import assert_shows, names_and_bytes


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"lr": 0.0}, "--lr must be a positive finite number"),
        ({"epochs": 0}, "--epochs and --batch-size must be at least 1"),
        ({"batch_size": 0}, "--epochs and --batch-size must be at least 1"),
    ],
)
def test_request_refuses_settings_that_cannot_train(tmp_path, fields, fragment):
    with pytest.raises(ConvsightError, match=fragment):
        MnistTrainingRequest(tmp_path / "o", **fields)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_result_is_what_was_written(tmp_path, mnist_dir):
    out = tmp_path / "run"
    request = MnistTrainingRequest(
        out, epochs=1, train_limit=300, test_limit=100, data_dir=mnist_dir, seed=1,
        show_progress=False,
    )  # fmt: skip
    result = train_mnist(request)
    assert isinstance(result, MnistTrainingResult)
    assert json.loads((out / "metrics.json").read_text()) == result.to_json()
    assert {p.name for p in result.files} == {
        "model.pt", "model.json", "metrics.json", "training_curves.png",
    }  # fmt: skip
    assert all(p.is_file() for p in result.files)
    assert isinstance(result.history[0], EpochResult)
    assert result.test_accuracy == result.history[-1].test_accuracy
    assert result.settings["train_examples"] == 300 and result.spec == "mnist-cnn"
    # The Model it returns is the one the checkpoint holds (weights and card).
    saved = load_model(str(out / "model.pt"))
    assert result.model.card.to_dict() == saved.card.to_dict()
    assert not result.model.module.training
    state = result.model.module.state_dict()
    for name, value in saved.module.state_dict().items():
        assert torch.equal(state[name], value), name
    # The curves it shows are the figure it wrote; save() copies the files it wrote.
    again = write_figure(tmp_path / "again.png", result.curves())
    assert again.read_bytes() == (out / "training_curves.png").read_bytes()
    assert_shows(result, ["training curves, 1 epochs"])
    written = names_and_bytes(out)
    assert result.save(tmp_path / "copy") == result.files
    assert names_and_bytes(tmp_path / "copy") == written
