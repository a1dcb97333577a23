"""Run a notebook as a notebook user would (nbclient, a Jupyter kernel), in this very Python.

The kernel is the spec ``python3``, written for the test into a folder put first on
``JUPYTER_PATH``: its command is this interpreter (``sys.executable -m ipykernel_launcher``),
so it works from a clean clone whose ``.venv`` has no kernel spec installed, and a user-wide
``python3`` spec pointing at another Python cannot take its place. The kernel inherits the
environment (``PYTHONPATH``, ``CONVSIGHT_SHARED``, ``CONVSIGHT_DATA``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

KERNEL = "python3"
INLINE_PNG = re.compile(r"<img src=['\"]data:image/png;base64,")
"""An image embedded in a result's HTML view."""
WIDGET = "application/vnd.jupyter.widget-view+json"
"""The display of an ipywidget (what rich's progress bar is in a notebook)."""
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
"""Where an executed notebook keeps its widgets' state (``nb.metadata["widgets"]``)."""


@contextmanager
def this_python_kernel(folder: Path) -> Iterator[str]:
    """The kernel spec ``python3`` running ``sys.executable``, found first while inside."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "convsight tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(folder), before]))
    try:
        yield KERNEL
    finally:
        if before is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = before


POLL_SLICE = 0.5
"""Seconds a wait for the kernel's next message polls at a time (see :func:`_sliced`)."""


def _sliced(get_msg: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A channel's ``get_msg`` that polls in slices of :data:`POLL_SLICE` seconds up to the
    timeout asked for. Under nbclient with widgets on the page (rich's progress bar), an
    asyncio poll of the shell socket now and then misses the reply that arrived and returns
    only at its timeout, so a cell done in a second took the whole cell timeout (no error;
    nbclient issue 312); a short poll, repeated, picks the reply up within a slice."""

    async def get(timeout: float | None = None) -> Any:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(0.0, deadline - monotonic())
            try:
                return await get_msg(timeout=min(POLL_SLICE, left))
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    return get


def _client_class() -> type:
    """nbclient's client, its channels polled in slices (:func:`_sliced`)."""
    from nbclient import NotebookClient

    class SlicedClient(NotebookClient):
        async def async_start_new_kernel_client(self) -> Any:
            client = await super().async_start_new_kernel_client()
            for channel in (client.shell_channel, client.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg)
            return client

    return SlicedClient


def execute(nb: Any, cwd: Path, timeout: int = 120, allow_errors: bool = False) -> Any:
    """Run every cell of ``nb`` (an nbformat notebook) in ``cwd``, each within ``timeout``
    seconds; a failing cell raises nbclient's ``CellExecutionError`` with its traceback (with
    ``allow_errors``, the error is the cell's output and the next cells run). Returns the
    notebook with its outputs."""
    client = _client_class()(
        nb,
        timeout=timeout,
        kernel_name=KERNEL,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(cwd)}},
    )
    return client.execute()


def run_cells(sources: list[str], cwd: Path, timeout: int = 120) -> Any:
    """A new notebook of these code cells, run in ``cwd`` in a kernel of this Python (its
    spec under ``cwd/jupyter``); checked to have no error. Returns the executed notebook."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    with this_python_kernel(cwd / "jupyter"):
        nb = execute(nb, cwd, timeout=timeout)
    assert not errors(nb), errors(nb)
    return nb


def outputs(cell: Any) -> list[dict[str, Any]]:
    """A code cell's outputs."""
    return list(cell.get("outputs", []))


def errors(nb: Any) -> list[str]:
    """Every error output and every traceback written to stderr, with its cell."""
    found = []
    for number, cell in enumerate(nb.cells):
        for out in outputs(cell):
            if out["output_type"] == "error":
                found.append(f"cell {number}: {out['ename']}: {out['evalue']}")
            elif out["output_type"] == "stream" and "Traceback" in out.get("text", ""):
                found.append(f"cell {number}: {out['text']}")
    return found


def html_images(cell: Any) -> int:
    """How many inline PNG images the cell's HTML outputs hold."""
    return sum(
        len(INLINE_PNG.findall(out.get("data", {}).get("text/html", "")))
        for out in outputs(cell)
        if out["output_type"] in ("execute_result", "display_data")
    )


def png_outputs(nb: Any) -> int:
    """How many outputs of the notebook are PNG pictures (``image/png``)."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in outputs(cell))
