"""Benchmark numbers anyone can reproduce: the tables of docs/benchmarks.md are what
benchmarks/tables.py makes of benchmarks/results/*.json, and benchmarks/common.write_result
records where a result comes from and refuses a dirty tree. No benchmark runs here."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def bench_module(name: str) -> ModuleType:
    """benchmarks/<name>.py as a fresh module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"convsight_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_are_generated_from_the_results_json() -> None:
    tables = bench_module("tables")
    changed = tables.check()
    assert changed == [], (
        f"docs/benchmarks.md tables {changed} differ from benchmarks/results/*.json: "
        "run python benchmarks/tables.py"
    )


def test_check_names_the_table_that_differs_and_a_rewrite_fixes_it(tmp_path, capsys) -> None:
    tables = bench_module("tables")
    page = tmp_path / "benchmarks.md"
    text = PAGE.read_text()
    start = text.index("<!-- table:mnist -->")
    end = text.index("<!-- /table:mnist -->")
    block = text[start:end]
    seconds = re.search(r"\| (\d+) s \|", block)  # the first row's train time
    assert seconds, block
    edited = block.replace(seconds.group(0), f"| {int(seconds.group(1)) + 1} s |", 1)
    page.write_text(text[:start] + edited + text[end:])

    assert tables.main(["--check", "--page", str(page)]) == 1
    assert "'mnist'" in capsys.readouterr().err
    assert tables.main(["--page", str(page)]) == 0
    assert page.read_text() == text
    assert tables.main(["--check", "--page", str(page)]) == 0


def test_a_missing_marker_is_named(tmp_path, capsys) -> None:
    tables = bench_module("tables")
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE.read_text().replace("<!-- /table:atlas -->", ""))
    assert tables.main(["--check", "--page", str(page)]) == 1
    assert "table:atlas" in capsys.readouterr().err


@pytest.fixture
def common(monkeypatch, tmp_path) -> ModuleType:
    """benchmarks/common.py writing into a temporary results folder, with git answering for a
    tree that has one changed source file (and result files, which do not count)."""
    module = bench_module("common")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.delenv(module.ALLOW_DIRTY_ENV, raising=False)
    monkeypatch.delenv(module.RESULTS_ENV, raising=False)
    status = " M src/convsight/optvis/render.py\0?? benchmarks/results/new.json\0"
    module.fake_status = status

    def git(*args: str) -> str | None:
        if args[:2] == ("rev-parse", "HEAD"):
            return COMMIT + "\n"
        if args[0] == "status":
            return module.fake_status
        raise AssertionError(f"unexpected git call {args}")

    monkeypatch.setattr(module, "git", git)
    return module


def test_write_result_refuses_a_dirty_tree(common, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        common.write_result("demo", {"rows": [1, 2]})
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert "dirty" in message and "src/convsight/optvis/render.py" in message
    assert "benchmarks/results/new.json" not in message
    assert common.ALLOW_DIRTY_ENV in message
    assert not (common.RESULTS / "demo.json").exists()
    kept = Path(re.search(r"kept in (\S+?)\)", message).group(1))
    try:
        assert json.loads(kept.read_text())["rows"] == [1, 2]
    finally:
        kept.unlink()


def test_allowed_dirty_result_records_its_provenance(common, monkeypatch) -> None:
    monkeypatch.setenv(common.ALLOW_DIRTY_ENV, "1")
    path = common.write_result("demo", {"rows": [1]})
    assert path == common.RESULTS / "demo.json"
    data = json.loads(path.read_text())
    prov = data["provenance"]
    assert prov["commit"] == COMMIT
    assert prov["dirty"] is True and prov["allowed_dirty"] is True
    assert prov["dirty_paths"] == ["src/convsight/optvis/render.py"]
    assert prov["command"] == [sys.executable, *sys.argv]
    assert isinstance(prov["torch_threads"], int) and prov["torch_threads"] >= 1
    assert len(prov["loadavg_start"]) == 3 and len(prov["loadavg_end"]) == 3
    assert re.match(r"\d{4}-\d\d-\d\dT", prov["date"]) and prov["started"] <= prov["date"]
    assert data["rows"] == [1] and "cpu" in data["machine"]


def test_clean_tree_writes_and_result_files_do_not_count(common) -> None:
    common.fake_status = "?? benchmarks/results/new.json\0 M benchmarks/results/render.json\0"
    first = json.loads(common.write_result("demo", {"rows": [1]}).read_text())
    assert first["provenance"]["dirty"] is False
    assert first["provenance"]["allowed_dirty"] is False
    # a script that rewrites its own JSON (render.py --flops-only) keeps the earlier provenance
    again = json.loads(common.write_result("demo", {**first, "extra": 1}).read_text())
    assert again["earlier_provenance"] == [first["provenance"]]


def test_head_moving_during_the_run_is_refused(common, monkeypatch, capsys) -> None:
    common.fake_status = ""
    monkeypatch.setitem(common.STARTED, "commit", "f" * 40)
    with pytest.raises(SystemExit) as exc:
        common.write_result("demo", {})
    assert exc.value.code == 2
    message = capsys.readouterr().err
    assert "HEAD moved" in message
    Path(re.search(r"kept in (\S+?)\)", message).group(1)).unlink()


def test_trial_results_folder_skips_the_check(common, monkeypatch, tmp_path) -> None:
    trial = tmp_path / "trial"
    monkeypatch.setenv(common.RESULTS_ENV, str(trial))
    data = json.loads(common.write_result("demo", {}).read_text())
    assert (trial / "demo.json").is_file() and not (common.RESULTS / "demo.json").exists()
    assert data["provenance"]["dirty"] is True and data["provenance"]["allowed_dirty"] is False
    assert data["provenance"]["trial_results_dir"] == str(trial.resolve())


def test_lucent_style_baseline_takes_nothing_from_a_preset(monkeypatch) -> None:
    from convsight.optvis.settings import RenderSettings, settings_for

    monkeypatch.syspath_prepend(str(BENCH))  # classviz_quality.py imports common by name
    quality = bench_module("classviz_quality")
    kwargs = quality.lucent_style()
    settings = settings_for(target="class", steps=128, size=160, **kwargs)
    assert settings == RenderSettings(steps=128, size=160, **kwargs)
    assert settings.skip_gradient == 1.0 and settings.class_objective == "logit"
    assert quality.LUCENT_STYLE_NAME == "lucent-style adam 0.1"


def test_atlas_plan_table_and_readme_line_from_the_estimate_and_the_actual(tmp_path) -> None:
    tables = bench_module("tables")
    old = json.loads((BENCH / "results" / "atlas.json").read_text())
    for key in ("estimated_seconds_per_channel", "render_seconds_per_channel", "ratio"):
        old["per_layer"][0].pop(key, None)
    old.pop("estimated_render_seconds", None)
    (tmp_path / "atlas.json").write_text(json.dumps(old))
    assert tables.atlas_plan_table(tmp_path)[0] == tables.PLAN_PENDING  # an older result
    assert tables.atlas_plan_line(tmp_path)[0] == tables.PLAN_PENDING
    rows = [
        {"layer": "features.0", "channels": 64, "estimated_seconds_per_channel": 1.0,
         "render_seconds_per_channel": 0.9, "ratio": 0.9},
        {"layer": "features.2", "channels": 64, "estimated_seconds_per_channel": 2.5,
         "render_seconds_per_channel": 3.0, "ratio": 1.2},
    ]  # fmt: skip
    totals = {"estimated_render_seconds": 224.0, "render_seconds": 249.6, "render_ratio": 1.114}
    data = {"per_layer": rows, "channels": 128, "steps": 128, "size": 128, **totals}
    (tmp_path / "atlas.json").write_text(json.dumps(data))
    table = tables.atlas_plan_table(tmp_path)
    assert table[2:5] == [
        "| `features.0` | 64 | 1 | 0.9 | 0.90x |",
        "| `features.2` | 64 | 2.5 | 3 | 1.20x |",
        "| all 2 layers (render seconds) | 128 | 224 | 250 | 1.11x |",
    ]
    line = tables.atlas_plan_line(tmp_path)[0]
    assert "estimated 224 s" in line and "took 250 s (1.11x the estimate" in line
    assert "`features.0`-`features.2`" in line
