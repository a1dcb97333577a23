"""Models whose forward returns more than one tensor: the card's ``output`` picks the scores.

A forward may return a tuple or list (``(logits, features)``), a dict (``{"logits": ...}``,
torchvision's segmentation ``{"out": ..., "aux": ...}``, an ONNX graph with several outputs)
or an object with attributes (HuggingFace's ``.logits``). The card field ``output`` (flag
``--output INDEX|KEY``, ``Model.from_module(..., output=...)``) names the part every method
uses: an index of a tuple, list or dict (in its order), or a key of a dict or an attribute.

The Model's module is made to return that part and keeps its layers under exactly their
names (every hook still fires): see :func:`select_output`.
"""

from __future__ import annotations

import copy
import functools
import operator
from typing import Any, TypeGuard

import torch
from torch import fx, nn

from convsight.errors import ConvsightError

MAX_PARTS_SHOWN = 8
"""How many parts of a non-tensor output a refusal lists."""
OUTPUT_HELP = "--output INDEX|KEY (card field output; output= in Model.from_module)"


def parse_output(text: str) -> int | str:
    """``--output``: a whole number is an index (``0``, ``-1``), any other text a key."""
    text = str(text).strip()
    if not text:
        raise ConvsightError("--output is empty: give an index (e.g. 0) or a key (e.g. logits)")
    return int(text) if text.lstrip("-").isdigit() else text


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(map(str, value.shape)) + " tensor" if value.ndim else "scalar tensor"
    return type(value).__name__


def _parts(out: Any) -> list[tuple[str, Any]]:
    """The parts of a non-tensor output with the name that picks each ('0', "'logits'")."""
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # a named tuple: its names pick too
        return [(f"{i} ({fields[i]})" if fields else str(i), v) for i, v in enumerate(out)]
    if isinstance(out, dict):
        return [(repr(k), v) for k, v in out.items()]
    try:
        attributes = vars(out)
    except TypeError:
        return []
    return [(k, v) for k, v in attributes.items() if not k.startswith("_")]


def describe_output(out: Any) -> str:
    """What a forward returned, part by part: 'a tuple of 2 (0: 1x10 tensor, 1: ...)'."""
    if isinstance(out, torch.Tensor):
        return f"a {_shape(out)}"
    parts = _parts(out)
    shown = ", ".join(f"{name}: {_shape(value)}" for name, value in parts[:MAX_PARTS_SHOWN])
    more = f", and {len(parts) - MAX_PARTS_SHOWN} more" if len(parts) > MAX_PARTS_SHOWN else ""
    kind = "tuple" if isinstance(out, tuple) else type(out).__name__
    if not isinstance(out, (tuple, list, dict)):
        listed = f" with the attributes {shown}{more}" if parts else ""
        return f"a {kind} object{listed}"
    return f"a {kind} of {len(parts)} parts ({shown}{more})" if parts else f"an empty {kind}"


def not_a_tensor(name: str, out: Any) -> ConvsightError:
    """The refusal of a model whose output is not one tensor and whose card picks no part."""
    return ConvsightError(
        f"model '{name}' returns {describe_output(out)}, not one tensor of scores; choose "
        f"the part to use with {OUTPUT_HELP}"
    )


def pick(out: Any, key: int | str, name: str = "model") -> torch.Tensor:
    """The part ``key`` of the output ``out`` (see the module docstring); one sentence when
    it has none, or when ``out`` is already one tensor (indexing it would pick a row)."""
    if isinstance(out, torch.Tensor):
        raise ConvsightError(
            f"model '{name}' returns one {_shape(out)}, so it has no part {key!r} to choose: "
            "leave out --output (card field output)"
        )
    found, part = _lookup(out, key)
    if not found:
        raise ConvsightError(
            f"model '{name}' returns {describe_output(out)}, which has no part {key!r}; give "
            "one of its parts to --output (card field output)"
        )
    if not _tensor_like(part):
        raise ConvsightError(
            f"part {key!r} of what model '{name}' returns is a {_shape(part)}, not a tensor "
            f"of scores ({describe_output(out)})"
        )
    return part


def _tensor_like(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is a tensor, or the Proxy that stands for one while torch.fx traces."""
    return isinstance(value, (torch.Tensor, fx.Proxy))


def _lookup(out: Any, key: int | str) -> tuple[bool, Any]:
    """Whether ``out`` has the part ``key``, and the part."""
    if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(out, (tuple, list)):
        key = int(key)  # "0" from a card, for a tuple
    if isinstance(out, dict):
        if key in out:
            return True, out[key]
        if isinstance(key, int):
            values = list(out.values())
            return (True, values[key]) if -len(values) <= key < len(values) else (False, None)
        return False, None
    if isinstance(key, int):
        if isinstance(out, (tuple, list)) and -len(out) <= key < len(out):
            return True, out[key]
        return False, None
    if hasattr(out, key) and not key.startswith("_"):
        return True, getattr(out, key)
    return False, None


class _Selecting:
    """What the class of a Python module that returns one part of its output adds to the
    module's own class (see :func:`_selecting_class`): the part is picked after the class's
    forward, so ``torch.fx`` and ``torch.jit.trace`` see it too; a deep copy keeps it, and
    so does a pickle (the module is pickled as its own class and chosen again)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(vars(self), memo))
        return new

    def __reduce_ex__(self, protocol: Any) -> Any:
        base = type(self).__bases__[1]
        assert issubclass(base, nn.Module)  # (_Selecting, the module's own class)
        plain = base.__new__(base)
        plain.__dict__.update(vars(self))
        del plain.__dict__[_CHOICE]
        return (_chosen, (plain, *vars(self)[_CHOICE]))


_CHOICE = "_convsight_output"  # (key, model name) in the module's own __dict__
_FULL_OUTPUT = "_convsight_full_output"  # a graph's output before one part was chosen
_SELECTING: dict[
    type[nn.Module], type[nn.Module]
] = {}  # a module class -> its selecting subclass (a cache)


def _selecting_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with :class:`_Selecting` before it and a forward that picks the chosen part
    of what ``cls.forward`` returns (same name; made once per class). The forward wraps
    ``cls.forward`` (``functools.wraps``), so ``torch.fx`` reads the inputs from its
    signature."""
    if cls not in _SELECTING:
        whole = cls.forward

        @functools.wraps(whole)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            key, name = vars(self)[_CHOICE]
            return pick(whole(self, *args, **kwargs), key, name)

        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "forward": forward,
        }
        selecting = type(cls.__name__, (_Selecting, cls), namespace)
        assert issubclass(selecting, nn.Module)  # a subclass of cls
        _SELECTING[cls] = selecting
    return _SELECTING[cls]


def _chosen(module: nn.Module, key: int | str, name: str) -> nn.Module:
    """``module`` (a plain one, unpickled) made to return its part ``key`` again."""
    return select_output(module, key, name)


class ScriptedOutput(nn.Module):
    """A TorchScript module that returns part ``key`` of its output (its layers take no
    hooks either way: ``wraps_torchscript`` tells the layer functions so)."""

    wraps_torchscript = True

    def __init__(self, scripted: torch.jit.ScriptModule, key: int | str, name: str) -> None:
        super().__init__()
        self.scripted, self.key, self.model_name = scripted, key, name

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return pick(self.scripted(*args, **kwargs), self.key, self.model_name)


def _graph_output(module: fx.GraphModule) -> fx.Node:
    return next(node for node in module.graph.nodes if node.op == "output")


def _choose_in_graph(module: fx.GraphModule, key: int | str | None) -> bool:
    """Point a ``torch.fx`` graph's output at its part ``key`` (None: back to the whole
    output); False when its output is not a tuple, list or dict of values that has it.

    A graph module rebuilds its class when copied or pickled, so the choice is made in the
    graph itself (copies and pickles keep it).
    """
    node = _graph_output(module)
    names = vars(module).get(_FULL_OUTPUT)
    if names is not None:  # the whole output, by node names, as it was before a choice
        by_name = {n.name: n for n in module.graph.nodes}
        whole: Any = fx.node.map_aggregate(names, lambda n: by_name[n])
    else:
        whole = node.args[0]
    if key is None:
        found, part = True, whole
    elif isinstance(whole, (tuple, list, dict)):
        found, part = _lookup(whole, key)
    else:
        found, part = False, None
    if not found or (key is not None and not isinstance(part, fx.Node)):
        return False
    if names is None:
        vars(module)[_FULL_OUTPUT] = fx.node.map_aggregate(whole, operator.attrgetter("name"))
    node.args = (part,)
    if key is None:
        del vars(module)[_FULL_OUTPUT]
    module.recompile()
    return True


def _unchosen(module: nn.Module) -> nn.Module:
    """``module`` returning its whole output again (as its class returns it)."""
    if isinstance(module, ScriptedOutput):
        return module.scripted
    if isinstance(module, _Selecting):
        module.__class__ = type(module).__bases__[1]
        del vars(module)[_CHOICE]
    elif isinstance(module, fx.GraphModule) and _FULL_OUTPUT in vars(module):
        _choose_in_graph(module, None)
    return module


def select_output(module: nn.Module, key: int | str | None, name: str = "model") -> nn.Module:
    """``module`` made to return its part ``key`` (None: what its class returns), keeping
    its layers and their names; a module set up for another key is set up again.

    A TorchScript module is wrapped (:class:`ScriptedOutput`); a ``torch.fx`` graph whose
    output is a tuple, list or dict gets that part as its output; any other module gets a
    subclass of its own class whose forward picks the part.
    """
    if key is not None and isinstance(module, ScriptedOutput) and module.key == key:
        module.model_name = name
        return module
    if key is not None and isinstance(module, _Selecting) and vars(module)[_CHOICE][0] == key:
        vars(module)[_CHOICE] = (key, name)
        return module
    if isinstance(module, _Selecting) and type(module) not in _SELECTING.values():
        raise ConvsightError(
            f"model '{name}' returns part {vars(module)[_CHOICE][0]!r} of its output with its "
            f"softmax head cut; load it again with output={key!r} instead of changing the "
            "card's output"
        )  # a head cut (convsight.models.heads) sits on top of the choice
    module = _unchosen(module)
    if key is None:
        return module
    if isinstance(module, torch.jit.ScriptModule):
        return ScriptedOutput(module, key, name)
    if isinstance(module, fx.GraphModule) and _choose_in_graph(module, key):
        return module
    module.__class__ = _selecting_class(type(module))
    vars(module)[_CHOICE] = (key, name)
    return module
