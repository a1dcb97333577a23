"""Correct on the models people bring: memory layout, in-place layers, engines and their
fallbacks, baselines, and the rectifier rule scoped to one call in one thread."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convsight.attribution import (
    METHODS,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ScoreCAM,
    get_method,
)
from convsight.engines import memory_format_for
from convsight.engines.incremental import IncrementalNet
from convsight.errors import ConvsightError
from convsight.models import Model
from tests.conftest import TinyNet, hook_count
from tests.engines import small_card as _card

FAST = {
    "smoothgrad": {"samples": 2, "stdev": 0.1},
    "ig": {"steps": 4},
    "occlusion": {"window": 8, "stride": 8},
    "scorecam": {"batch_size": 8},
}
for _name, _cls in METHODS.items():  # every noise tunnel (VarGrad, ...): few samples
    if issubclass(_cls, NoiseTunnel):
        FAST.setdefault(_name, FAST["smoothgrad"])


def _pixels(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class ViewNet(nn.Module):
    """One conv, then ``x.view(x.size(0), -1)`` and a linear head: channels-last breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return self.head(x.view(x.size(0), -1))


def _view_model() -> Model:
    torch.manual_seed(0)
    return Model(ViewNet(), _card())


def _tiny() -> Model:
    torch.manual_seed(0)
    return Model(TinyNet(), _card(32))


# -- memory layout -----------------------------------------------------------------------------
@pytest.mark.slow
def test_every_method_runs_on_a_network_that_views_after_a_conv():
    model = _view_model()
    x = _pixels()
    for name in METHODS:
        method = get_method(name, model)
        out = method.heatmap(x, [0, 3], **FAST.get(name, {}))
        assert out.shape == (2, 16, 16) and torch.isfinite(out).all(), name
        assert method.last_run["memory_format"] == "contiguous", name
        assert "view size" in method.last_run["memory_format_note"], name
    assert hook_count(model.module) == 0


def test_channels_last_only_where_safe_and_faster_decided_once():
    tiny = _tiny()
    assert memory_format_for(tiny) == (torch.channels_last, None)
    mlp = Model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)), _card())
    layout, note = memory_format_for(mlp)
    assert layout == torch.contiguous_format and note.startswith("no conv layer")
    view = _view_model()
    calls: list[int] = []
    handle = view.module.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        first = memory_format_for(view)
        assert first[0] == torch.contiguous_format and len(calls) == 2  # the probe, both ways
        assert memory_format_for(view) == first and len(calls) == 2  # then kept
    finally:
        handle.remove()
    # a layout that gives other numbers is not used either
    model = _tiny()
    original = model.module.forward

    def layout_dependent(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        return out + 1 if x.is_contiguous(memory_format=torch.channels_last) else out

    model.module.forward = layout_dependent
    layout, note = memory_format_for(model)
    assert layout == torch.contiguous_format and note.endswith(
        "other outputs in channels-last layout"
    )


# -- a layer name means that layer's own output ------------------------------------------------
def _conv_relu_net(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, ScoreCAM])
def test_a_cam_layer_followed_by_an_inplace_relu_means_the_layers_own_output(cls):
    inplace, plain = Model(_conv_relu_net(True), _card()), Model(_conv_relu_net(False), _card())
    x, t = _pixels(), torch.tensor([1, 2])
    acts, grads = cls(inplace).layer_values(x, t, "0")
    want_acts, want_grads = cls(plain).layer_values(x, t, "0")
    torch.testing.assert_close(acts, want_acts)
    negative = want_acts < 0
    assert negative.any() and (acts[negative] < 0).all()  # not the ReLU's map
    after_acts, after_grads = cls(plain).layer_values(x, t, "1")
    assert not torch.allclose(acts, after_acts)
    if cls is not ScoreCAM:
        torch.testing.assert_close(grads, want_grads)
        # through the ReLU, the conv output's gradient is 0 where that output is negative
        assert (grads[negative] == 0).all() and (after_grads[negative] != 0).any()
    maps = cls(inplace).attribute(x, t, layer="0", **FAST.get(cls.name, {}))
    torch.testing.assert_close(maps, cls(plain).attribute(x, t, layer="0"))
    assert not torch.allclose(maps, cls(plain).attribute(x, t, layer="1"))
    assert hook_count(inplace.module) == 0


def test_gradient_and_score_cams_agree_on_what_a_layer_is():
    """Grad-CAM and Score-CAM read the same activations at a layer an in-place ReLU follows."""
    model = Model(_conv_relu_net(True), _card())
    x, t = _pixels(), torch.tensor([0, 3])
    grad_acts, _ = GradCAM(model).layer_values(x, t, "0")
    score_acts, _ = ScoreCAM(model).layer_values(x, t, "0")
    torch.testing.assert_close(grad_acts, score_acts)


# -- occlusion: baselines, strides, engines and their fallbacks -------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("shape", ["image", "per-input", "per-channel"])
def test_occlusion_baseline_shaped_like_the_image_in_every_engine(shape):
    from captum.attr import Occlusion as COcclusion

    model, x, t = _tiny(), _pixels(size=32), [0, 3]
    g = torch.Generator().manual_seed(4)
    baseline = {
        "image": torch.rand(3, 32, 32, generator=g),
        "per-input": torch.rand(2, 3, 32, 32, generator=g),
        "per-channel": torch.tensor([0.2, 0.5, 0.9]),
    }[shape]
    theirs = COcclusion(lambda p: model.module(model.normalize(p))).attribute(
        x,
        sliding_window_shapes=(3, 8, 8),
        strides=(3, 6, 6),
        baselines=baseline.view(-1, 3, 1, 1) if shape == "per-channel" else baseline,
        target=t,
    )
    for engine in ("incremental", "frozen", "eager"):
        method = Occlusion(model)
        ours = method.attribute(x, t, window=8, stride=6, baseline=baseline, engine=engine)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        # each engine ran itself: a fallback to the module would match captum trivially
        assert (method.last_run["requested_engine"], method.engine_used) == (engine, engine)
        assert method.last_run["fallback"] is None
        if engine == "incremental":  # where its time went: the whole-map tail is a part of it
            run = method.last_run
            assert 0 < run["whole_map_tail_seconds"] < run["incremental_seconds"]
    with pytest.raises(ConvsightError, match="baseline of shape"):
        Occlusion(model).attribute(x, t, baseline=torch.zeros(3, 16, 16))


@pytest.mark.slow
def test_occlusion_refuses_a_stride_larger_than_the_window():
    model = _tiny()
    with pytest.raises(ConvsightError, match="stride 9x9 is larger than the window 8x8"):
        Occlusion(model).attribute(_pixels(1, 32), 0, window=8, stride=9)
    with pytest.raises(ConvsightError, match="stride 4x9"):
        Occlusion(model).attribute(_pixels(1, 32), 0, window=8, stride=(4, 9))
    # a window as large as the image has one position: any stride is fine there
    Occlusion(model).attribute(_pixels(1, 32), 0, window=(32, 8), stride=(40, 8))


def test_incremental_occlusion_follows_a_view_after_a_conv():
    model = _view_model()
    x = _pixels()
    method = Occlusion(model)
    fast = method.attribute(x, [0, 2], window=4, stride=3)
    assert method.engine_used == "incremental" and method.last_run["fallback"] is None
    torch.testing.assert_close(
        fast, Occlusion(model).attribute(x, [0, 2], window=4, stride=3, engine="eager")
    )


@pytest.mark.slow
def test_engine_failures_fall_back_to_the_module_and_say_why(monkeypatch):
    x, t = _pixels(size=32), [1, 2]
    options = {"window": 8, "stride": 8}
    expected = Occlusion(_tiny()).attribute(x, t, engine="eager", **options)

    def broken(self, clean, patch):
        raise RuntimeError("no kernel for this layer")

    monkeypatch.setattr(IncrementalNet, "forward", broken)
    method = Occlusion(_tiny())
    torch.testing.assert_close(method.attribute(x, t, **options), expected)
    assert method.last_run == {
        **method.last_run,
        "requested_engine": "incremental",
        "engine": "eager",
        "fallback": "incremental inference failed (RuntimeError: no kernel for this layer)",
    }

    def wrong(self, clean, patch):
        return torch.zeros(patch.values.shape[0], 4)

    monkeypatch.setattr(IncrementalNet, "forward", wrong)
    method.attribute(x, t, **options)
    assert method.last_run["fallback"] == "incremental inference disagrees with the network"
    assert "whole_map_tail_seconds" not in method.last_run  # no timing of a run thrown away

    def untraceable(*args, **kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    model = _tiny()
    for method in (Occlusion(model), ScoreCAM(model)):
        out = method.attribute(
            x, t, engine="frozen", **(options if method.name == "occlusion" else {})
        )
        assert torch.isfinite(out).all()
        assert (method.last_run["requested_engine"], method.engine_used) == ("frozen", "eager")
        assert method.last_run["fallback"] == (
            "the network cannot be traced and frozen (RuntimeError: cannot trace)"
        )
    torch.testing.assert_close(
        Occlusion(model).attribute(x, t, engine="frozen", **options), expected
    )


@pytest.mark.slow
def test_every_method_records_how_it_ran():
    model = _tiny()
    x = _pixels(size=32)
    for name in METHODS:
        method = get_method(name, model)
        method.attribute(x, [0, 1], **FAST.get(name, {}))
        run = method.last_run
        assert {"engine", "requested_engine", "fallback", "memory_format"} <= set(run), name
        assert run["memory_format"] == "channels_last" and run["fallback"] is None, name
        default = "incremental" if name == "occlusion" else "eager"
        assert run["engine"] == run["requested_engine"] == default, name
    assert get_method("guided", model).last_run == {}  # nothing before the first call


# -- guided backprop / DeconvNet: per call, per thread, never silently wrong ------------------
class Gate(nn.Module):
    """Holds the forward pass of one thread until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.owner: int | None = None
        self.inside, self.go_on = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() == self.owner:
            self.inside.set()
            assert self.go_on.wait(60)
        return x


def test_the_rectifier_rule_does_not_reach_another_thread():
    torch.manual_seed(0)
    gate = Gate()
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        gate,
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    model = Model(net, _card())
    x, t = _pixels(), [1, 3]
    plain = Saliency(model).attribute(x, t, absolute=False)
    guided_alone = GuidedBackprop(model).attribute(x, t)
    assert not torch.allclose(plain.abs(), guided_alone)
    result: dict[str, torch.Tensor] = {}

    def run_guided() -> None:
        gate.owner = threading.get_ident()
        result["guided"] = GuidedBackprop(model).attribute(x, t)

    worker = threading.Thread(target=run_guided)
    worker.start()
    try:
        assert gate.inside.wait(60)  # the other thread is inside its rule now
        torch.testing.assert_close(Saliency(model).attribute(x, t, absolute=False), plain)
    finally:
        gate.go_on.set()
        worker.join(60)
    torch.testing.assert_close(result["guided"], guided_alone)
    assert F.relu(torch.tensor([-1.0])).item() == 0.0 and hook_count(model.module) == 0


def test_the_rectifier_rule_refuses_what_it_cannot_reach():
    card = _card(8, classes=2)
    torch.manual_seed(0)
    scripted = nn.Sequential(
        torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())),
        nn.Flatten(),
        nn.Linear(4 * 36, 2),
    )
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ConvsightError, match=r"cannot reach 1 rectifier\(s\)"):
        GuidedBackprop(Model(scripted, card)).attribute(x, 0)
    silu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(ConvsightError, match="runs none, so its map would be the plain gradient"):
        get_method("deconvnet", Model(silu, card)).attribute(x, 0)


def test_the_rectifier_rule_reaches_threshold_and_hardtanh_rectifiers():
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    forms = {
        "threshold": nn.Threshold(0.0, 0.0),
        "hardtanh": nn.Hardtanh(0.0, 100.0, inplace=True),
    }
    card, x = _card(8, classes=2), torch.rand(2, 3, 8, 8)
    expected = GuidedBackprop(Model(relu, card)).attribute(x, [0, 1])
    for name, rectifier in forms.items():
        net = copy.deepcopy(relu)
        net[1] = rectifier
        method = GuidedBackprop(Model(net, card))
        torch.testing.assert_close(method.attribute(x, [0, 1]), expected, msg=name)
        assert method.last_run["rectifier_calls"] == 1
