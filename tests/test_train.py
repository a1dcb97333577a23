import pytest
import torch

from convsight.data import mnist_loaders
from convsight.errors import ConvsightError
from convsight.models import build_seed
from convsight.train import TrainingDiverged, check_lr, evaluate, fit


@pytest.mark.slow
def test_fit_learns_mnist_subset(mnist_dir):
    torch.manual_seed(0)
    module, card = build_seed("mnist-cnn", {"stride": 2, "padding": "same"})
    train, test = mnist_loaders(card, mnist_dir, batch_size=64, train_limit=3000, test_limit=1000)
    before = evaluate(module, test)[1]
    history = fit(module, train, test, epochs=1, show_progress=False)
    assert before < 0.3
    assert history[0].test_accuracy > 0.7  # chance is 0.1
    assert history[0].train_loss < 2.0
    assert not module.training


def _tiny_loaders(n: int = 64):
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=generator)
    y = (x[:, 0] > 0).long()
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=16), DataLoader(data, batch_size=32)


def test_diverging_training_stops_with_one_sentence():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    train, test = _tiny_loaders()
    with pytest.raises(TrainingDiverged, match=r"training diverged: .* try a lower --lr") as info:
        fit(module, train, test, epochs=3, lr=1e30, show_progress=False)
    assert isinstance(info.value, ConvsightError)  # the command line: exit 2, one sentence
    assert "\n" not in str(info.value)


def test_learning_rate_is_checked_before_training():
    module = torch.nn.Linear(8, 2)
    train, test = _tiny_loaders()
    for lr in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConvsightError, match="--lr must be a positive finite number"):
            fit(module, train, test, epochs=1, lr=lr, show_progress=False)
    check_lr(1e-3)
