"""A model's head: the scores before a final softmax are its class scores.

A module whose last operation is a softmax or log-softmax over the classes (``nn.Softmax``,
``F.softmax`` or ``x.softmax(1)`` at the end of ``forward``, a Keras ``Dense`` with
``activation='softmax'``, an ONNX ``Softmax`` node) is cut when it is loaded: it returns the
softmax's input, so gradients, class models and "logit" fields see the scores before softmax,
and the softmax of those scores is the model's own probability. The softmax is found by
running the module once while recording every softmax call (whatever the module's source);
layer names stay exactly as in the module. Where no softmax can be seen (TorchScript) but the
module returns probabilities, its class scores are their log, with a :class:`CardWarning`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from convsight.errors import ConvsightError
from convsight.models.card import CardWarning

LOGITS = "logits"
SOFTMAX_CUT = "softmax cut"
LOG_SOFTMAX_CUT = "log-softmax cut"
LOG_OF_PROBABILITIES = "log of probabilities"
LOG_PROBABILITIES = "log-probabilities"
HEADS = (LOGITS, SOFTMAX_CUT, LOG_SOFTMAX_CUT, LOG_OF_PROBABILITIES, LOG_PROBABILITIES)
"""What ``ModelCard.head`` says was done to the module's output (``logits``: nothing)."""

_CUTS = {"softmax": SOFTMAX_CUT, "log_softmax": LOG_SOFTMAX_CUT}
_KINDS: dict[Any, str] = {
    **dict.fromkeys((F.softmax, torch.softmax, torch.Tensor.softmax), "softmax"),
    **dict.fromkeys((F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax), "log_softmax"),
    torch.special.softmax: "softmax",
    torch.special.log_softmax: "log_softmax",
}
_MODULES = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax"}
_TOLERANCE = 1e-4  # probabilities (or log-probabilities) agree to this after the cut
_TINY = float(torch.finfo(torch.float32).tiny)  # log(0) would be -inf


class SoftmaxRecorder(TorchFunctionMode):
    """While inside, keeps the last softmax or log-softmax over dimension 1 of a 2-D tensor
    (``last``: its kind, input and output)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: tuple[str, torch.Tensor, torch.Tensor] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _KINDS.get(func)
        if kind is not None and isinstance(out, torch.Tensor) and out.dim() == 2:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim in (1, -1, None):
                self.last = (kind, args[0] if args else kwargs["input"], out)
        return out


def head_of(module: nn.Module) -> str:
    """What was done to ``module``'s output (one of :data:`HEADS`)."""
    return getattr(module, "_convsight_head", LOGITS)


def settle_head(
    module: nn.Module,
    example: torch.Tensor,
    out: Any,
    last: tuple[str, torch.Tensor, torch.Tensor] | None,
    name: str,
) -> tuple[nn.Module, str]:
    """``module`` with its class scores as output, and its head (one of :data:`HEADS`).

    ``out`` is the module's output for ``example`` (one input batch), computed inside a
    :class:`SoftmaxRecorder` whose ``last`` call is given. A module already settled is
    returned as it is. A softmax or log-softmax head is cut (in place); a module that returns
    probabilities without a softmax to cut (TorchScript) returns their log (a TorchScript one
    is wrapped in a new TorchScript module), and one that returns log-probabilities is kept,
    each with a warning naming model ``name``.
    """
    if hasattr(module, "_convsight_head"):
        return module, head_of(module)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        return module, LOGITS
    if last is not None and _same(out, last[2]):
        head = _CUTS[last[0]]
        if _cut(module, head) and _agrees(module, example, out, head):
            return module, head
        _uncut(module)
    kind = _probability_kind(module, example, out)
    if kind is None:
        return module, LOGITS
    warnings.warn(_NOTES[kind].format(name=name), CardWarning, stacklevel=4)
    if kind == LOG_PROBABILITIES:
        _mark(module, kind)
        return module, kind
    return _log_of_output(module), kind


_NOTES = {
    LOG_OF_PROBABILITIES: (
        "model '{name}' returns probabilities, but convsight cannot find the softmax that "
        "makes them (TorchScript, or a softmax of its own), so its class scores are the log of "
        "its output: gradients and class models work on log-probabilities, not on the scores "
        "before softmax"
    ),
    LOG_PROBABILITIES: (
        "model '{name}' returns log-probabilities, but convsight cannot find the log-softmax "
        "that makes them (TorchScript, or one of its own), so its class scores are its output: "
        "gradients and class models work on log-probabilities, not on the scores before softmax"
    ),
}


def _same(out: torch.Tensor, recorded: torch.Tensor) -> bool:
    """Whether ``out`` is ``recorded`` (or a view of the same numbers in the same layout)."""
    if out is recorded:
        return True
    try:
        return (
            out.shape == recorded.shape
            and out.stride() == recorded.stride()
            and out.data_ptr() == recorded.data_ptr()
        )
    except (RuntimeError, NotImplementedError):  # a tensor without storage
        return False


def _agrees(module: nn.Module, example: torch.Tensor, out: torch.Tensor, head: str) -> bool:
    """Whether the cut module's scores give the module's own output (one more forward)."""
    with torch.no_grad():
        scores = module(example)
    if not isinstance(scores, torch.Tensor) or scores.shape != out.shape:
        return False
    again = scores.log_softmax(1) if head == LOG_SOFTMAX_CUT else scores.softmax(1)
    return torch.allclose(again.float(), out.float(), rtol=_TOLERANCE, atol=_TOLERANCE)


def _probability_kind(module: nn.Module, example: torch.Tensor, out: torch.Tensor) -> str | None:
    """LOG_OF_PROBABILITIES when every output row is non-negative and sums to 1 (on
    ``example`` and on two random inputs), LOG_PROBABILITIES when every row's exponentials
    sum to 1, else None."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((2, *example.shape[1:]), generator=generator, dtype=example.dtype)
    kinds = {_row_kind(out)}
    if kinds != {None}:
        with torch.no_grad():
            kinds.add(_row_kind(module(noise.to(example.device))))
    return kinds.pop() if len(kinds) == 1 else None


def _row_kind(out: Any) -> str | None:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        return None
    out = out.double()
    if out.min() >= 0 and (out.sum(1) - 1).abs().max() <= _TOLERANCE:
        return LOG_OF_PROBABILITIES
    if out.max() <= _TOLERANCE and out.logsumexp(1).abs().max() <= _TOLERANCE:
        return LOG_PROBABILITIES
    return None


def _mark(module: nn.Module, head: str) -> None:
    # torch types Module.__setattr__'s value as Tensor | Module, but any value may be set
    module._convsight_head = head  # type: ignore[assignment]


# -- the cut ------------------------------------------------------------------------------------
def _cut(module: nn.Module, head: str) -> bool:
    """Make ``module`` return its head's input, in place; False where it cannot."""
    if isinstance(module, fx.GraphModule):
        return _cut_graph(module, head)
    if isinstance(module, torch.jit.ScriptModule) or "forward" in vars(module):
        return False
    module.__class__ = _cut_class(type(module), head)
    return True


def _uncut(module: nn.Module) -> None:
    """Undo :func:`_cut` (a cut graph is rebuilt from its saved output)."""
    if isinstance(module, fx.GraphModule) and hasattr(module, "_convsight_output"):
        output = next(n for n in module.graph.nodes if n.op == "output")
        output.args = (module._convsight_output,)
        module.recompile()
        del module._convsight_output, module._convsight_head
    elif (base := getattr(type(module), "_convsight_base", None)) is not None:
        module.__class__ = base


def _softmax_node(node: fx.Node, root: nn.Module) -> str | None:
    """The kind of softmax a graph node computes over its first argument, or None."""
    if node.op == "call_function":
        return _KINDS.get(node.target)
    if node.op == "call_method":
        return node.target if node.target in _CUTS else None
    if node.op != "call_module":
        return None
    module = root.get_submodule(str(node.target))
    if type(module).__name__ == "OnnxSoftmaxV1V11" and module.axis in (1, -1):
        return "log_softmax" if module.is_log else "softmax"  # onnx2torch, opset 11 or older
    return _MODULES.get(type(module))


def _cut_graph(module: fx.GraphModule, head: str) -> bool:
    """A graph whose output is a softmax node returns that node's input instead (the node
    stays, so its layer can still be addressed)."""
    output = next(n for n in module.graph.nodes if n.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node) or _CUTS.get(_softmax_node(last, module) or "") != head:
        return False
    if not last.args or not isinstance(last.args[0], fx.Node):
        return False
    # torch types Module.__setattr__'s value as Tensor | Module, but any value may be set
    module._convsight_output = last  # type: ignore[assignment]
    output.args = (last.args[0],)
    module.recompile()
    _mark(module, head)
    return True


_CLASSES: dict[tuple[type[nn.Module], str], type[nn.Module]] = {}


def _cut_class(base: type[nn.Module], head: str) -> type[nn.Module]:
    """A subclass of ``base`` (same name) whose forward returns its head's input or, for
    LOG_OF_PROBABILITIES, the log of its output; copied and pickled as such."""
    if (base, head) not in _CLASSES:
        inner = base.forward

        @functools.wraps(inner)  # torch.fx reads the signature of the wrapped forward
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return _cut_forward(self, inner, head, args, kwargs)

        def __reduce_ex__(self: nn.Module, protocol: Any) -> tuple:
            return (_new_cut, (base, head), self.__getstate__())

        attributes = {
            "forward": forward,
            "__reduce_ex__": __reduce_ex__,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "_convsight_base": base,
            "_convsight_head": head,
        }
        cut = type(base.__name__, (base,), attributes)
        assert issubclass(cut, nn.Module)  # a subclass of base
        _CLASSES[(base, head)] = cut
    return _CLASSES[(base, head)]


def _new_cut(base: type[nn.Module], head: str) -> nn.Module:
    """An empty instance of the cut class of ``base`` (for copy and pickle)."""
    cls = _cut_class(base, head)
    return cls.__new__(cls)


def _cut_forward(module: nn.Module, inner: Any, head: str, args: tuple, kwargs: dict) -> Any:
    """Run ``inner`` (the module's own forward) and return its head's input."""
    if head == LOG_OF_PROBABILITIES:
        return _log(inner(module, *args, **kwargs))
    recorder = SoftmaxRecorder()
    with recorder:
        out = inner(module, *args, **kwargs)
    if isinstance(out, fx.Proxy):  # traced by torch.fx: cut the traced graph
        tracer, node = out.tracer, out.node
        if (
            isinstance(tracer, fx.Tracer)
            and _CUTS.get(_softmax_node(node, tracer.root) or "") == head
        ):
            scores = node.args[0]  # a softmax node's input
            if isinstance(scores, fx.Node):
                return tracer.proxy(scores)
        raise RuntimeError(f"torch.fx cannot follow the model's {head} head")
    last = recorder.last
    if last is None or not _same(out, last[2]) or _CUTS[last[0]] != head:
        raise RuntimeError(
            f"the model's forward did not end in the {head.split()[0]} it ended in when "
            "convsight loaded it, so its class scores cannot be told apart from its output"
        )
    return last[1]


def _log(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.log(probabilities.clamp_min(_TINY))


class LogOfOutput(nn.Module):
    """A TorchScript model's output, which is probabilities, as their log."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.model(x).clamp_min(1.1754943508222875e-38))  # float32 tiny


def _log_of_output(module: nn.Module) -> nn.Module:
    """``module`` returning the log of its output (TorchScript: a new TorchScript module)."""
    wrapped: nn.Module
    if isinstance(module, torch.jit.ScriptModule):
        with warnings.catch_warnings():  # torch.jit.script is deprecated in favour of export
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = torch.jit.script(LogOfOutput(module))
    elif isinstance(module, fx.GraphModule):
        output = next(n for n in module.graph.nodes if n.op == "output")
        with module.graph.inserting_before(output):
            wrapped_node = module.graph.call_function(_log, (output.args[0],))
        output.args = (wrapped_node,)
        module.recompile()
        wrapped = module
    elif "forward" not in vars(module):
        module.__class__ = _cut_class(type(module), LOG_OF_PROBABILITIES)
        return module
    else:
        raise ConvsightError(
            "convsight cannot take the log of this model's probabilities: its forward is "
            "replaced on the instance; give a module whose forward returns the scores"
        )
    _mark(wrapped, LOG_OF_PROBABILITIES)
    return wrapped
