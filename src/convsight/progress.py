"""Rich progress bars for long work; silent when disabled, for one call or the whole session.

In a terminal a bar is drawn on stderr. In a Jupyter kernel :data:`console` is made there (it
is made when this module is first imported, so inside the kernel) and detects it: rich then
draws the bar as a widget that updates in place (it needs ipywidgets, ``convsight[notebook]``).
``set_progress(False)`` or the environment variable ``CONVSIGHT_PROGRESS=0`` silences every
bar; ``progress_bar(False)`` silences one.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_ENV = "CONVSIGHT_PROGRESS"
"""The environment variable that turns every progress bar off (``0``, ``false``, ``no``,
``off``) unless :func:`set_progress` said otherwise."""
_OFF = {"0", "false", "no", "off"}

console = Console(stderr=True)

_switch: bool | None = None  # set_progress's choice; None: as the environment says


class _Bars(Progress):
    """rich's progress display, drawn once more when it stops in a notebook (rich skips that
    last refresh there, so a quick task's widget would keep showing an earlier count)."""

    def stop(self) -> None:
        if self.console.is_jupyter:
            self.refresh()
        super().stop()


def set_progress(enabled: bool | None) -> None:
    """Show progress bars (True) or none (False) from now on in this process; None goes back
    to what ``$CONVSIGHT_PROGRESS`` says (on unless it is ``0``)."""
    global _switch
    _switch = None if enabled is None else bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars are shown: :func:`set_progress`'s choice, else
    ``$CONVSIGHT_PROGRESS`` (on unless ``0``, ``false``, ``no`` or ``off``)."""
    if _switch is not None:
        return _switch
    return os.environ.get(PROGRESS_ENV, "").strip().lower() not in _OFF


def progress_bar(enabled: bool = True) -> Progress:
    """A progress display (use as a context manager); ``enabled=False``, ``set_progress(False)``
    or ``CONVSIGHT_PROGRESS=0`` shows nothing."""
    return _Bars(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and progress_enabled()),
        transient=False,
    )
