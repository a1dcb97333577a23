"""Attribution methods: the same maps as captum / pytorch-grad-cam, batching, errors, cleanup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convsight.attribution import (
    METHODS,
    DeconvNet,
    GradCAM,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    default_cam_layer,
    get_method,
    rectifier_rule,
)
from convsight.engines import memory_format_for
from convsight.errors import ConvsightError, UnknownLayerError
from convsight.layers import get_layer
from convsight.models import Model, ModelCard, load_model
from tests.conftest import TinyNet, hook_count

# Fast settings for the slow methods; every method runs on every model of the matrix.
FAST = {
    "smoothgrad": {"samples": 3, "stdev": 0.1},
    "ig": {"steps": 6, "batch_size": 5},
    "occlusion": {"window": 8, "stride": 4, "batch_size": 7},
    "scorecam": {"batch_size": 5},
}
for _name, _cls in METHODS.items():  # every noise tunnel (VarGrad, ...): few samples
    if issubclass(_cls, NoiseTunnel):
        FAST.setdefault(_name, FAST["smoothgrad"])


def _card(name: str, size: int, channels: int = 3, classes: int = 4) -> ModelCard:
    return ModelCard(
        name=name,
        arch=f"test:{name}",
        input_size=(size, size),
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        labels=["cat", "dog", "fish", "bird", "frog", "lion"][:classes],
    )


def tiny_model() -> Model:
    torch.manual_seed(0)
    return Model(TinyNet(), _card("tiny", 32))


def mini_mobilenet() -> Model:
    """torchvision's MobileNet v2 (ReLU6 in place, residuals, batch norm) at width 1/4."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    return Model(mobilenet_v2(width_mult=0.25, num_classes=4), _card("mini-mobilenet", 32))


def mnist_model() -> Model:
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    return model


MODELS = {"tiny": tiny_model, "mini-mobilenet": mini_mobilenet, "mnist-cnn": mnist_model}
# MobileNet's last layer has 1280 channels even at width 1/4: Score-CAM tests use a narrower one.
CAM_LAYER = {"mini-mobilenet": "features.17"}


def _options(model: Model, name: str) -> dict:
    options = dict(FAST.get(name, {}))
    if name in ("gradcam", "gradcam++", "scorecam") and model.card.name in CAM_LAYER:
        options["layer"] = CAM_LAYER[model.card.name]
    return options


@pytest.fixture(scope="module", params=list(MODELS))
def matrix_model(request) -> Model:
    return MODELS[request.param]()


def _pixels(model: Model, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = model.card.input_size
    return torch.rand(n, model.card.channels, h, w, generator=g)


def _forward(model: Model):
    return lambda p: model.module(model.normalize(p))


class _Normalized(nn.Module):
    """Pixels in, logits out: what captum / grad-cam are given."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model.module
        self.card = model.card

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.model(self.card.normalize(p))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    a, b = a.detach().float(), b.detach().float()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max())
    assert err <= atol + rtol * scale, f"max error {err:.3g} at scale {scale:.3g}"


# -- the same maps as captum -------------------------------------------------------------------
@pytest.mark.slow
def test_saliency_ixg_ig_match_captum(matrix_model):
    from captum.attr import InputXGradient as CInputXGradient
    from captum.attr import IntegratedGradients as CIntegratedGradients
    from captum.attr import Saliency as CSaliency

    model, x, t = matrix_model, _pixels(matrix_model), [0, 1, 3]
    f = _forward(model)
    _close(Saliency(model).attribute(x, t), CSaliency(f).attribute(x, target=t, abs=True))
    _close(InputXGradient(model).attribute(x, t), CInputXGradient(f).attribute(x, target=t))
    for rule in ("gausslegendre", "riemann_middle", "riemann_trapezoid"):
        ours = IntegratedGradients(model).attribute(x, t, steps=7, rule=rule, batch_size=4)
        theirs = CIntegratedGradients(f).attribute(x, target=t, n_steps=7, method=rule)
        if rule == "riemann_trapezoid":  # captum's trapezoid weights sum to (n - 1) / n, not 1
            ours = ours * 6 / 7
        _close(ours, theirs)


@pytest.mark.slow
def test_smoothgrad_matches_captum_noise_tunnel(matrix_model):
    from captum.attr import NoiseTunnel
    from captum.attr import Saliency as CSaliency

    model, x, t = matrix_model, _pixels(matrix_model), [2, 0, 1]
    torch.manual_seed(5)
    theirs = NoiseTunnel(CSaliency(_forward(model))).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.2, target=t
    )
    torch.manual_seed(5)
    ours = SmoothGrad(model).attribute(x, t, samples=4, stdev=0.2, batch_size=5)
    _close(ours, theirs)
    g = torch.Generator().manual_seed(3)
    again = SmoothGrad(model).attribute(
        x, t, samples=4, stdev=0.2, generator=torch.Generator().manual_seed(3)
    )
    _close(SmoothGrad(model).attribute(x, t, samples=4, stdev=0.2, generator=g), again)


@pytest.mark.slow
def test_guided_backprop_and_deconvnet_match_captum(matrix_model):
    from captum.attr import Deconvolution
    from captum.attr import GuidedBackprop as CGuidedBackprop

    model, x, t = matrix_model, _pixels(matrix_model), [3, 1, 0]
    wrapped = _Normalized(model)
    if model.card.name == "mini-mobilenet":
        # captum leaves ReLU6 alone, so its "guided backprop" is the plain gradient there;
        # ours applies the guided rule to ReLU6 too and so must differ from it.
        inputs = x.clone().requires_grad_(True)
        scores = wrapped(inputs)
        scores[torch.arange(len(t)), torch.tensor(t)].sum().backward()
        theirs = CGuidedBackprop(wrapped).attribute(x, target=t)
        _close(theirs, inputs.grad)
        ours = GuidedBackprop(model).attribute(x, t)
        assert (ours - inputs.grad).abs().max() > 0.01 * inputs.grad.abs().max()
        return
    _close(GuidedBackprop(model).attribute(x, t), CGuidedBackprop(wrapped).attribute(x, target=t))
    _close(DeconvNet(model).attribute(x, t), Deconvolution(wrapped).attribute(x, target=t))


@pytest.mark.slow
def test_gradcam_matches_captum_on_every_conv_layer(matrix_model):
    from captum.attr import LayerGradCam

    model, x, t = matrix_model, _pixels(matrix_model), [1, 2, 0]
    names = [default_cam_layer(model)] + [
        n for n, m in model.module.named_modules() if isinstance(m, nn.Conv2d)
    ][:3]
    for name in names:
        theirs = LayerGradCam(_forward(model), get_layer(model.module, name)).attribute(
            x, target=t, relu_attributions=True
        )
        _close(GradCAM(model).attribute(x, t, layer=name), theirs)


@pytest.mark.slow
def test_occlusion_matches_captum(matrix_model):
    from captum.attr import Occlusion as COcclusion

    model, x, t = matrix_model, _pixels(matrix_model), [0, 3, 2]
    c = model.card.channels
    settings = ((8, 4), (6, 5)) if model.card.name == "tiny" else ((8, 4),)
    for window, stride in settings:
        theirs = COcclusion(_forward(model)).attribute(
            x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), target=t
        )
        method = Occlusion(model)
        ours = method.attribute(x, t, window=window, stride=stride, batch_size=7)
        _close(ours, theirs, rtol=1e-4, atol=1e-5)
        # the default engine, incremental inference, gave that map: not a fallback to the module
        assert method.last_run["requested_engine"] == method.engine_used == "incremental"
        assert method.last_run["fallback"] is None


def _gradcam_lib(cls, model: Model, layer: str, x: torch.Tensor, t: list[int]) -> torch.Tensor:
    """pytorch-grad-cam's raw maps (N x h x w, at the layer's resolution), unscaled.

    Its ``forward`` min-max scales each map (and resizes it); the raw map is what its own
    ``get_cam_image`` returns inside that ``forward``: its channel weights
    (``get_cam_weights``) times the layer's activations, summed over the channels, before its
    ReLU, scaling and resize.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = _Normalized(model)
    cam = cls(wrapped, [get_layer(wrapped.model, layer)])
    raw: list[np.ndarray] = []

    def get_cam_image(*args, **kwargs):
        image = type(cam).get_cam_image(cam, *args, **kwargs)
        raw.append(np.array(image, copy=True))
        return image

    cam.get_cam_image = get_cam_image  # found before the class's method by its forward
    try:
        cam(x.clone().requires_grad_(True), [ClassifierOutputTarget(i) for i in t])
    finally:
        cam.activations_and_grads.release()
    assert len(raw) == 1, "one target layer: one raw map"
    return torch.from_numpy(raw[0])


def _lib_resized(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's map as shown (its ReLU, then its resize: OpenCV's bilinear, in
    ``scale_cam_image``), without its min-max scaling."""
    import cv2

    maps = [cv2.resize(np.maximum(m, 0), (size[1], size[0])) for m in raw.numpy()]
    return torch.from_numpy(np.stack(maps))


def _close_unscaled(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 2e-4) -> None:
    """Within ``rtol`` of ``theirs``' largest magnitude, however small that is (random-weight
    MobileNet's maps are ~1e-15): both are divided by that one number, which keeps any factor
    or offset between them, unlike min-max scaling each (``_close`` alone would pass maps
    below its 1e-12 floor)."""
    unit = float(theirs.abs().max())
    assert unit > 0, "a map of zeros proves nothing"
    _close(ours / unit, theirs / unit, rtol=rtol, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("ours,lib", [("gradcam++", "GradCAMPlusPlus"), ("scorecam", "ScoreCAM")])
def test_gradcam_plusplus_and_scorecam_match_pytorch_grad_cam(matrix_model, ours, lib):
    import pytorch_grad_cam

    model, x, t = matrix_model, _pixels(matrix_model, n=2), [1, 3]
    # at 32 px MobileNet's features.17 gives 1 x 1 maps, a constant once upsampled:
    # features.6 (4 x 4, 8 channels) has a map to compare
    layer = {"mini-mobilenet": "features.6"}.get(model.card.name, default_cam_layer(model))
    theirs = _gradcam_lib(getattr(pytorch_grad_cam, lib), model, layer, x, t)
    assert min(theirs.shape[-2:]) > 1 and float(theirs.amax()) > 0
    method = get_method(ours, model)
    # the raw maps at the layer's resolution (``attribute``; ``heatmap`` upsamples them):
    # the weighted sum of the channels, negative parts included (relu=False), so a wrong
    # weight of a channel, a common factor or an offset shows (min-max scaling hides the last
    # two)
    raw = method.attribute(x, t, **{**_options(model, ours), "layer": layer, "relu": False})
    _close_unscaled(raw[:, 0], theirs)
    # the map as shown, also unscaled: the ReLU (CAM's relu=True is this clamp), then the
    # bilinear upsampling to the input
    _close_unscaled(method.to_heatmap(raw.clamp(min=0)), _lib_resized(theirs, x.shape[-2:]))


# -- batching ------------------------------------------------------------------------------------
# noise is drawn for the whole batch at once: noise tunnels are checked without noise below
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if not issubclass(c, NoiseTunnel)])
def test_mixed_targets_in_a_batch_equal_one_image_at_a_time(matrix_model, name):
    model, x = matrix_model, _pixels(matrix_model)
    targets = [0, model.card.labels[1], 3]
    method = get_method(name, model)
    options = _options(model, name)
    batch = method.attribute(x, targets, **options)
    single = torch.cat([method.attribute(x[i : i + 1], [targets[i]], **options) for i in range(3)])
    _close(batch, single, rtol=2e-4, atol=1e-6)


def test_smoothgrad_mixed_targets_equal_one_at_a_time_with_the_same_noise(tiny):
    # noise is drawn for the whole batch at once, so compare with no noise across images:
    x = _pixels(tiny)
    batch = SmoothGrad(tiny).attribute(x, [0, "dog", 3], samples=2, stdev=0.0)
    _close(batch, Saliency(tiny).attribute(x, [0, 1, 3]))


def test_target_forms_and_default_prediction(tiny):
    x = _pixels(tiny)
    method = Saliency(tiny)
    a = method.attribute(x, torch.tensor([1, 1, 1]))
    _close(method.attribute(x, 1), a)
    _close(method.attribute(x, "dog"), a)
    _close(method.attribute(x, ["dog", 1, "1"]), a)
    predicted = tiny.module(tiny.normalize(x)).argmax(1).tolist()
    _close(method.attribute(x), method.attribute(x, predicted))


@pytest.mark.slow
def test_heatmaps_are_image_sized(tiny):
    x = _pixels(tiny, n=2)
    for name in METHODS:
        method = get_method(name, tiny)
        heat = method.heatmap(x, [0, 1], **FAST.get(name, {}))
        assert heat.shape == (2, 32, 32), name
        assert torch.isfinite(heat).all()
    cam = GradCAM(tiny).attribute(x, 0)
    assert cam.shape == (2, 1, 16, 16)
    assert GradCAM(tiny).attribute(x, 0, upsample=True).shape == (2, 1, 32, 32)
    _close(Saliency(tiny).heatmap(x, 0), Saliency(tiny).attribute(x, 0).abs().amax(1))


# -- errors ------------------------------------------------------------------------------------
def test_bad_targets_raise_clear_errors(tiny):
    x = _pixels(tiny, n=2)
    with pytest.raises(ConvsightError, match="out of range"):
        Saliency(tiny).attribute(x, 7)
    with pytest.raises(ConvsightError, match="unknown class 'zebra'"):
        Saliency(tiny).attribute(x, ["cat", "zebra"])
    with pytest.raises(ConvsightError, match="3 targets for 2 images"):
        Saliency(tiny).attribute(x, [0, 1, 2])


def test_bad_shapes_layers_and_options_raise_clear_errors(tiny):
    x = _pixels(tiny, n=1)
    with pytest.raises(ConvsightError, match="N x 3 x 32 x 32"):
        Saliency(tiny).attribute(x[0], 0)
    with pytest.raises(ConvsightError, match="takes N x 3 x 32 x 32"):
        Saliency(tiny).attribute(torch.rand(1, 1, 32, 32), 0)
    with pytest.raises(ConvsightError, match="takes N x 3 x 32 x 32"):
        GradCAM(tiny).attribute(torch.rand(1, 3, 30, 32), 0)
    with pytest.raises(UnknownLayerError, match="nearest: features.3"):
        GradCAM(tiny).attribute(x, 0, layer="features.33")
    with pytest.raises(ConvsightError, match="needs a conv layer"):
        GradCAM(tiny).attribute(x, 0, layer="classifier.1")
    with pytest.raises(ConvsightError, match="no option"):
        IntegratedGradients(tiny).attribute(x, 0, n_steps=3)
    with pytest.raises(ConvsightError, match="larger than the image"):
        Occlusion(tiny).attribute(x, 0, window=40)
    with pytest.raises(ConvsightError, match="unknown method"):
        get_method("lime", tiny)


# -- hooks and modules restored ---------------------------------------------------------------
class Exploding(nn.Identity):  # an identity when not armed, so LRP has a rule for it
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


def _exploding_tiny() -> tuple[Model, Exploding]:
    torch.manual_seed(0)
    net = TinyNet()
    bomb = Exploding()
    net.classifier.append(bomb)
    return Model(net, _card("tiny", 32)), bomb


def _structure(module: nn.Module) -> list[tuple[str, type]]:
    return [(n, type(m)) for n, m in module.named_modules()]


@pytest.mark.slow
def test_hooks_and_modules_restored_after_calls_and_exceptions():
    model, bomb = _exploding_tiny()
    x = _pixels(model, n=2)
    before = _structure(model.module)
    relus = (F.relu, F.relu6, torch.relu)
    for name in METHODS:
        method = get_method(name, model)
        method.attribute(x, [0, 1], **FAST.get(name, {}))
        assert hook_count(model.module) == 0, name
        bomb.armed = True
        with pytest.raises(RuntimeError, match="boom"):
            method.attribute(x, [0, 1], **FAST.get(name, {}))
        bomb.armed = False
        assert hook_count(model.module) == 0, name
        assert _structure(model.module) == before, name
        assert (F.relu, F.relu6, torch.relu) == relus, name
        assert all(not p.requires_grad for p in model.module.parameters())


# -- ReLU6, in-place and functional rectifiers ---------------------------------------------------
class RectNet(nn.Module):
    """Conv net whose rectifiers are modules of a given kind or functional F.relu calls."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        act = {
            "relu": lambda: nn.ReLU(),
            "relu-inplace": lambda: nn.ReLU(inplace=True),
            "relu6-inplace": lambda: nn.ReLU6(inplace=True),
        }.get(kind)
        self.act1 = act() if act else None
        self.act2 = act() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "functional":
            x = F.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
        elif self.kind == "method":  # tensor methods, one of them in place
            x = self.conv1(x).relu()
            x = self.conv2(x).relu_()
        elif self.kind == "relu6-functional":  # the two functional forms of ReLU6
            x = F.relu6(self.conv1(x))
            x = F.hardtanh(self.conv2(x), 0.0, 6.0)
        else:
            x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def _rect_model(kind: str) -> Model:
    """The same weights whatever the rectifiers (they have no parameters)."""
    torch.manual_seed(0)
    return Model(RectNet(kind), _card("rect", 12))


@pytest.mark.parametrize("kind", ["relu-inplace", "relu6-inplace", "functional", "method"])
@pytest.mark.parametrize("cls", [GuidedBackprop, DeconvNet])
def test_rectifier_rule_handles_relu6_inplace_and_functional(kind, cls):
    from captum.attr import Deconvolution
    from captum.attr import GuidedBackprop as CGuidedBackprop

    x = _pixels(_rect_model("relu"), n=3)
    reference = _rect_model("relu")
    activations = reference.module.conv1(reference.normalize(x))
    assert float(activations.abs().max()) < 6  # so ReLU6 == ReLU here
    lib = CGuidedBackprop if cls is GuidedBackprop else Deconvolution
    expected = lib(_Normalized(reference)).attribute(x, target=[0, 1, 2])
    model = _rect_model(kind)
    _close(cls(model).attribute(x, [0, 1, 2]), expected)
    plain = Saliency(model).attribute(x, [0, 1, 2], absolute=False)
    assert float((plain - expected).abs().max()) > 1e-3  # the rule changes the map


def _rule_by_hand(model: Model, x: torch.Tensor, targets: list[int], passes) -> tuple:
    """RectNet's input gradient with a rectifier rule applied by hand, and both rectifiers'
    inputs z1, z2. Autograd runs only the linear parts (head, conv2, conv1, normalization);
    each rectifier's backward is written out: the positive part of the gradient, times
    ``passes(z)`` (a mask of its input z) unless that is None."""
    net = model.module
    pixels = x.clone().requires_grad_(True)
    z1 = net.conv1(model.normalize(pixels))
    a1 = z1.detach().clamp(0, 6).requires_grad_(True)
    z2 = net.conv2(a1)
    a2 = z2.detach().clamp(0, 6).requires_grad_(True)
    score = net.head(a2.mean((2, 3)))[torch.arange(len(targets)), torch.tensor(targets)].sum()

    def backward(grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        grad = grad.clamp(min=0)
        return grad if passes is None else grad * passes(z)

    (grad,) = torch.autograd.grad(score, a2)
    (grad,) = torch.autograd.grad(z2, a1, backward(grad, z2.detach()))
    (grad,) = torch.autograd.grad(z1, pixels, backward(grad, z1.detach()))
    return grad, z1.detach(), z2.detach()


@pytest.mark.parametrize("kind", ["relu6-inplace", "relu6-functional"])
@pytest.mark.parametrize("cls", [GuidedBackprop, DeconvNet])
def test_rectifier_rule_on_relu6_above_its_clip(kind, cls):
    """ReLU6 where its input exceeds 6, checked against the rule applied by hand.

    Guided backprop passes the gradient where the forward passed its input on (the local
    derivative is 1) and the gradient is positive: for ReLU6 where 0 < z < 6. Above 6 the
    output is the constant 6 and the derivative 0, so nothing passes there, as below 0.
    DeconvNet passes the positive part of the gradient whatever the forward input was: it
    never looks at the input, so the clip at 6 changes nothing for it either (clamping the
    backward signal at 6 instead would make no sense: gradients have the score's units).
    """
    model = _rect_model(kind)
    with torch.no_grad():  # large pre-activations: both ReLU6s clip some at 6
        for conv, factor in ((model.module.conv1, 10.0), (model.module.conv2, 3.0)):
            conv.weight.mul_(factor)
            conv.bias.mul_(factor)
    x, t = _pixels(model, n=3), [0, 1, 2]
    if cls is GuidedBackprop:
        right, wrong = (lambda z: (z > 0) & (z < 6)), (lambda z: z > 0)  # wrong: ReLU's mask
    else:
        right, wrong = None, (lambda z: z < 6)  # wrong: cut where the input was above 6
    expected, z1, z2 = _rule_by_hand(model, x, t, right)
    for z in (z1, z2):  # every region of ReLU6: below 0, passed on, clipped at 6
        for region in (z < 0, (z > 0) & (z < 6), z > 6):
            assert float(region.float().mean()) > 0.05
    # the inputs above 6 matter: treating them otherwise gives another map
    other, _, _ = _rule_by_hand(model, x, t, wrong)
    assert float((other - expected).abs().max()) > 0.1 * float(expected.abs().max())
    method = cls(model)
    _close(method.attribute(x, t), expected)
    assert method.last_run["rectifier_calls"] == 2  # one forward pass, two ReLU6s
    assert hook_count(model.module) == 0


@pytest.mark.slow
def test_rectifier_rule_on_mobilenet_v2_relu6(mobilenet_v2, samples):
    """On the real MobileNet v2 (ReLU6, in place) guided backprop is not the plain gradient.

    captum's GuidedBackprop only overrides nn.ReLU, so there it returns the plain gradient.
    """
    from captum.attr import GuidedBackprop as CGuidedBackprop

    from convsight.data import load_image_tensor

    model = mobilenet_v2
    x = load_image_tensor(samples[0], model.card)
    plain = Saliency(model).attribute(x, 1, absolute=False)
    captum_guided = CGuidedBackprop(_Normalized(model)).attribute(x, target=1)
    # captum: the plain gradient, as autograd gives it in the same (contiguous) layout; ours
    # runs channels-last, which differs by rounding only
    xg = x.clone().requires_grad_(True)
    _Normalized(model)(xg)[0, 1].backward()
    _close(captum_guided, xg.grad, rtol=1e-5)
    _close(plain, xg.grad, rtol=2e-3)
    before = _structure(model.module)
    with rectifier_rule(model.module, "guided") as counts:
        with torch.no_grad():
            model.module(model.normalize(x))
        assert _structure(model.module) == before  # nothing is swapped or hooked
        assert hook_count(model.module) == 0
    assert (counts.applied, counts.unreached) == (35, 0)  # every ReLU6 of MobileNet v2
    guided = GuidedBackprop(model).attribute(x, 1)
    assert float((guided - plain).abs().max()) > 0.1 * float(plain.abs().max())
    # guided maps are sparse and far less noisy than the gradient
    assert (guided != 0).float().mean() < (plain != 0).float().mean()
    assert _structure(model.module) == before and hook_count(model.module) == 0


@pytest.mark.slow
def test_frozen_engine_gives_the_same_maps_and_leaves_the_model_alone(tiny):
    x = _pixels(tiny, n=2)
    state = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    for name, options in (("occlusion", FAST["occlusion"]), ("scorecam", FAST["scorecam"])):
        method = get_method(name, tiny)
        eager = method.attribute(x, [0, 2], engine="eager", **options)
        assert method.engine_used == "eager", name
        frozen = method.attribute(x, [0, 2], engine="frozen", **options)
        # the frozen copy ran, not the module it falls back to (which would match trivially)
        assert (method.last_run["requested_engine"], method.engine_used) == ("frozen", "frozen")
        assert method.last_run["fallback"] is None, name
        _close(frozen, eager, rtol=1e-4, atol=1e-5)
    assert hook_count(tiny.module) == 0
    assert all(torch.equal(v, state[k]) for k, v in tiny.module.state_dict().items())
    with pytest.raises(ConvsightError, match="unknown engine"):
        Occlusion(tiny).attribute(x, 0, engine="turbo")


@pytest.mark.slow
def test_scorecam_shares_passes_for_equal_masks_and_still_matches_pytorch_grad_cam():
    import pytorch_grad_cam

    model = tiny_model()
    conv = model.module.features[3]
    with torch.no_grad():  # channel 1 = 2 x channel 0 (same mask); channel 2 always 0
        conv.weight[1], conv.bias[1] = 2 * conv.weight[0], 2 * conv.bias[0]
        conv.weight[2], conv.bias[2] = 0.0, -1.0
    x, t = _pixels(model, n=2), [1, 3]
    theirs = _gradcam_lib(pytorch_grad_cam.ScoreCAM, model, "features.4", x, t)
    memory_format_for(model)  # the layout probe (once per model) is not counted below
    calls = []
    handle = model.module.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        # the layer named: finding the default would be one more forward pass
        raw = ScoreCAM(model).attribute(x, t, layer="features.4", batch_size=64, relu=False)
    finally:
        handle.remove()
    _close_unscaled(raw[:, 0], theirs)  # the raw maps, not min-max scaled
    _close_unscaled(ScoreCAM(model).to_heatmap(raw.clamp(min=0)), _lib_resized(theirs, (32, 32)))
    assert sum(calls) <= 2 * 14 + 2  # 16 channels: at most 14 distinct masks + 1 zero mask
