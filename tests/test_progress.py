"""Progress bars: on by default, off for one call, for the session or by the environment, and a
widget (not a stack trace) in a Jupyter notebook."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from convsight import progress
from tests.notebooks import WIDGET, WIDGET_STATE, outputs, run_cells


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """The bars' console drawn into a string as into a terminal; the session switch and the
    environment variable as a fresh session has them."""
    text = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=text, force_terminal=True, width=80))
    monkeypatch.setattr(progress, "_switch", None)
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    return text


def draw(enabled: bool = True) -> None:
    with progress.progress_bar(enabled) as bar:
        task = bar.add_task("work", total=3, status="")
        for _ in range(3):
            bar.advance(task)


def test_a_bar_draws_by_default(terminal):
    draw()
    assert "work" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_enabled_false_silences_one_bar(terminal):
    draw(False)
    assert terminal.getvalue() == ""


def test_set_progress_silences_every_bar_until_switched_back(terminal):
    progress.set_progress(False)
    assert not progress.progress_enabled()
    draw()
    assert terminal.getvalue() == ""
    progress.set_progress(True)
    draw(False)  # one call still silences its own bar
    assert terminal.getvalue() == ""
    draw()
    assert "3/3" in terminal.getvalue()


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_the_environment_variable_silences_every_bar(terminal, monkeypatch, value):
    monkeypatch.setenv("CONVSIGHT_PROGRESS", value)
    draw()
    assert terminal.getvalue() == ""
    progress.set_progress(True)  # the session's choice wins over the environment
    draw()
    assert "3/3" in terminal.getvalue()
    progress.set_progress(None)  # back to what the environment says
    assert not progress.progress_enabled()


def test_the_environment_variable_set_to_1_keeps_bars(terminal, monkeypatch):
    monkeypatch.setenv("CONVSIGHT_PROGRESS", "1")
    draw()
    assert "3/3" in terminal.getvalue()


def test_outside_a_notebook_the_console_is_not_jupyter():
    """The command line's bars stay terminal bars on stderr."""
    assert not progress.console.is_jupyter
    assert progress.console.stderr


NOTEBOOK = [
    "import sys\nimport convsight.progress as p\nprint(p.console.is_jupyter, sys.executable)",
    "with p.progress_bar() as bar:\n"
    "    task = bar.add_task('work', total=3, status='')\n"
    "    for _ in range(3):\n"
    "        bar.advance(task)",
    "p.set_progress(False)\n"
    "with p.progress_bar() as bar:\n"
    "    bar.add_task('silent', total=1, status='')",
]


@pytest.mark.slow
def test_in_a_notebook_a_bar_is_a_widget(tmp_path):
    nb = run_cells(NOTEBOOK, tmp_path)
    detect, bar, silent = (outputs(cell) for cell in nb.cells)
    assert [o.get("text") for o in detect] == [f"True {sys.executable}\n"]  # this Python
    widgets = [o for o in bar if o["output_type"] == "display_data" and WIDGET in o["data"]]
    assert len(widgets) == 1, bar
    assert not [o for o in bar if o["output_type"] == "stream"], bar  # no warning, no trace
    assert silent == []
    # the widget's last drawing (kept in the notebook's widget state) is the finished bar
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    drawn = state[widgets[0]["data"][WIDGET]["model_id"]]["state"]["outputs"]
    assert "work" in drawn[-1]["data"]["text/plain"]
    assert "3/3" in drawn[-1]["data"]["text/plain"]
