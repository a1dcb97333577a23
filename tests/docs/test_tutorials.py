"""The tutorials (docs/tutorials/*.md, jupytext Markdown notebooks) run as notebooks.

Each is read with ``jupytext.read`` and executed by nbclient in a Jupyter kernel of this Python
(:mod:`tests.notebooks`), in a fresh folder, with ``CONVSIGHT_SHARED`` and ``CONVSIGHT_DATA``
naming the offline data and weights. No cell may fail or print a traceback, and the cells that
end in a result must display it as HTML with inline PNG images: at least as many as
:data:`SHOWN` says for the variable the cell ends with.

``python tests/docs/test_tutorials.py NAME`` runs one and prints each cell's time and outputs.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.notebooks import (
    errors,
    execute,
    html_images,
    outputs,
    png_outputs,
    this_python_kernel,
)

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
CELL_TIMEOUT = 300  # seconds a cell may take (a loaded CI machine; each runs in seconds)

SHOWN: dict[str, dict[str, int]] = {
    "your-model": {"picture": 2, "why": 2, "mirrored": 1, "atlas": 2},
    "segmentation": {"road_maps": 2, "all_road": 2},
    "mnist": {"trained": 1, "seven": 1},
}
"""Per tutorial: the cells that end in a result (by the name on their last line) and how many
inline images each must show at least (one per rendered channel, per method...)."""
FIGURES = {"your-model": 0, "segmentation": 1, "mnist": 1}
"""Per tutorial: how many PNG pictures (matplotlib figures, image files) its cells display at
least."""


def is_notebook(page: Path) -> bool:
    """A jupytext Markdown notebook: its front matter says so."""
    head = page.read_text(encoding="utf-8").split("\n---", 1)[0]
    return head.startswith("---") and "format_name: markdown" in head


def notebooks() -> list[Path]:
    return sorted(page for page in TUTORIALS.glob("*.md") if is_notebook(page))


def test_every_tutorial_is_listed_run_and_in_the_site():
    names = [page.stem for page in notebooks()]
    assert names == sorted(SHOWN), "a tutorial without its checks in SHOWN, or one missing"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    for name in names:
        assert f"tutorials/{name}.md" in nav
        assert f"({name}.md)" in index
    assert not list(TUTORIALS.glob("*.ipynb")), "committed as Markdown, without outputs"


def test_each_result_cell_is_in_its_tutorial():
    """The checks name cells that exist (a renamed variable would leave a check unchecked)."""
    import jupytext

    for name, shown in SHOWN.items():
        nb = jupytext.read(TUTORIALS / f"{name}.md")
        for variable in shown:
            assert _cell_ending_in(nb, variable) is not None, f"{name}: no cell ends in {variable}"


def _cell_ending_in(nb, variable: str):
    """The code cell whose last line is ``variable``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.rstrip().splitlines()[-1:] == [variable]:
            return cell
    return None


@pytest.fixture(scope="session")
def kernel(tmp_path_factory):
    """The ``python3`` kernel spec, running this interpreter."""
    with this_python_kernel(tmp_path_factory.mktemp("jupyter")) as name:
        yield name


def run_tutorial(name: str, folder: Path, allow_errors: bool = False):
    """The tutorial executed in ``folder``: its notebook with outputs."""
    import jupytext

    nb = jupytext.read(TUTORIALS / f"{name}.md")
    return execute(nb, folder, timeout=CELL_TIMEOUT, allow_errors=allow_errors)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHOWN))
def test_the_tutorial_runs_and_shows_its_results(name, kernel, shared, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSIGHT_SHARED", str(shared))
    monkeypatch.setenv("CONVSIGHT_DATA", str(shared / "data"))
    nb = run_tutorial(name, tmp_path)
    assert not errors(nb), "\n".join(errors(nb))
    for variable, least in SHOWN[name].items():
        cell = _cell_ending_in(nb, variable)
        html = [o for o in outputs(cell) if "text/html" in o.get("data", {})]
        assert html, f"{name}: `{variable}` shows no HTML: {outputs(cell)}"
        assert html_images(cell) >= least, f"{name}: `{variable}` shows too few images"
    assert png_outputs(nb) >= FIGURES[name], f"{name}: too few figures"


def _seconds(start: str | None, end: str | None) -> float:
    from datetime import datetime

    if not start or not end:
        return float("nan")
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def _report(name: str) -> None:
    """Run one tutorial here and print each cell's outputs (what the test sees), timed; a
    failing cell does not stop the next ones."""
    import tempfile

    folder = Path(tempfile.mkdtemp())
    with this_python_kernel(folder / "jupyter"):
        start = time.perf_counter()
        nb = run_tutorial(name, folder, allow_errors=True)  # every failing cell is shown
        seconds = time.perf_counter() - start
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        timing = cell.metadata.get("execution", {})
        took = _seconds(timing.get("iopub.execute_input"), timing.get("shell.execute_reply"))
        last = cell.source.splitlines()[-1]
        print(f"--- cell {number} ({took:.1f} s): {last!r}, {html_images(cell)} images")
        for out in outputs(cell):
            text = out.get("text") or out.get("data", {}).get("text/plain", "") or out.get("ename")
            print("   ", out["output_type"], re.sub(r"\s+", " ", str(text))[:200])
    print(f"{name}: {seconds:.1f} s, errors: {errors(nb)}")


if __name__ == "__main__":
    for argument in sys.argv[1:] or sorted(SHOWN):
        _report(argument)
