"""The study end to end: its parts in order, each run as its inputs allow, then the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from convsight.report import prepare_out_dir
from convsight.runtime import seed_everything
from convsight.studies.paper.inputs import PaperInputs
from convsight.studies.paper.part2_mnist import MnistPart
from convsight.studies.paper.part3_channels import ChannelsPart
from convsight.studies.paper.part3_classes import ClassModelsPart
from convsight.studies.paper.part4_five_class import FiveClassPart
from convsight.studies.paper.part5_compression import CompressionPart
from convsight.studies.paper.part6_threads import ThreadsPart
from convsight.studies.paper.parts import Context, Part
from convsight.studies.paper.plan import FULL, QUICK, Plan
from convsight.studies.paper.related_work import RelatedWorkPart
from convsight.studies.paper.report import PaperRun, write_report

PARTS: tuple[Part, ...] = (
    MnistPart(),
    ChannelsPart(),
    ClassModelsPart(),
    FiveClassPart(),
    RelatedWorkPart(),
    CompressionPart(),
    ThreadsPart(),
)


def check_paper_inputs(inputs: PaperInputs | None = None, **given: Any) -> PaperInputs:
    """Check every given input before any work (see :meth:`PaperInputs.check`); return them.

    Takes a :class:`PaperInputs` or its fields by keyword (``data_dir=...``, as the flags).
    """
    inputs = PaperInputs.of(inputs, **given)
    inputs.check()
    return inputs


def remake(
    out: Path,
    inputs: PaperInputs,
    quick: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    plan: Plan | None = None,
    parts: tuple[Part, ...] = PARTS,
) -> PaperRun:
    """Run every part the inputs allow, in order; write ``out/index.html``, the figures and
    ``out/results.json``. ``plan`` overrides how much work each part does (default: ``QUICK``
    or ``FULL``)."""
    models = inputs.check()
    plan = plan or (QUICK if quick else FULL)
    out = prepare_out_dir(out)
    seed_everything(seed)
    start = time.perf_counter()
    ctx = Context(out, plan, seed, show_progress, inputs, models)
    outcomes = [part(ctx) for part in parts]
    run = PaperRun(quick, seed, plan, outcomes, time.perf_counter() - start)
    write_report(out, run)
    return run


def run_paper(
    out: Path,
    quick: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    plan: Plan | None = None,
    inputs: PaperInputs | None = None,
    **given: Any,
) -> dict[str, Any]:
    """:func:`remake` with the inputs as a :class:`PaperInputs` or by keyword (the flags'
    names); returns what ``results.json`` holds."""
    run = remake(out, PaperInputs.of(inputs, **given), quick, seed, show_progress, plan)
    return run.to_json()
