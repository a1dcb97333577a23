"""What a method takes: each option's name, type, default and meaning, declared once.

A method lists its options as a tuple of :class:`Option`; :func:`resolve` checks a call's
options against them (unknown names, wrong types, values outside the choices) before any work
and fills in the defaults. Help text and the output JSON read the same declarations.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convsight.errors import ConvsightError


@dataclass(frozen=True)
class Option:
    """One option of an attribution method.

    ``type`` is a type or a union of them (``int | None``, ``int | tuple[int, int]``,
    ``Sequence[float]``); ``choices``, when given, are the only values it takes.
    """

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this option's type (ints count as floats, bools as neither)."""
        return _fits(value, self.type)

    def describe(self) -> str:
        """``name (type, default D): help``, for help text."""
        kinds = f"one of {', '.join(self.choices)}" if self.choices else type_name(self.type)
        return f"{self.name} ({kinds}, default {self.default!r}): {self.help}"


def type_name(kind: Any) -> str:
    """A type as it is written in a signature (``int | None``)."""
    if kind is None or kind is type(None):
        return "None"
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return " | ".join(type_name(arm) for arm in typing.get_args(kind))
    if typing.get_args(kind):
        return repr(kind).replace("typing.", "").replace("collections.abc.", "")
    return getattr(kind, "__qualname__", repr(kind))


def _fits(value: Any, kind: Any) -> bool:
    if kind is None or kind is type(None):
        return value is None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arm) for arm in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_fits, value, args))
    if origin is Sequence:
        return isinstance(value, (tuple, list)) and all(_fits(item, args[0]) for item in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def resolve(owner: str, declared: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``declared``, with every other option at its default.

    ``owner`` names the method in the one-sentence errors.
    """
    known = {option.name: option for option in declared}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(known) or "none"
        raise ConvsightError(f"{owner} has no option(s) {', '.join(unknown)}; it takes {takes}")
    for name, value in given.items():
        option = known[name]
        if not option.accepts(value):
            raise ConvsightError(
                f"{owner} option {name} takes {type_name(option.type)}, "
                f"not {type(value).__name__} ({_short(value)})"
            )
        if option.choices and value not in option.choices:
            raise ConvsightError(f"unknown {name} {value!r} ({', '.join(option.choices)})")
    return {name: given.get(name, option.default) for name, option in known.items()}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def with_defaults(declared: Sequence[Option], **defaults: Any) -> tuple[Option, ...]:
    """``declared`` with the defaults of the options named in ``defaults`` replaced."""
    missing = set(defaults) - {option.name for option in declared}
    if missing:
        raise ValueError(f"no option(s) {', '.join(sorted(missing))} to give a default")
    return tuple(
        dataclasses.replace(option, default=defaults[option.name])
        if option.name in defaults
        else option
        for option in declared
    )
