"""Shared bits of the benchmark scripts: machine, provenance and the results file.

Every results JSON is written by :func:`write_result` and nothing else. It records where its
numbers come from (``provenance``: the full commit, whether the tree was dirty, the exact
command, torch threads, the load average at start and end, the dates). Into
``benchmarks/results/`` it writes only from a clean tree at the commit the script started
from; a script that imports this module checks that when it starts (so a dirty tree is refused
before the work, not after it) and again when it writes. Two environment variables, read here
for every script:

* ``CONVSIGHT_BENCH_ALLOW_DIRTY=1``: write into benchmarks/results/ from a dirty tree anyway;
  the JSON then says ``"dirty": true`` and ``"allowed_dirty": true``.
* ``CONVSIGHT_BENCH_RESULTS=DIR``: a trial run, results into DIR (read from there too, for
  ``--merge``), no clean-tree check; the JSON still records the tree's state.

Untracked or changed files under benchmarks/results/ do not make the tree dirty: they are the
outputs (one script of ``make bench`` writes its JSON before the next one starts).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
RESULTS_PREFIX = "benchmarks/results/"  # as git status names paths, from the repository root
ALLOW_DIRTY_ENV = "CONVSIGHT_BENCH_ALLOW_DIRTY"
RESULTS_ENV = "CONVSIGHT_BENCH_RESULTS"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# When the script started (it imports this module first): date, load, and (for a benchmark
# script run as a program) the commit it started from.
STARTED: dict[str, Any] = {"date": _now(), "loadavg": list(os.getloadavg()), "commit": None}


def git(*args: str) -> str | None:
    """stdout of ``git args`` in the repository; None when git fails or is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def tree_state() -> dict[str, Any]:
    """The commit (full hash, None outside a git checkout) and the changed paths, as
    ``git status --porcelain`` lists them, less those under benchmarks/results/."""
    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain=v1", "-z")
    entries = (status or "").split("\0")
    changed: list[str] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        paths = [path]
        if "R" in code or "C" in code:  # -z: a rename's source follows as its own entry
            paths.append(entries[i])
            i += 1
        if not all(p.startswith(RESULTS_PREFIX) for p in paths):
            changed.append(path)
    commit = head.strip() if head else None
    if commit is None or status is None:
        changed.insert(0, "(not a git checkout: the commit cannot be told)")
    return {"commit": commit, "changed": changed}


def allow_dirty() -> bool:
    return os.environ.get(ALLOW_DIRTY_ENV, "").strip().lower() in ("1", "true", "yes")


def results_dir() -> Path:
    """benchmarks/results/, or $CONVSIGHT_BENCH_RESULTS for a trial run."""
    env = os.environ.get(RESULTS_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else RESULTS


def _problem(state: dict[str, Any]) -> str | None:
    """Why numbers from this tree would not be reproducible from its commit (None: clean)."""
    if state["changed"]:
        more = f" and {len(state['changed']) - 3} more" if len(state["changed"]) > 3 else ""
        return f"the tree is dirty ({', '.join(state['changed'][:3])}{more})"
    if STARTED["commit"] and state["commit"] != STARTED["commit"]:
        return f"HEAD moved from {STARTED['commit'][:12]} to {state['commit'][:12]} during the run"
    return None


def refuse(message: str) -> None:
    """One sentence on stderr, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


HOW = (
    f"commit first, or set {ALLOW_DIRTY_ENV}=1 to record the result as dirty, "
    f"or {RESULTS_ENV}=DIR to write a trial run elsewhere"
)


def check_clean(script: str) -> None:
    """Refuse (exit 2) to start ``script`` when its results would go into
    benchmarks/results/ from a dirty tree."""
    if results_dir() != RESULTS or allow_dirty():
        return
    problem = _problem(tree_state())
    if problem:
        refuse(f"refusing to run {script} for benchmarks/results/: {problem}; {HOW}.")


VECTOR_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import torch

    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        # the vector units matter: without avx512_bf16, bf16 is emulated; "AMD EPYC" says little
        "cpu_vector_flags": sorted(flags & VECTOR_FLAGS),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def provenance(state: dict[str, Any], trial_dir: Path | None) -> dict[str, Any]:
    """Where the numbers come from: commit, tree, command, threads, load, dates."""
    import torch

    problem = _problem(state)
    record: dict[str, Any] = {
        "commit": STARTED["commit"] or state["commit"],
        "dirty": problem is not None,
        "allowed_dirty": problem is not None and trial_dir is None and allow_dirty(),
        "command": [sys.executable, *sys.argv],
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": STARTED["loadavg"],
        "loadavg_end": list(os.getloadavg()),
        "started": STARTED["date"],
        "date": _now(),
    }
    if problem:
        record["dirty_reason"] = problem
        record["dirty_paths"] = state["changed"][:50]
    if STARTED["commit"] and state["commit"] != STARTED["commit"]:
        record["commit_at_end"] = state["commit"]
    if trial_dir is not None:
        record["trial_results_dir"] = str(trial_dir)
    return record


def earlier_provenance(path: Path) -> list[dict[str, Any]]:
    """The provenance of the runs whose rows a merging script keeps from ``path``."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    runs = list(old.get("earlier_provenance", []))
    if "provenance" in old:
        runs.append(old["provenance"])
    elif "machine" in old:  # written before provenance was recorded
        runs.append({"machine": old["machine"], "recorded": "machine only"})
    return runs


def _write(path: Path, text: str) -> None:
    """Whole file or nothing: a temporary file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``<results>/<name>.json`` with the machine and the provenance added; print where.

    Refuses (exit 2) to write into benchmarks/results/ from a dirty tree unless
    $CONVSIGHT_BENCH_ALLOW_DIRTY is set; the refused result is kept in a temporary file. A
    ``provenance`` already in ``data`` (a script that rewrites its earlier JSON) moves to
    ``earlier_provenance``.
    """
    out_dir = results_dir()
    trial_dir = None if out_dir == RESULTS else out_dir
    state = tree_state()
    data = dict(data)
    if "provenance" in data:
        data["earlier_provenance"] = [*data.get("earlier_provenance", []), data.pop("provenance")]
    payload = {**data, "machine": machine(), "provenance": provenance(state, trial_dir)}
    text = json.dumps(payload, indent=2) + "\n"
    problem = _problem(state)
    if problem and trial_dir is None and not allow_dirty():
        fd, kept = tempfile.mkstemp(prefix=f"convsight-bench-{name}-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        refuse(
            f"refusing to write benchmarks/results/{name}.json: {problem}; {HOW} "
            f"(this run's result is kept in {kept})."
        )
    path = out_dir / f"{name}.json"
    _write(path, text)
    print(f"wrote {path}")
    return path


def shared_dir() -> Path:
    """The offline data/weights folder: $CONVSIGHT_SHARED, else ../shared beside the repo."""
    env = os.environ.get("CONVSIGHT_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        raise SystemExit(f"shared folder {path} not found: set CONVSIGHT_SHARED")
    return path


def _started_as_benchmark() -> bool:
    """A script of benchmarks/ run as the program (not a test importing this module, not
    ``--help``)."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or script.parent != BENCH_DIR or script.name == "tables.py":
        return False
    if script.suffix != ".py" or not script.is_file():  # python -c / -m run from benchmarks/
        return False
    return not {"-h", "--help"} & set(sys.argv[1:])


if _started_as_benchmark():
    STARTED["commit"] = tree_state()["commit"]
    check_clean(Path(sys.argv[0]).name)
