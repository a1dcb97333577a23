"""The study's report: ``index.html`` (from the parts' templates), ``style.css`` and
``results.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import convsight
from convsight.report import write_json, write_text
from convsight.report.html import environment, write_page
from convsight.studies.numbers import STUDY
from convsight.studies.paper.parts import Outcome
from convsight.studies.paper.plan import Plan


@dataclass(frozen=True)
class PaperRun:
    """The study after a run: each part's outcome, in order, and how it was run."""

    quick: bool
    seed: int
    plan: Plan
    outcomes: list[Outcome]
    seconds: float

    def outcome(self, key: str) -> Outcome:
        """The outcome of the part whose ``results.json`` entry is ``key``."""
        return next(o for o in self.outcomes if o.part.key == key)

    def to_json(self) -> dict[str, Any]:
        """What ``results.json`` holds: the settings, each part's entry, the time taken in all
        and by each part."""
        settings = {"quick": self.quick, "seed": self.seed, **asdict(self.plan)}
        parts = {o.part.key: o.to_json() for o in self.outcomes}
        per_part = {o.part.key: o.seconds for o in self.outcomes}
        return {"settings": settings, **parts, "seconds": self.seconds, "part_seconds": per_part}


def write_report(out: Path, run: PaperRun) -> Path:
    """Write ``style.css``, ``index.html`` and ``results.json`` into ``out``; return the page."""
    write_text(out / "style.css", environment().get_template("style.css").render())
    page = write_page(
        out / "index.html",
        "paper.html",
        root="",
        version=convsight.__version__,
        quick=run.quick,
        seed=run.seed,
        seconds=run.seconds,
        study=STUDY,
        outcomes=run.outcomes,
    )
    write_json(out / "results.json", run.to_json())
    return page
