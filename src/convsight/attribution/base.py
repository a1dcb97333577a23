"""One contract for every attribution method: ``Method(model).attribute(inputs, target)``.

Inputs are pixels (N x C x H x W in [0, 1], as :func:`convsight.data.load_image_tensor` gives);
each method normalizes them through the model card, so attributions are with respect to pixels.
A target is a class per image (an int, a class name, a list of those, a tensor) or any
:class:`~convsight.targets.Target` (margin, segmentation, output, a function of the output);
``None`` means the class the model predicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from convsight.attribution.options import DeclaredOptions, Option, options_of, resolve
from convsight.engines import (
    DEFAULT_ENGINE,
    LAYOUT_NAMES,
    chunks,
    memory_format_for,
    predict_classes,
    select,
)
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import ClassTarget, TargetLike, Targets, resolve_targets


def check_inputs(model: Model, inputs: torch.Tensor) -> torch.Tensor:
    """Fail clearly unless ``inputs`` is a float N x C x H x W batch the model takes."""
    card = model.card
    want = f"N x {card.channels} x {card.input_size[0]} x {card.input_size[1]}"
    if not isinstance(inputs, torch.Tensor):
        raise ConvsightError(f"inputs must be a tensor of pixels ({want}), not {type(inputs)}")
    if inputs.dim() != 4:
        raise ConvsightError(
            f"inputs have shape {tuple(inputs.shape)}; model '{card.name}' takes a batch {want}"
        )
    if inputs.shape[1] != card.channels or tuple(inputs.shape[2:]) != tuple(card.input_size):
        raise ConvsightError(
            f"inputs have shape {tuple(inputs.shape)}; model '{card.name}' takes {want}"
        )
    if inputs.shape[0] == 0:
        raise ConvsightError("inputs hold no image")
    if not inputs.is_floating_point():
        raise ConvsightError("inputs must be float pixels in [0, 1]")
    return inputs.to(model.device)


Reduction = Literal["sum", "max_abs", "mean"]
"""How :meth:`Method.to_heatmap` collapses the colour channels into one map."""


class Method:
    """Base of every attribution method.

    Subclasses implement :meth:`_attribute` on checked pixels and resolved targets; its
    keyword-only parameters, each ``name: Annotated[type, "help"] = default`` (a ``Literal``
    type gives the choices), are the method's ``options``, declared once, and it receives all
    of them (defaults where the call gave none; ``option_defaults`` replaces inherited ones).
    Each declares ``name`` (its short name on the command line), ``title``, ``paper`` (the link
    to its paper) and ``reduce``, how :meth:`heatmap` collapses the colour channels.

    ``last_run`` says how the last :meth:`attribute` call ran, for the output JSON: ``engine``
    (the one that ran), ``requested_engine``, ``fallback`` (why the requested engine did not
    run, or None), ``memory_format`` ("channels_last" or "contiguous") and
    ``memory_format_note`` (why not channels-last, or None); some methods add their own keys.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reduce: ClassVar[Reduction] = "sum"
    options = DeclaredOptions()
    option_defaults: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def declare_options(cls) -> tuple[Option, ...]:
        """The options this class declares: the keyword-only parameters of :meth:`_attribute`."""
        return options_of(cls._attribute)

    def instance_options(self) -> tuple[Option, ...]:
        """The options this instance takes: its class's."""
        return type(self).options

    def __init__(self, model: Model) -> None:
        self.model = model
        self.last_run: dict[str, Any] = {}

    @classmethod
    def describe(cls) -> str:
        """The method in a few lines: title, short name, paper and each option."""
        lines = [f"{cls.title} ({cls.name}): {cls.paper}"]
        lines += [f"  {option.describe()}" for option in cls.options]
        return "\n".join(lines)

    # -- the contract -----------------------------------------------------------------------
    def attribute(
        self, inputs: torch.Tensor, target: TargetLike = None, **options: Any
    ) -> torch.Tensor:
        """Attributions shaped like ``inputs`` (CAMs: N x 1 x h x w, like the layer)."""
        inputs = check_inputs(self.model, inputs)
        settings = self.resolve(options)
        targets = resolve_targets(self.model, target, inputs.shape[0])
        # the layout is probed here, once per model, before any method registers a hook
        layout, note = memory_format_for(self.model)
        self.last_run = {
            "engine": DEFAULT_ENGINE,
            "requested_engine": DEFAULT_ENGINE,
            "fallback": None,
            "memory_format": LAYOUT_NAMES[layout],
            "memory_format_note": note,
        }
        if targets is None:
            targets = ClassTarget(self.predict(inputs))
        return self._attribute(inputs.detach(), targets, **settings)

    def heatmap(
        self, inputs: torch.Tensor, target: TargetLike = None, **options: Any
    ) -> torch.Tensor:
        """One map per image at input resolution (N x H x W): attributions, channels reduced."""
        return self.to_heatmap(self.attribute(inputs, target, **options))

    def to_heatmap(self, attributions: torch.Tensor) -> torch.Tensor:
        """Collapse the channels of :meth:`attribute`'s output (N x C x H x W -> N x H x W)."""
        if self.reduce == "max_abs":
            return attributions.abs().amax(1)
        if self.reduce == "mean":
            return attributions.mean(1)
        return attributions.sum(1)

    # -- helpers for subclasses ---------------------------------------------------------------
    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options of a call, checked against the declared ones (before any work), with
        the defaults of the rest."""
        return resolve(type(self).__name__, self.options, options)

    @property
    def engine_used(self) -> str | None:
        """The engine the last :meth:`attribute` call ran ("eager", "frozen", "incremental")."""
        return self.last_run.get("engine")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for pixel inputs, in the memory layout that is safe and fast
        for this network (:func:`memory_format_for`)."""
        layout, _ = memory_format_for(self.model)
        return self.model.module(self.model.normalize(pixels).contiguous(memory_format=layout))

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The predicted class of each image (:func:`predict_classes`: a batch at a time)."""
        return predict_classes(self.model, inputs)

    def input_gradient(
        self, pixels: torch.Tensor, targets: Targets, batch_size: int | None = None
    ) -> torch.Tensor:
        """d score[target] / d pixels, one row at a time in chunks of ``batch_size`` rows.

        Parameters stay frozen: only the input requires a gradient.
        """
        out = torch.empty_like(pixels)
        size = batch_size or pixels.shape[0]
        with torch.enable_grad():
            for part in chunks(pixels.shape[0], size):
                x = pixels[part].detach().requires_grad_(True)
                score = select(self.forward(x), targets[part]).sum()
                (grad,) = torch.autograd.grad(score, x)
                out[part] = grad
        return out

    def _attribute(
        self, inputs: torch.Tensor, targets: Targets, *args: Any, **options: Any
    ) -> torch.Tensor:
        raise NotImplementedError


Baseline = float | Sequence[float] | torch.Tensor
BASELINE_HELP = "pixels: a number, one value per channel, an image or one image per input"


def baseline_like(baseline: Baseline, inputs: torch.Tensor) -> torch.Tensor:
    """A baseline (pixels) as N x C x H x W like ``inputs``: from a number, one value per
    channel (C or C x 1 x 1), an image (C x H x W) or one image per input (N x C x H x W)."""
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    if base.dim() == 1 and base.numel() == inputs.shape[1]:
        base = base.view(-1, 1, 1)
    try:
        return torch.broadcast_to(base, inputs.shape)
    except RuntimeError as exc:
        raise ConvsightError(
            f"a baseline of shape {tuple(base.shape)} does not fit inputs of shape "
            f"{tuple(inputs.shape)}: give a number, one value per channel, an image (C x H x W) "
            "or one image per input (N x C x H x W)"
        ) from exc
