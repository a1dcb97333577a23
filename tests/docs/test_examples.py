"""Every example of README.md and docs/ runs.

The ```python blocks of a page run in order, in one namespace, in a folder that holds a
``photo.jpg`` and a ``photos/`` folder of real photos. The ```bash (sh, shell, console) blocks
run their ``convsight ...`` lines through the command line in-process, in the same folder and
order, environment variables substituted; a shell block that does not run says why on the line
right above it, and its ``convsight`` lines are still checked against the command line's
options. Markers (HTML comments, on the line above a block):

- ``<!-- not run: REASON -->``: a shell block that is not run (a Python block always runs);
- ``<!-- run smaller: --steps 2 --size 64 -->``: each command of the block gets these options
  where it has them under that name, not as an alias (the last value of an option wins), for a
  page that shows full sizes;
- ``<!-- save as: net.py -->``: a Python block also written to that file, for examples that
  import it;
- ``<!-- same as: docs/commands/atlas.md, docs/commands/projections.md -->``: a shell block (of
  the README) whose every command is, word for word, in a shell block of those pages, where it
  runs or says why not.

``python tests/docs/test_examples.py`` prints how many examples each page runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_HERE = [page for page in PAGES if page.parent != ROOT / "docs" / "tutorials"]
"""The pages whose examples run here: the tutorials run as notebooks (test_tutorials.py)."""
SHELL = {"bash", "sh", "shell", "console"}
MARKERS = ("not run", "run smaller", "save as", "same as")
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"^<!--\s*([a-z ]+?)\s*:\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Example:
    """One fenced code block of a page, with the marker on the line above it."""

    page: Path
    line: int
    language: str
    code: str
    marker: str = ""
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)} line {self.line}"

    @property
    def shell(self) -> bool:
        return self.language in SHELL

    @property
    def runs(self) -> bool:
        """Runs on its own page (a ``same as`` block runs on the pages it names)."""
        return self.language == "python" or (
            self.shell and self.marker not in ("not run", "same as")
        )


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT).with_suffix(""))


def examples(page: Path) -> list[Example]:
    """The fenced code blocks of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        above = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        marker = _MARKER.match(above)
        line = text.count("\n", 0, match.start()) + 1
        kind, note = marker.groups() if marker else ("", "")
        found.append(Example(page, line, match.group(1), match.group(2), kind, note))
    return found


def command_lines(example: Example, expand: bool = False) -> list[list[str]]:
    """The commands of a shell block as the shell splits them: continuations joined, comments
    dropped (``console`` blocks: only the ``$ `` lines), variables substituted if ``expand``."""
    lines = []
    for line in example.code.replace("\\\n", " ").splitlines():
        if example.language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(os.path.expandvars(line) if expand else line, comments=True)
        if words:
            lines.append(words)
    return lines


def problems(example: Example) -> list[str]:
    """Why ``example`` is neither run nor marked not run as it should be (empty: it is fine)."""
    if example.marker and example.marker not in MARKERS:
        return [f"unknown marker '{example.marker}' (known: {', '.join(MARKERS)})"]
    if example.marker == "save as" and example.language != "python":
        return ["'save as' marks a python block"]
    if not example.shell:
        return []
    if example.marker == "not run":
        return [] if example.note else ["'not run' without a reason"]
    if example.marker == "same as":
        return elsewhere(example)
    lines = command_lines(example)
    if not lines:
        return ["a shell block with no command: mark it <!-- not run: REASON -->"]
    return [
        f"'{' '.join(words)}' is not a convsight command: mark the block "
        "<!-- not run: REASON --> or run only convsight lines in it"
        for words in lines
        if words[0] != "convsight"
    ]


def elsewhere(example: Example) -> list[str]:
    """The commands of a ``same as`` block that no shell block of the pages it names has."""
    pages = [ROOT / name.strip() for name in example.note.split(",") if name.strip()]
    if not pages or not all(page.is_file() for page in pages):
        return [f"'same as' names no page, or one that does not exist: {example.note}"]
    there = {
        shlex.join(words)
        for page in pages
        for other in examples(page)
        if other.shell and other.marker != "same as"
        for words in command_lines(other)
    }
    return [
        f"'{shlex.join(words)}' is in no shell block of {example.note}"
        for words in command_lines(example)
        if shlex.join(words) not in there
    ]


def counts() -> dict[str, dict[str, int]]:
    """Per page: Python blocks run, shell blocks run there, shell blocks whose commands run on
    the pages they name (``same as``), shell blocks marked not run."""
    table = {}
    for page in PAGES:
        found = examples(page)
        table[page_id(page)] = {
            "python": sum(e.language == "python" for e in found),
            "shell run": sum(e.shell and e.runs for e in found),
            "shell same as": sum(e.shell and e.marker == "same as" for e in found),
            "shell not run": sum(e.shell and e.marker == "not run" for e in found),
        }
    return table


def test_fences_start_at_the_margin():
    """An indented fence would not be collected (and so not run)."""
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not re.match(r"^[ \t]+```", line), f"{page.name}:{number}: indented fence"


def test_every_shell_block_runs_or_says_why_not():
    found = [f"{e.name}: {p}" for page in PAGES for e in examples(page) for p in problems(e)]
    assert not found, "\n".join(found)


def test_the_docs_have_examples():
    table = counts()
    assert sum(row["python"] for row in table.values()) >= 20
    assert sum(row["shell run"] for row in table.values()) >= 10
    assert all(sum(row.values()) for name, row in table.items() if name.startswith("docs/command"))


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    assert re.search(r"!\[[^\]]*\]\(docs/img/[^)]+\.png\)", first_screen)
    assert "make demo" in first_screen and "make test" in first_screen


def command_of(words: list[str]):
    """The CLI command that convsight's ``words`` (after ``convsight``) call, or None."""
    import typer.main

    from convsight.cli import app

    target = typer.main.get_command(app)
    for word in words:  # down the command groups (convsight train mnist ...)
        if not hasattr(target, "commands"):
            break
        target = target.commands.get(word)
        if target is None:
            return None
    return target


def unknown_options(words: list[str]) -> list[str]:
    """What in ``convsight WORDS`` the command line does not know: the command, or options."""
    target = command_of(words[1:])
    if target is None or hasattr(target, "commands"):
        return [f"no command '{shlex.join(words[:3])}'"]
    known = {o for p in target.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
    flags = [w.split("=", 1)[0] for w in words[1:] if w.startswith("--")]
    return [
        f"'{shlex.join(words[:2])}' has no option {flag}" for flag in flags if flag not in known
    ]


def test_every_convsight_line_names_a_command_and_its_options():
    """Shell blocks that do not run are still checked against the command line's options."""
    found = [
        f"{e.name}: {problem}"
        for page in PAGES
        for e in examples(page)
        if e.shell
        for words in command_lines(e)
        if words[0] == "convsight"
        for problem in unknown_options(words)
    ]
    assert not found, "\n".join(found)


def smaller(command: list[str], note: str) -> list[str]:
    """The options of ``note`` that ``command`` (convsight's words after ``convsight``) has."""
    target = command_of(command)
    known = {p.opts[0] for p in target.params}  # not aliases: layers' --channels is a card flag
    words, extra = shlex.split(note), []
    for i, word in enumerate(words):
        if word.startswith("--") and word in known:
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            extra += [word, words[i + 1]] if has_value else [word]
    return extra


def run_shell(example: Example) -> None:
    from typer.testing import CliRunner

    from convsight.cli import app

    for words in command_lines(example, expand=True):
        args = words[1:]
        if example.marker == "run smaller":
            args += smaller(args, example.note)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (
            f"{example.name}: convsight {shlex.join(args)} exited {result.exit_code}:\n"
            f"{result.output}\n{result.exception!r}"
        )


@pytest.fixture
def example_folder(shared, tmp_path, monkeypatch):
    """A fresh folder with ``photo.jpg`` and ``photos/``, the shared folder in the environment,
    and modules imported from the folder forgotten afterwards."""
    samples = sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))
    shutil.copy(samples[0], tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for sample in samples[1:4]:
        shutil.copy(sample, tmp_path / "photos" / sample.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONVSIGHT_SHARED", str(shared))
    monkeypatch.setenv("CONVSIGHT_DATA", str(shared / "data"))
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("page", RUN_HERE, ids=[page_id(page) for page in RUN_HERE])
def test_every_example_of_the_page_runs(page, example_folder):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for example in examples(page):
        if example.language == "python":
            if example.marker == "save as":
                (example_folder / example.note).write_text(example.code, encoding="utf-8")
            code = compile(example.code, example.name, "exec")
            exec(code, namespace)  # a failing block names its page and line in the traceback
        elif example.shell and example.runs:
            run_shell(example)


def count_table() -> str:
    """:func:`counts` as a text table, with totals."""
    rows = counts()
    rows["total"] = {key: sum(row[key] for row in rows.values()) for key in rows["README"]}
    width = max(len(name) for name in rows)
    lines = [f"{'page':<{width}}  python  shell run  shell same as  shell not run"]
    for name, row in rows.items():
        python, run, same, not_run = (row[key] for key in row)
        lines.append(f"{name:<{width}}  {python:>6}  {run:>9}  {same:>13}  {not_run:>13}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(count_table())
