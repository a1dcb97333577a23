"""benchmarks/channel_faithfulness.py on a hand-built net: the zeroing hook, the rankings, and
the fall of the score after zeroing each ranking's top channel, computed by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from convsight.models import Model, ModelCard
from tests.conftest import two_channel_net

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch) -> ModuleType:
    """benchmarks/channel_faithfulness.py as a module (it imports common by name)."""
    monkeypatch.syspath_prepend(str(BENCH))
    path = BENCH / "channel_faithfulness.py"
    spec = importlib.util.spec_from_file_location("convsight_bench_channel_faithfulness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_channels() -> Model:
    """1 x 1 x 2 image -> 1x1 conv to 2 channels (weights 1 and 3) -> ReLU -> linear."""
    net = two_channel_net((1.0, 3.0))
    card = ModelCard(
        name="faithfulness-test",
        arch="test:faithfulness",
        input_size=(1, 2),
        channels=1,
        mean=(0.0,),
        std=(1.0,),
        labels=["yes", "no"],
    )
    return Model(net, card)


IMAGE = torch.tensor([0.5, 0.25]).view(1, 1, 1, 2)


def test_zeroing_hook_zeroes_each_rows_channels_and_is_removed(bench) -> None:
    model = two_channels()
    keep = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    with torch.no_grad(), bench.channels_zeroed(model.module, "1", keep):
        out = model.module(IMAGE)  # batch 1 in, one row per row of keep out
    # activations: channel 0 = [0.5, 0.25], channel 1 = [1.5, 0.75]
    # class 0: c0 gives 1 x 0.5 + 3 x 0.25 = 1.25, c1 gives -4 x 1.5 + 2 x 0.75 = -4.5
    assert out[:, 0].tolist() == pytest.approx([-3.25, -4.5, 1.25, 0.0])
    assert out[:, 1].tolist() == pytest.approx([0.75, 0.75, 0.0, 0.0])
    assert not model.module[1]._forward_hooks
    assert model.module(IMAGE)[0, 0].item() == pytest.approx(-3.25)


def test_top_channel_by_each_ranking_and_the_fall_of_the_score(bench) -> None:
    model = two_channels()
    orders, ratios = bench.rankings(model, IMAGE, 0, ["1"], seed=0)
    by = orders["1"]
    # CRP: the epsilon rule on the bias-free linear layer gives gradient x activation (up to
    # epsilon), and all of the score is there
    assert by["crp"].tolist() == [0, 1] and by["crp_abs"].tolist() == [1, 0]
    assert ratios["1"] == pytest.approx(1.0, abs=1e-4)
    # gradient x activation for class 0: c0 1.25, c1 -4.5; activation: c0 0.375, c1 1.125
    assert by["grad_x_act"].tolist() == [0, 1]
    assert by["grad_x_act_abs"].tolist() == [1, 0]
    assert by["activation"].tolist() == [1, 0]
    assert by["activation_mean"].tolist() == [1, 0]
    assert sorted(by["random"].tolist()) == [0, 1]
    falls = bench.score_falls(model, IMAGE, 0, "1", by, [1, 2])
    # score -3.25; zeroing c0 leaves -4.5 (fall 1.25), zeroing c1 leaves 1.25 (fall -4.5),
    # zeroing both leaves 0 (fall -3.25)
    assert falls["grad_x_act"]["fall"] == pytest.approx([1.25, -3.25])
    assert falls["activation"]["fall"] == pytest.approx([-4.5, -3.25])
    # the prediction (class 1, 0.75) changes once class 0 rises to 1.25 (c1 zeroed), and
    # with both zeroed the tie goes to class 0
    assert falls["activation"]["changed"] == [1.0, 1.0]
    assert falls["grad_x_act"]["changed"] == [0.0, 1.0]


def test_summary_and_verdict(bench) -> None:
    rows = {
        "grad_x_act": [{"fall": [2.0, 4.0], "changed": [0.0, 1.0]}] * 3,
        "activation": [{"fall": [1.0, 1.0], "changed": [0.0, 0.0]}] * 3,
        "random": [
            {"fall": [0.0, 2.0], "changed": [0.0, 0.0]},
            {"fall": [4.0, 6.0], "changed": [0.0, 1.0]},
        ],
    }
    summary = bench.summarize(rows, [1, 2])
    assert summary["grad_x_act"]["aoc"] == pytest.approx(3.0)
    assert summary["grad_x_act"]["mean_fall"] == pytest.approx([2.0, 4.0])
    assert summary["grad_x_act"]["prediction_changed"] == pytest.approx([0.0, 1.0])
    assert summary["random"]["aoc"] == pytest.approx(3.0) and summary["random"]["aoc_sem"] > 0
    assert bench.beats(summary, "grad_x_act", "activation") == "beats"
    assert bench.beats(summary, "activation", "grad_x_act") == "loses to"
    assert bench.beats(summary, "grad_x_act", "random") == "ties with"
    text = bench.verdict("layer", summary)
    assert text.startswith("layer: gradient x activation (AOC 3.00) beats activation magnitude")
    assert "CRP" not in text


def test_a_network_is_evaluated_over_its_samples_with_every_ranking(bench) -> None:
    model = two_channels()
    samples = [("a", lambda: IMAGE, 1), ("b", lambda: IMAGE.flip(-1), 1)]
    found = bench.evaluate_network("Two", model, samples, ["1"], [1, 2], seed=0)
    assert found["samples"] == 2 and found["crp"] is True
    # a: class 1 predicted (0.75 against -3.25); b = [0.25, 0.5]: class 0 (0.25 + 1.5 - 3 + 3
    # = 1.75 against 3 x 0.5 = 1.5), not its label
    assert found["top1_on_these_samples"] == pytest.approx(0.5)
    assert found["mean_target_logit"] == pytest.approx((0.75 + 1.75) / 2)
    layer = found["layers"]["1"]
    assert layer["channels"] == 2 and list(layer["rankings"]) == list(bench.RANKINGS)
    assert layer["verdict"].startswith("Two 1: CRP relevance")
    assert all(r["photos"] == 2 and r["k"] == [1, 2] for r in layer["rankings"].values())


def test_mnist_digits_are_spread_over_the_test_set_as_pixels_in_0_1(bench, monkeypatch) -> None:
    images = torch.arange(10 * 4, dtype=torch.uint8).view(10, 2, 2) * 6
    labels = torch.arange(10) % 3
    monkeypatch.setattr(bench, "load_mnist", lambda split: (images, labels))
    digits = bench.mnist_samples(4)
    assert [name for name, _, _ in digits] == [f"test digit {i}" for i in (0, 2, 5, 7)]
    assert [label for _, _, label in digits] == [0, 2, 2, 1]
    pixels = digits[1][1]()
    assert pixels.shape == (1, 1, 2, 2)
    torch.testing.assert_close(pixels, images[2].float().view(1, 1, 2, 2) / 255)
