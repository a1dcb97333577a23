"""Every Python block of the docs runs: the blocks of a page in order, in one namespace, in a
folder that holds a ``photo.jpg`` and a ``photos/`` folder of real photos."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_docs_have_python_examples():
    assert sum(len(python_blocks(page)) for page in PAGES) >= 6


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_every_python_block_runs(page, shared, tmp_path, monkeypatch):
    samples = sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))
    shutil.copy(samples[0], tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for sample in samples[1:4]:
        shutil.copy(sample, tmp_path / "photos" / sample.name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"{page.name} block {number}", "exec")
        exec(code, namespace)  # a failing block names its page and number in the traceback
