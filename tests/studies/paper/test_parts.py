"""The paper's parts protocol, number table and report, without running the study's jobs."""

import json
import re
import time
from pathlib import Path

import pytest

import convsight
from convsight.report.html import environment
from convsight.studies.paper import (
    PARTS,
    QUICK,
    STUDY,
    Outcome,
    PaperInputs,
    PaperRun,
    Skip,
    StudyNumbers,
    remake,
)
from convsight.studies.paper.part2_mnist import MnistPart, MnistResult
from convsight.studies.paper.part4_five_class import FiveClassPart
from convsight.studies.paper.related_work import RelatedWorkPart
from convsight.studies.paper.report import write_report

SRC = Path(convsight.__file__).parent


def _section(page: str, section: str) -> str:
    return re.search(rf'<section id="{section}">(.*?)</section>', page, re.S).group(1)


def test_a_part_without_its_inputs_skips_with_its_reason_in_the_report(tmp_path):
    out = tmp_path / "paper"
    run = remake(out, PaperInputs(), parts=(FiveClassPart(), RelatedWorkPart()), plan=QUICK)
    reasons = {o.part.key: o.skipped for o in run.outcomes}
    assert reasons == {
        "five_class": "no --subset and no --fashion-mnist folder given",
        "attribution": "no --photos folder given",
    }
    page = (out / "index.html").read_text()
    assert "Skipped: no --subset and no --fashion-mnist folder given" in _section(page, "part4")
    assert "Skipped: no --photos folder given" in _section(page, "related")
    assert "<td>attribution</td><td>–</td><td>skipped</td><td>no --photos folder given" in page
    saved = json.loads((out / "results.json").read_text())
    assert saved["five_class"] == {"skipped": "no --subset and no --fashion-mnist folder given"}
    assert not (out / "part4").exists()


class _NoDigits(MnistPart):
    def run(self, ctx):
        raise Skip("the MNIST files in /nowhere cannot be read")


def test_a_part_that_cannot_run_skips_with_the_reason_it_gives(tmp_path):
    out = tmp_path / "paper"
    run = remake(out, PaperInputs(), parts=(_NoDigits(),), plan=QUICK)
    assert run.outcome("mnist").result is None
    page = (out / "index.html").read_text()
    assert "Skipped: the MNIST files in /nowhere cannot be read" in _section(page, "part2")
    assert json.loads((out / "results.json").read_text())["mnist"] == {
        "skipped": "the MNIST files in /nowhere cannot be read"
    }


def _mnist_run(accuracy: float) -> PaperRun:
    result = MnistResult(
        test_accuracy=accuracy,
        history=[],
        settings={"epochs": 3, "seed": 0},
        seconds=1.0,
        curves="part2/mnist/training_curves.png",
        feature_maps={"features.0": "part2/activations/features.0.png"},
    )
    return PaperRun(True, 0, QUICK, [Outcome(MnistPart(), result)], seconds=2.0)


class _SlowDigits(MnistPart):
    def run(self, ctx):
        time.sleep(0.2)
        return _mnist_run(0.9856).outcomes[0].result


def test_each_part_s_wall_time_is_in_the_results_and_under_its_section(tmp_path):
    out = tmp_path / "paper"
    run = remake(out, PaperInputs(), parts=(_SlowDigits(), FiveClassPart()), plan=QUICK)
    slow, skipped = (o.seconds for o in run.outcomes)
    assert 0.2 <= slow < run.seconds and skipped < 0.2
    saved = json.loads((out / "results.json").read_text())
    assert saved["part_seconds"] == {"mnist": slow, "five_class": skipped}
    page = (out / "index.html").read_text()
    assert f"This part took {slow:.0f} s." in _section(page, "part2")
    assert "This part took" not in _section(page, "part4")


def test_the_report_and_results_read_the_study_numbers_from_the_table(tmp_path, monkeypatch):
    write_report(tmp_path, _mnist_run(0.9856))
    page = (tmp_path / "index.html").read_text()
    row = "<tr><td>MNIST CNN test accuracy</td><td>0.982</td><td>0.9856</td>"
    assert row in page and "the study reports 0.982." in _section(page, "part2")
    assert json.loads((tmp_path / "results.json").read_text())["mnist"]["study"] == 0.982

    other = StudyNumbers(0.5, 0.6, 0.7, 0.8)
    monkeypatch.setattr("convsight.studies.paper.report.STUDY", other)
    monkeypatch.setattr("convsight.studies.paper.part2_mnist.STUDY", other)
    write_report(tmp_path, _mnist_run(0.9856))
    page = (tmp_path / "index.html").read_text()
    assert "<td>0.5</td><td>0.9856</td>" in page and "0.982" not in page
    assert json.loads((tmp_path / "results.json").read_text())["mnist"]["study"] == 0.5


def test_the_study_numbers_are_written_in_one_table_only():
    numbers = [
        STUDY.mnist_test_accuracy,
        STUDY.five_class_train_accuracy,
        STUDY.five_class_test_accuracy,
        STUDY.vgg16_five_class_test_accuracy,
    ]
    pattern = re.compile("|".join(rf"(?<![\d.]){re.escape(str(n))}(?!\d)" for n in numbers))
    files = [*SRC.rglob("*.py"), *(SRC / "report" / "templates").iterdir()]
    spelled = {str(f.relative_to(SRC)) for f in files if pattern.search(f.read_text())}
    assert spelled == {"studies/numbers.py"}  # every other file reads STUDY


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.key)
def test_every_part_has_a_template_with_its_title_rows_and_body(part):
    module = environment().get_template(part.template).module
    assert module.title and callable(module.rows) and callable(module.body)


def test_inputs_by_keyword_or_as_one_dataclass():
    assert PaperInputs.of(photos="p") == PaperInputs(photos="p")
    given = PaperInputs(subset="s")
    assert PaperInputs.of(given) is given
    with pytest.raises(TypeError):
        PaperInputs.of(given, photos="p")
    with pytest.raises(TypeError):
        PaperInputs.of(photo="p")
