"""What a method takes: each option's name, type, default and meaning, declared once.

A method declares its options as the keyword-only parameters of its ``_attribute``, each
``name: Annotated[type, "help"] = default`` (a ``Literal[...]`` type gives the choices);
:func:`options_of` reads them as :class:`Option` objects. :func:`resolve` checks a call's
options against them (unknown names, wrong types, values outside the choices) before any work
and fills in the defaults. Help text, the command line and the output JSON read the same
:class:`Option` objects.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

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


def options_of(function: Callable[..., Any]) -> tuple[Option, ...]:
    """The keyword-only parameters of ``function`` as options, in order.

    Each is written ``name: Annotated[type, "help"] = default``; a ``Literal["a", "b"]`` type
    is a string option with those choices. A parameter without help or default is an error in
    the declaration (a TypeError naming it).
    """
    hints = typing.get_type_hints(function, include_extras=True)
    return tuple(
        _option(function.__qualname__, parameter, hints.get(parameter.name))
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    )


def _option(owner: str, parameter: inspect.Parameter, hint: Any) -> Option:
    where = f"option {parameter.name} of {owner}"
    if typing.get_origin(hint) in (types.UnionType, typing.Union):  # Python 3.10 adds Optional
        annotated = [a for a in typing.get_args(hint) if typing.get_origin(a) is Annotated]
        hint = annotated[0] if len(annotated) == 1 else hint
    if typing.get_origin(hint) is not Annotated:
        raise TypeError(f"{where} needs a hint Annotated[type, help]")
    kind, *metadata = typing.get_args(hint)
    helps = [item for item in metadata if isinstance(item, str)]
    if not helps:
        raise TypeError(f"{where} needs its help text: Annotated[type, help]")
    if parameter.default is inspect.Parameter.empty:
        raise TypeError(f"{where} needs a default")
    choices: tuple[str, ...] = ()
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if not all(isinstance(choice, str) for choice in choices):
            raise TypeError(f"{where}: a Literal of choices holds strings only")
        kind = str
    return Option(parameter.name, kind, parameter.default, helps[0], choices)


class DeclaredOptions:
    """``Method.options``: what a method class takes, read on first use and kept on the class.

    A class gives its ``declare_options()`` with the defaults its ``option_defaults`` replace;
    an instance gives its ``instance_options()`` (a noise tunnel around a given method adds
    that method's options). Read on first use, not when the class is made, so that the hints
    may name anything in the module.
    """

    def __get__(self, instance: Any, owner: Any) -> tuple[Option, ...]:
        if instance is not None:
            return instance.instance_options()
        found = owner.__dict__.get("_declared_options")
        if found is None:
            found = with_defaults(owner.declare_options(), **owner.option_defaults)
            owner._declared_options = found
        return found
