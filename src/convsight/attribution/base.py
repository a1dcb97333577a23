"""One contract for every attribution method: ``Method(model).attribute(inputs, target)``.

Inputs are pixels (N x C x H x W in [0, 1], as :func:`convsight.data.load_image_tensor` gives);
each method normalizes them through the model card, so attributions are with respect to pixels.
Targets are one class per image: an int, a class name, a list of those, or a tensor; ``None``
means the class the model predicts.
"""

from __future__ import annotations

import copy
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from convsight.attribution.options import DeclaredOptions, Option, options_of, resolve
from convsight.errors import ConvsightError
from convsight.layers import forward_to
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
        self, inputs: torch.Tensor, target: Target = None, **options: Any
    ) -> torch.Tensor:
        """Attributions shaped like ``inputs`` (CAMs: N x 1 x h x w, like the layer)."""
        inputs = check_inputs(self.model, inputs)
        settings = self.resolve(options)
        targets = resolve_targets(self.model, target, inputs.shape[0])
        # the layout is probed here, once per model, before any method registers a hook
        layout, note = memory_format_for(self.model)
        self.last_run = {
            "engine": "eager",
            "requested_engine": "eager",
            "fallback": None,
            "memory_format": LAYOUT_NAMES[layout],
            "memory_format_note": note,
        }
        if targets is None:
            targets = self.predict(inputs)
        return self._attribute(inputs.detach(), targets, **settings)

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

    def _attribute(
        self, inputs: torch.Tensor, targets: torch.Tensor, *args: Any, **options: Any
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


def forward_batch(device: torch.device) -> int:
    """Rows per forward pass when none is given: 4 on a CPU (on MobileNet v2 at 224 px a batch
    of 4 runs 2.3x faster per image than a batch of 16 there: the activations stay in cache),
    64 on a GPU."""
    return 4 if device.type == "cpu" else 64


def predict_classes(
    model: Model, pixels: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """The predicted class of each pixel input (a CPU tensor), no gradients, ``batch_size``
    rows per forward pass (default :func:`forward_batch`), so memory holds one batch's
    activations whatever the number of inputs."""
    layout, _ = memory_format_for(model)
    size = batch_size or forward_batch(model.device)
    classes = torch.empty(pixels.shape[0], dtype=torch.long)
    with torch.no_grad():
        for part in chunks(pixels.shape[0], size):
            x = model.normalize(pixels[part].to(model.device))
            classes[part] = model.module(x.contiguous(memory_format=layout)).argmax(1).cpu()
    return classes


def forward_scores(
    model: Model,
    pixels: torch.Tensor | Callable[[slice], torch.Tensor],
    targets: torch.Tensor,
    batch_size: int = 64,
    output: str = "logit",
    total: int | None = None,
    engine: str = "eager",
    run: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Target scores for many pixel inputs, no gradients, in chunks of ``batch_size`` rows.

    ``pixels`` is a tensor, or a function that builds the rows of a slice (with ``total``
    rows in all) so that only one chunk is in memory. ``targets`` has one class per row.
    ``output`` is "logit" or "probability" (softmax). ``engine`` "eager" runs the module
    itself, "frozen" a traced and frozen copy (see :func:`frozen_module`), which falls back to
    the module when it cannot be built or fails. ``run``, when given, receives ``engine`` (the
    one that ran) and ``fallback`` (why not the one asked for, or None).
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
    layout, _ = memory_format_for(model)
    net: Callable[[torch.Tensor], torch.Tensor] = model.module
    used, fallback = "eager", None
    if engine == "frozen":
        frozen, fallback = frozen_module(model, build(slice(0, 1)))
        if frozen is not None:
            net, used = frozen, "frozen"

    def scores(net: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        result = torch.empty(total)
        with torch.inference_mode():
            for part in chunks(total, batch_size):
                x = model.normalize(build(part).to(model.device))
                logits = net(x.contiguous(memory_format=layout))
                if output == "probability":
                    logits = logits.softmax(1)
                result[part] = select(logits, targets[part]).float().cpu()
        return result

    try:
        result = scores(net)
    except Exception as exc:  # noqa: BLE001 - the frozen copy failed: run the module itself
        if used == "eager":
            raise
        used, fallback = "eager", f"the frozen copy failed ({failure_reason(exc)})"
        result = scores(model.module)
    if run is not None:
        run.update(engine=used, fallback=fallback)
    return result


def failure_reason(exc: BaseException) -> str:
    """An exception as a short phrase: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# -- memory layout: channels-last where it is safe and faster ----------------------------------
LAYOUT_NAMES = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous"}
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memory_format_for(
    model: Model, layers: Sequence[str] | None = None
) -> tuple[torch.memory_format, str | None]:
    """The memory layout to run ``model`` in, and why it is not channels-last (or None).

    Channels-last makes convolutions faster (MobileNet v2 on CPU runs about twice as fast), but
    breaks code written for the default layout: ``x.view(x.size(0), -1)`` after a conv raises, and
    a custom kernel may read the wrong numbers. It is used only for a network with conv
    layers that gives the same outputs in both layouts on a probe batch; the answer is kept
    per module, device, dtype and ``layers``, so the probe (two forward passes of two rows)
    runs once. With ``layers`` the probe is a truncated forward that compares their outputs:
    nothing after them runs, and only the part of the network that will be used is judged.
    """
    module = model.module
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    key = (str(model.device), tensor.dtype if tensor is not None else None)
    names = tuple(layers) if layers else None
    answers = _LAYOUTS.setdefault(module, {})
    if (key, names) not in answers:
        answers[(key, names)] = _probe_layout(model, names)
    return answers[(key, names)]


def _first_tensor(output: Any) -> Any:
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def _probe_layout(
    model: Model, layers: tuple[str, ...] | None
) -> tuple[torch.memory_format, str | None]:
    module, card = model.module, model.card
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return torch.contiguous_format, "no conv layer, so channels-last would not be faster"
    h, w = card.input_size
    pixels = torch.rand(2, card.channels, h, w, generator=torch.Generator().manual_seed(0))
    x = model.normalize(pixels.to(model.device))

    def run(inputs: torch.Tensor) -> Any:
        if layers is None:
            return _first_tensor(module(inputs))
        outputs = forward_to(module, inputs, layers)
        return torch.cat([_first_tensor(outputs[n]).flatten(1) for n in layers], 1)

    try:
        with torch.no_grad():
            expected = run(x.contiguous())
    except Exception:  # noqa: BLE001 - the network's own error surfaces in the real call
        return torch.contiguous_format, "the network failed on the probe batch"
    try:
        with torch.no_grad():
            got = run(x.contiguous(memory_format=torch.channels_last))
    except Exception as exc:  # noqa: BLE001 - any failure in channels-last: do not use it
        why = failure_reason(exc)
        return torch.contiguous_format, f"the network fails in channels-last layout ({why})"
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
        return torch.contiguous_format, "the network does not return a tensor"
    # loose: the layouts differ by rounding (TF32 on GPUs: ~1e-3); wrong numbers differ grossly
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if got.shape != expected.shape or not torch.allclose(
        got.float(), expected.float(), rtol=1e-2, atol=1e-3 * max(scale, 1.0)
    ):
        return torch.contiguous_format, "the network gives other outputs in channels-last layout"
    return torch.channels_last, None


# -- the frozen engine ----------------------------------------------------------------------------
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


def frozen_module(
    model: Model, example: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str | None]:
    """A frozen, inference-optimized copy of the network, or None and why not.

    Perturbation methods only run the network forwards, many times; a traced and frozen copy
    (batch norm folded into convolutions, activations fused) runs those up to twice as fast on
    CPU. The copy is checked against the module on ``example`` (pixels) and on a second batch
    size, and cached until a parameter changes; a network that cannot be traced, or whose copy
    disagrees, gets None and the reason. The model itself is never changed. Caveat of
    tracing: Python control flow and forward hooks are fixed as they were when traced, which
    is why this is opt-in (``engine="frozen"``).
    """
    module = model.module

    def build() -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str | None]:
        layout, _ = memory_format_for(model)
        x = model.normalize(example[:1].to(model.device)).contiguous(memory_format=layout)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(copy.deepcopy(module).eval(), x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                expected, got = module(x), frozen(x)
                twice = torch.cat([x, x])
                expected_twice, got_twice = module(twice), frozen(twice)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: run the module itself
            return None, f"the network cannot be traced and frozen ({failure_reason(exc)})"
        for want, have in ((expected, got), (expected_twice, got_twice)):
            if not isinstance(have, torch.Tensor) or have.shape != want.shape:
                return None, "the frozen copy gives outputs of another shape"
            if not torch.allclose(have, want, rtol=1e-3, atol=1e-4):
                return None, "the frozen copy gives other outputs than the network"
        return frozen, None

    return cached_for(_FROZEN, module, build)


def inference_module(model: Model, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen copy of :func:`frozen_module`, or the module itself where there is none."""
    frozen, _ = frozen_module(model, example)
    return model.module if frozen is None else frozen
