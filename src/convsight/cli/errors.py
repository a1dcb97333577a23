"""How the command line fails: one line on stderr, exit 2 for bad input, 1 for a failure."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from convsight.errors import ConvsightError, SubstitutionWarning
from convsight.models.card_validation import finite_float32

out_console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def say(kind: str, style: str, message: str) -> None:
    """One line on stderr: ``kind`` in colour, then ``message`` as plain text (no markup)."""
    text = Text.assemble((kind, style), " ", " ".join(str(message).split()))
    err_console.print(text, highlight=False, soft_wrap=True)


# Click's error base class, whether typer uses click or its own copy of it (typer >= 0.2x).
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def usage_sentence(exc: Any) -> str:
    """A click usage error as one sentence, pointing at the command's --help."""
    if getattr(exc, "possibilities", None):  # an unknown option with near names
        guesses = ", ".join(sorted(exc.possibilities))
        message = f"{exc.message.rstrip('.')} (did you mean {guesses}?)"
    else:
        message = exc.format_message()
    message = " ".join(message.split()).rstrip(".").replace(". Did you mean", " (did you mean")
    if "(did you mean" in message and not message.endswith(")"):
        message += ")"
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f"; see '{ctx.command_path} --help'"
    return message


class OneLineErrors(TyperGroup):
    """The root command: a usage error (missing or unknown option, bad value) is one line on
    stderr and exit 2, instead of click's usage box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # else the help is already printed
                say("error:", "red", usage_sentence(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            err_console.print("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def card_warnings_on_stderr() -> Iterator[None]:
    """Show each card warning (no mean/std...) and each substitution (an objective, a layer or
    an engine other than the one asked for) as one line on stderr while inside, each message
    once."""
    from convsight.models import CardWarning

    with warnings.catch_warnings():
        shown, said = warnings.showwarning, set()
        kinds = {CardWarning: ("warning:", "yellow"), SubstitutionWarning: ("note:", "cyan")}

        def show(message: Any, category: type[Warning], *rest: Any, **named: Any) -> None:
            kind = next((kinds[k] for k in kinds if issubclass(category, k)), None)
            if kind is None:
                shown(message, category, *rest, **named)
            elif str(message) not in said:
                said.add(str(message))
                say(*kind, str(message))

        warnings.showwarning = show
        for category in kinds:
            warnings.simplefilter("always", category)
        yield


def check_finite_flags(flags: dict[str, Any]) -> None:
    """Every number flag finite in 32-bit floating point (``--lr inf`` and ``--lr 1e39`` are
    refused like ``--lr nan``)."""
    for name, value in flags.items():
        if isinstance(value, float) and not finite_float32(value):
            flag = "--" + name.rstrip("_").replace("_", "-")
            raise ConvsightError(f"{flag} must be a finite number, not {value:g}")


def command(fn: F) -> F:
    """Turn bad input into one sentence and exit 2, other failures into one line and exit 1;
    a card warning is one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            check_finite_flags(kwargs)
            with card_warnings_on_stderr():
                return fn(*args, **kwargs)
        except ConvsightError as exc:
            say("error:", "red", str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:  # a failure, not bad input
            say("failed:", "red", f"{type(exc).__name__}: {exc}")
            if os.environ.get("CONVSIGHT_DEBUG"):
                raise
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
