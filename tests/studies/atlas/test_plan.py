"""The atlas plan's estimate beside what the run actually spent (atlas.json's ``plan`` and
``actual``), and benchmarks/atlas.py copying both into its result (tables.py's input)."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from convsight.studies.atlas import AtlasRequest, build_atlas
from convsight.studies.atlas.plan import actual, layer_actual

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
LAYERS = ["features.0", "features.3"]


def bench_module(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"convsight_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_atlas(model, out, layers=LAYERS, **options):
    """Three channels of each of ``layers``, two steps, in chunks of two; atlas.json's data."""
    request = AtlasRequest(
        layers, out, channels="0-2", presets=["paper"], steps=2, batch=2, show_progress=False,
        **options,
    )  # fmt: skip
    result = build_atlas(model, request)
    summary = json.loads((out / "atlas.json").read_text())
    assert summary == json.loads(json.dumps(result.to_json()))
    return result, summary


def test_actual_rows_and_ratios_from_a_plan():
    plan = {
        "layers": [{"layer": "a", "seconds_per_channel": 2.0}],
        "render_seconds_one_worker": 8.0,
    }
    rows = [layer_actual("a", 4, 10.0, 11.0), layer_actual("b", 0, 0.0, 0.5)]
    found = actual(rows, plan)
    a, b = found["layers"]
    assert a["seconds_per_channel"] == 2.5 and a["ratio"] == 1.25
    assert a["estimated_seconds_per_channel"] == 2.0
    assert b["seconds_per_channel"] is None and b["ratio"] is None
    assert b["estimated_seconds_per_channel"] is None  # not in the plan: nothing to do
    assert found["rendered"] == 4 and found["wall_seconds"] == 11.5
    assert found["render_seconds_one_worker"] == 10.0 and found["ratio"] == 1.25
    assert found["estimated_render_seconds_one_worker"] == 8.0
    alone = actual(rows, None)
    assert alone["ratio"] is None and alone["estimated_render_seconds_one_worker"] is None
    assert alone["layers"][0]["ratio"] is None and alone["layers"][0]["seconds_per_channel"] == 2.5


@pytest.mark.slow
def test_atlas_json_records_the_plan_and_the_actual(tiny, tmp_path):
    out = tmp_path / "atlas"
    result, summary = small_atlas(tiny, out, plan=True)
    plan, spent = summary["plan"], summary["actual"]
    assert [r["layer"] for r in plan["layers"]] == LAYERS
    assert [r["layer"] for r in spent["layers"]] == LAYERS
    for estimate, row in zip(plan["layers"], spent["layers"], strict=True):
        assert row["rendered"] == estimate["to_render"] == 3
        assert 0 < row["render_seconds"] <= row["wall_seconds"]  # renders inside the wall
        assert row["seconds_per_channel"] == pytest.approx(row["render_seconds"] / 3)
        assert row["estimated_seconds_per_channel"] == estimate["seconds_per_channel"] > 0
        assert row["ratio"] == pytest.approx(
            row["seconds_per_channel"] / estimate["seconds_per_channel"]
        )
    assert spent["rendered"] == summary["rendered_this_run"] == 6
    total = sum(r["render_seconds"] for r in spent["layers"])
    assert spent["render_seconds_one_worker"] == pytest.approx(total)
    assert spent["ratio"] == pytest.approx(total / plan["render_seconds_one_worker"])
    assert spent["wall_seconds"] <= summary["seconds_this_run"]
    facts = dict(result.facts())
    assert "on one worker, estimated" in facts["render seconds"]

    _, again = small_atlas(tiny, out, plan=True)  # resumed: nothing left to do
    assert again["plan"]["layers"] == [] and again["rendered_this_run"] == 0
    assert [r["rendered"] for r in again["actual"]["layers"]] == [0, 0]
    assert all(r["render_seconds"] == 0 and r["ratio"] is None for r in again["actual"]["layers"])
    assert again["actual"]["rendered"] == 0 and again["actual"]["ratio"] is None


@pytest.mark.slow
def test_without_a_plan_the_actual_is_recorded_alone(tiny, tmp_path):
    result, summary = small_atlas(tiny, tmp_path / "atlas", layers=["features.0"])
    assert summary["plan"] is None
    (row,) = summary["actual"]["layers"]
    assert row["rendered"] == 3 and row["render_seconds"] > 0
    assert row["estimated_seconds_per_channel"] is None and row["ratio"] is None
    assert "estimated" not in dict(result.facts())["render seconds"]


@pytest.mark.slow
def test_benchmark_copies_the_estimate_and_the_actual_for_the_tables(tiny, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # atlas.py imports common by name
    bench, tables = bench_module("atlas"), bench_module("tables")
    out, rows = tmp_path / "atlas", []
    for i, layer in enumerate(LAYERS):  # as the benchmark does: a layer at a time, resumed
        _, summary = small_atlas(tiny, out, layers=LAYERS[: i + 1], plan=True)
        rows.append(bench.layer_row(summary, layer, 5.0))
        spent = next(r for r in summary["actual"]["layers"] if r["layer"] == layer)
        assert rows[-1]["render_seconds"] == spent["render_seconds"] > 0
        assert (
            rows[-1]["estimated_seconds_per_channel"]
            == summary["plan"]["layers"][0]["seconds_per_channel"]
        )
        assert rows[-1]["channels"] == 3 and rows[-1]["seconds_per_channel"] == 5.0 / 3
        assert rows[-1]["ratio"] == spent["ratio"] > 0
    totals = bench.plan_totals(rows, summary)
    estimated = sum(3 * r["estimated_seconds_per_channel"] for r in rows)
    assert totals["estimated_render_seconds"] == pytest.approx(estimated)
    assert totals["render_seconds"] == pytest.approx(sum(r["render_seconds"] for r in rows))
    assert totals["render_ratio"] == pytest.approx(totals["render_seconds"] / estimated)
    assert totals["probe_steps"] == 2

    results = tmp_path / "results"
    results.mkdir()
    data = {"per_layer": rows, "channels": 6, "steps": 2, "size": 32, **totals}
    (results / "atlas.json").write_text(json.dumps(data))
    table = tables.atlas_plan_table(results)
    assert table[2].startswith("| `features.0` | 3 |") and table[2].endswith("x |")
    assert f"| {totals['render_ratio']:.2f}x |" in table[4]
    assert "took" in tables.atlas_plan_line(results)[0]
