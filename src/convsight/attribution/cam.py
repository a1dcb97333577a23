"""Class activation maps: a weighted sum of a conv layer's channels.

A CAM variant only says how it weights the channels (:meth:`CAM.channel_weights`), as in
pytorch-grad-cam. Maps come out at the layer's resolution (N x 1 x h x w); ``upsample=True``
or :meth:`CAM.heatmap` gives them at the input's. Every variant reads the same thing at a
layer: its own output, also where an in-place operation follows it (:func:`own_output`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from convsight.attribution.base import Method
from convsight.attribution.options import Option, options_of
from convsight.engines import (
    DEFAULT_ENGINE,
    ForwardEngine,
    forward_batch,
    forward_scores,
    select,
)
from convsight.errors import ConvsightError
from convsight.layers import forward_to, get_layer, last_map_layer
from convsight.models import Model
from convsight.targets import Targets, repeated


def cam_layer(model: Model, layer: str | None = None) -> tuple[str, str]:
    """The layer a CAM reads and why: ``layer`` when given (checked), else the last stage's
    output, the last layer with spatial maps before the head pools or flattens them
    (:func:`convsight.layers.last_map_layer`; one forward at the card's input size), as
    pytorch-grad-cam advises: ResNet's ``layer4``, VGG's, DenseNet's and MobileNet's
    ``features``, timm's last stage. The default in a CAM's output JSON records both."""
    if layer is not None:
        get_layer(model.module, layer)
        return layer, "given"
    found = last_map_layer(model.module, model.example_input())
    if found is None:
        raise ConvsightError("the model has no layer with N x C x H x W maps for a CAM")
    name, shape = found
    size = "x".join(map(str, shape))
    h, w = model.card.input_size
    return name, (
        f"default: the last stage's output ({size} maps for a {h}x{w} input, before the head "
        "pools or flattens them); --layer overrides"
    )


def default_cam_layer(model: Model) -> str:
    """The layer a CAM reads when none is given (:func:`cam_layer`)."""
    return cam_layer(model)[0]


@contextmanager
def own_output(module: nn.Module, name: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record layer ``name``'s output (as ``"output"``) in forward passes inside the block.

    The network goes on with a copy of the output, so an in-place operation after the layer
    (``ReLU(inplace=True)``, ``out += identity``) changes the copy, not what is recorded: its
    values, and gradients taken with respect to it, are the layer's own. The hook is removed on
    exit, also on exceptions.
    """
    recorded: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            recorded["output"] = output
            return output.clone()
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            recorded["output"] = output[0]
            return type(output)([output[0].clone(), *output[1:]])
        raise ConvsightError(f"layer '{name}' gives {type(output).__name__}, not a tensor")

    handle = get_layer(module, name).register_forward_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Layer-resolution maps (N x 1 x h x w) at input resolution, bilinear."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


class CAM(Method):
    """Base of the CAM family: ``channel_weights`` says how much each channel counts.

    A variant's own options (after ``layer``, ``relu`` and ``upsample``) are the keyword-only
    parameters of its ``channel_weights``, which receives them.
    """

    uses_gradients = True

    @classmethod
    def declare_options(cls) -> tuple[Option, ...]:
        """``layer``, ``relu`` and ``upsample``, then the variant's own options."""
        return options_of(cls._attribute) + options_of(cls.channel_weights)

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self._default: tuple[str, str] | None = None  # (layer, why), found on first use

    def layer_name(self, layer: str | None) -> str:
        """The layer to use: ``layer`` (checked) or the default for this model."""
        return self.layer_choice(layer)[0]

    def layer_choice(self, layer: str | None) -> tuple[str, str]:
        """(layer, why) as :func:`cam_layer` gives them; the default is found once."""
        if layer is not None:
            return cam_layer(self.model, layer)
        if self._default is None:
            self._default = cam_layer(self.model)
        return self._default

    def layer_values(
        self, inputs: torch.Tensor, targets: Targets, layer: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's own output for ``inputs`` and, for a gradient CAM, the gradient of each
        row's target score with respect to it (None for Score-CAM).

        "Own output" holds even when an in-place operation follows the layer (torchvision's
        VGG: ``features.28`` then ``ReLU(inplace=True)``): the network goes on with a copy.
        """
        module = self.model.module
        if not self.uses_gradients:  # a truncated forward: nothing after the layer runs
            with torch.no_grad():
                return forward_to(module, self.model.normalize(inputs), [layer])[layer], None
        with torch.enable_grad(), own_output(module, layer) as recorded:
            x = inputs.detach().requires_grad_(True)
            score = select(self.forward(x), targets).sum()
            if "output" not in recorded:
                raise ConvsightError(f"layer '{layer}' did not run in the forward pass")
            activations = recorded["output"]
            (gradients,) = torch.autograd.grad(score, activations, allow_unused=True)
        if gradients is None:
            raise ConvsightError(f"the class scores do not depend on layer '{layer}'")
        return activations.detach(), gradients

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        layer: Annotated[str | None, "the conv layer (default: the last stage's output)"] = None,
        relu: Annotated[bool, "keep only the positive part of the map"] = True,
        upsample: Annotated[bool, "give the map at the input's resolution"] = False,
        **weight_options: Any,
    ) -> torch.Tensor:
        name, why = self.layer_choice(layer)
        self.last_run.update(layer=name, layer_reason=why)
        activations, gradients = self.layer_values(inputs, targets, name)
        if activations.dim() != 4:
            raise ConvsightError(
                f"layer '{name}' gives {activations.dim()}-d output; a CAM needs a conv layer "
                "(N x C x h x w)"
            )
        weights = self.channel_weights(inputs, targets, activations, gradients, **weight_options)
        cam = (weights.to(activations.dtype)[:, :, None, None] * activations).sum(1, keepdim=True)
        if relu:
            cam = cam.clamp(min=0)
        if upsample:
            cam = upsample_maps(cam, (inputs.shape[-2], inputs.shape[-1]))
        return cam

    def to_heatmap(self, attributions: torch.Tensor) -> torch.Tensor:
        return upsample_maps(attributions, self.model.card.input_size).squeeze(1)

    def channel_weights(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
    ) -> torch.Tensor:
        """How much each channel counts: N x C."""
        raise NotImplementedError


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017), https://arxiv.org/abs/1610.02391.

    A channel's weight is its mean gradient.
    """

    name = "gradcam"
    title = "Grad-CAM"
    paper = "https://arxiv.org/abs/1610.02391"

    def channel_weights(self, inputs, targets, activations, gradients):
        return gradients.mean((2, 3))


class GradCAMPlusPlus(CAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018), https://arxiv.org/abs/1710.11063.

    A channel's weight sums its positive gradients, each scaled by eq. 19 of the paper.
    """

    name = "gradcam++"
    title = "Grad-CAM++"
    paper = "https://arxiv.org/abs/1710.11063"

    def channel_weights(self, inputs, targets, activations, gradients):
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum((2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.clamp(min=0) * alpha).sum((2, 3))


class ScoreCAM(CAM):
    """Score-CAM (Wang et al. 2020), https://arxiv.org/abs/1910.01279.

    Each channel, upsampled and scaled to [0, 1], masks the input; the channel's weight is the
    softmax over channels of the masked input's score. ``batch_size`` (default
    :func:`~convsight.attribution.base.forward_batch`) masked images per
    forward pass; channels that are constant (an all-zero mask) or equal up to scale and shift
    (the same mask) share one pass.
    ``engine="frozen"`` runs a traced, frozen copy of the network (faster on CPU); where the
    copy cannot be built, disagrees or fails, the module runs and ``last_run`` says why.
    """

    name = "scorecam"
    title = "Score-CAM"
    paper = "https://arxiv.org/abs/1910.01279"
    uses_gradients = False

    def channel_weights(
        self,
        inputs,
        targets,
        activations,
        gradients,
        *,
        batch_size: Annotated[int | None, "masked images per forward pass"] = None,
        engine: Annotated[ForwardEngine, "the module itself, or a traced frozen copy"] = "eager",
    ) -> torch.Tensor:
        batch = batch_size or forward_batch(self.model.device)
        fallbacks: list[str] = []
        scores = [
            self.masked_scores(image[None], targets[i : i + 1], maps, batch, engine, fallbacks)
            for i, (image, maps) in enumerate(zip(inputs, activations, strict=True))
        ]
        self.last_run.update(
            requested_engine=engine,
            engine=DEFAULT_ENGINE if fallbacks else engine,
            fallback=fallbacks[0] if fallbacks else None,
        )
        return torch.stack(scores).softmax(1).to(activations.device)

    def masked_scores(
        self,
        image: torch.Tensor,
        target: Targets,
        activations: torch.Tensor,
        batch_size: int,
        engine: ForwardEngine,
        fallbacks: list[str],
    ) -> torch.Tensor:
        """The target score of ``image`` (1 x C x H x W) masked by each channel of its
        ``activations`` (K x h x w): K scores on the CPU. Why ``engine`` fell back, each
        time it did, is appended to ``fallbacks``."""
        k, h, w = activations.shape
        size = tuple(image.shape[-2:])
        scores = torch.empty(k)

        def scored(pixels: Any, targets: Targets, **how: Any) -> torch.Tensor:
            run: dict[str, Any] = {}
            found = forward_scores(self.model, pixels, targets, engine=engine, run=run, **how)
            if run["fallback"]:
                fallbacks.append(run["fallback"])
            return found

        flat = activations.flatten(1)
        low, high = flat.amin(1), flat.amax(1)
        varying = (high > low).nonzero().flatten()
        # Channels equal up to a positive scale and shift give the same mask: one pass each.
        scaled = (flat[varying] - low[varying, None]) / (high - low)[varying, None]
        unique, inverse = torch.unique(scaled, dim=0, return_inverse=True)

        def build(part: slice) -> torch.Tensor:
            up = F.interpolate(
                unique[part].view(1, -1, h, w), size=size, mode="bilinear", align_corners=True
            )[0]
            lo = up.flatten(1).amin(1).view(-1, 1, 1)
            hi = up.flatten(1).amax(1).view(-1, 1, 1)
            mask = (up - lo) / (hi - lo + 1e-8)
            return image * mask.unsqueeze(1)

        if len(unique):
            found = scored(
                build, repeated(target, 1, len(unique)), batch_size=batch_size, total=len(unique)
            )
            scores[varying.cpu()] = found[inverse.cpu()]
        if len(varying) < k:  # constant channels: an all-zero mask, one shared pass
            scores[(high <= low).cpu()] = scored(torch.zeros_like(image), target)
        return scores
