import torch

from convsight.data import mnist_loaders
from convsight.models import build_seed
from convsight.train import evaluate, fit


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
