"""One contract for every attribution method: ``Method(model).attribute(inputs, target)``.

Inputs are pixels (N x C x H x W in [0, 1], as :func:`convsight.data.load_image_tensor` gives);
each method normalizes them through the model card, so attributions are with respect to pixels.
Targets are one class per image: an int, a class name, a list of those, or a tensor; ``None``
means the class the model predicts.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models import Model

Target = int | str | Sequence[int | str] | torch.Tensor | None


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


def resolve_targets(model: Model, target: Target, count: int) -> torch.Tensor | None:
    """Class indices (LongTensor of ``count``), checked against the card; None stays None."""
    if target is None:
        return None
    if isinstance(target, torch.Tensor):
        if target.dim() == 0:
            items: list[Any] = [int(target)] * count
        else:
            items = [int(t) for t in target.flatten().tolist()]
    elif isinstance(target, (int, str)):
        items = [target] * count
    else:
        items = list(target)
    if len(items) != count:
        raise ConvsightError(f"{len(items)} targets for {count} images: give one per image")
    return torch.tensor([model.class_index(t) for t in items], dtype=torch.long)


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    size = max(1, int(size))
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def select(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The score of each row's target class: ``scores[i, targets[i]]``."""
    return scores.gather(1, targets.to(scores.device).view(-1, 1)).squeeze(1)


class Method:
    """Base of every attribution method.

    Subclasses implement :meth:`_attribute` on checked pixels and resolved targets. ``name`` is
    the short name used on the command line; ``reduce`` says how :meth:`heatmap` collapses the
    colour channels into one map ("sum", "max_abs" or "mean").
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    reduce: ClassVar[str] = "sum"

    def __init__(self, model: Model) -> None:
        self.model = model

    # -- the contract -----------------------------------------------------------------------
    def attribute(
        self, inputs: torch.Tensor, target: Target = None, **options: Any
    ) -> torch.Tensor:
        """Attributions shaped like ``inputs`` (CAMs: N x 1 x h x w, like the layer)."""
        inputs = check_inputs(self.model, inputs)
        self.check_options(options)
        targets = resolve_targets(self.model, target, inputs.shape[0])
        if targets is None:
            targets = self.predict(inputs)
        return self._attribute(inputs.detach(), targets, **options)

    def heatmap(self, inputs: torch.Tensor, target: Target = None, **options: Any) -> torch.Tensor:
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
    def check_options(self, options: dict[str, Any]) -> None:
        """Reject options the method does not take (before any work)."""
        import inspect

        accepted = set(inspect.signature(self._attribute).parameters) - {"inputs", "targets"}
        unknown = set(options) - accepted
        if unknown:
            raise ConvsightError(
                f"{type(self).__name__} has no option(s) {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(sorted(accepted)) or 'none'}"
            )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for pixel inputs (run in channels-last memory layout)."""
        x = self.model.normalize(pixels).contiguous(memory_format=torch.channels_last)
        return self.model.module(x)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The predicted class of each image."""
        with torch.no_grad():
            return self.forward(inputs).argmax(1).cpu()

    def input_gradient(
        self, pixels: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None
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

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, **options: Any):
        raise NotImplementedError


def forward_batch(device: torch.device) -> int:
    """Rows per forward pass when none is given: 4 on a CPU (on MobileNet v2 at 224 px a batch
    of 4 runs 2.3x faster per image than a batch of 16 there: the activations stay in cache),
    64 on a GPU."""
    return 4 if device.type == "cpu" else 64


def forward_scores(
    model: Model,
    pixels: torch.Tensor | Callable[[slice], torch.Tensor],
    targets: torch.Tensor,
    batch_size: int = 64,
    output: str = "logit",
    total: int | None = None,
    engine: str = "eager",
) -> torch.Tensor:
    """Target scores for many pixel inputs, no gradients, in chunks of ``batch_size`` rows.

    ``pixels`` is a tensor, or a function that builds the rows of a slice (with ``total``
    rows in all) so that only one chunk is in memory. ``targets`` has one class per row.
    ``output`` is "logit" or "probability" (softmax). ``engine`` "eager" runs the module
    itself, "frozen" a traced and frozen copy (see :func:`inference_module`).
    """
    if engine not in ("eager", "frozen"):
        raise ConvsightError(f"unknown engine '{engine}' (eager or frozen)")
    if isinstance(pixels, torch.Tensor):
        tensor = pixels
        total = tensor.shape[0]

        def build(part: slice) -> torch.Tensor:
            return tensor[part]
    else:
        build = pixels
        if total is None:
            raise ValueError("total is needed when pixels is a function")
    result = torch.empty(total)
    net = inference_module(model, build(slice(0, 1))) if engine == "frozen" else model.module
    with torch.inference_mode():
        for part in chunks(total, batch_size):
            x = model.normalize(build(part).to(model.device))
            logits = net(x.contiguous(memory_format=torch.channels_last))
            if output == "probability":
                logits = logits.softmax(1)
            result[part] = select(logits, targets[part]).float().cpu()
    return result


_FROZEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``module`` is replaced or changed in place."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((id(t), t._version) for t in tensors)


def cached_for(cache: weakref.WeakKeyDictionary, module: nn.Module, build: Callable[[], Any]):
    """``build()``'s result kept in ``cache`` for ``module`` until a parameter or buffer of it
    changes (a derived copy of the network: frozen, incremental, ...)."""
    key = _state_key(module)
    cached = cache.get(module)
    if cached is None or cached[0] != key:
        cached = (key, build())
        cache[module] = cached
    return cached[1]


def inference_module(model: Model, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen, inference-optimized copy of the network for forward passes without gradients.

    Perturbation methods only run the network forwards, many times; a traced and frozen copy
    (batch norm folded into convolutions, activations fused) runs those up to twice as fast on
    CPU. The copy is checked against the module on ``example`` (pixels) and cached until a
    parameter changes; a network that cannot be traced, or whose copy disagrees, runs as is.
    The model itself is never changed. Caveat of tracing: Python control flow and forward hooks
    are fixed as they were when traced, which is why this is opt-in (``engine="frozen"``).
    """
    module = model.module

    def build() -> Callable[[torch.Tensor], torch.Tensor]:
        x = model.normalize(example[:1].to(model.device))
        x = x.contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(copy.deepcopy(module).eval(), x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                expected, got = module(x), frozen(x)
                frozen(torch.cat([x, x]))  # a second batch size must work too
                if expected.shape == got.shape and torch.allclose(
                    got, expected, rtol=1e-3, atol=1e-4
                ):
                    return frozen
        except Exception:  # noqa: BLE001 - any tracing failure means: run the module itself
            pass
        return module

    return cached_for(_FROZEN, module, build)
