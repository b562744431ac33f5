"""Workers x threads from a measured rule: studies.placement and ``studies.run --workers auto``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from studies.placement import LAYOUT_CSV, Layout, choose_layout, layouts_for, measure_layouts, read_layout_rows

ONE, TWO = Layout(1, 2), Layout(2, 1)


def test_layouts_fill_the_cores_reference_first():
    assert layouts_for(2) == [ONE, TWO]
    assert layouts_for(4) == [Layout(1, 4), Layout(2, 2), Layout(4, 1)]
    assert layouts_for(1) == [Layout(1, 1)]


def test_the_rule_minimises_the_estimated_suite_time():
    # big model: one process with both threads is faster; tiny model: two one-thread processes are
    rows = {2: {"egeunet": {ONE: 50.0, TWO: 90.0}, "unet32": {ONE: 3.0, TWO: 2.0}}}
    assert choose_layout(["egeunet"] * 4, 2, rows=rows).layout == TWO
    assert choose_layout(["unet32"] * 2, 2, rows=rows).layout == ONE
    # 4 x 1/90 + 1/2 = 0.544 against 4 x 1/50 + 1/3 = 0.413: the unet32 run dominates
    assert choose_layout(["egeunet"] * 4 + ["unet32"], 2, rows=rows).layout == ONE
    # 30 egeunet runs: 30/90 + 1/2 = 0.83 < 30/50 + 1/3 = 0.93
    c = choose_layout(["egeunet"] * 30 + ["unet32"], 2, rows=rows)
    assert c.layout == TWO
    assert f"{(30 / 50 + 1 / 3) / (30 / 90 + 1 / 2):.2f}x" in c.reason


def test_a_variant_borrows_its_family_measurement():
    rows = {2: {"egeunet": {ONE: 50.0, TWO: 90.0}, "unext_s": {ONE: 90.0, TWO: 60.0}}}
    c = choose_layout(["egeunet_no_xy", "egeunet_ghpa_g8"], 2, rows=rows)
    assert c.layout == TWO and "egeunet" in c.reason and "unext_s" not in c.reason


@pytest.mark.parametrize("models, cores, why", [
    (["egeunet"], 2, "one run"),
    (["egeunet", "egeunet"], 3, "no layout measured for 3 cores"),
    (["unet32", "unet32"], 2, "none of the suite's models"),
])
def test_without_a_measurement_one_worker_takes_every_core(models, cores, why):
    rows = {2: {"egeunet": {ONE: 50.0, TWO: 90.0}}}
    c = choose_layout(models, cores, rows=rows)
    assert c.layout == Layout(1, cores) and why in c.reason


def test_malformed_and_missing_csvs_say_nothing(tmp_path):
    assert read_layout_rows(tmp_path / "absent.csv") == {}
    bad = tmp_path / "bad.csv"
    bad.write_text("case,model,layout,img_per_s,cores\nlayout,egeunet,2x1,nan,2\nlayout,egeunet,zz,5,2\n"
                   "layout,egeunet,2x1,80.5,2\npath,egeunet,1x2,10,2\n")
    assert read_layout_rows(bad) == {2: {"egeunet": {TWO: 80.5}}}


def test_the_committed_measurement_decides_each_model():
    """For every model in results/bench/layout_cpu.csv, the rule picks the layout the bench measured fastest."""
    table = read_layout_rows(LAYOUT_CSV)
    assert table, f"{LAYOUT_CSV} holds no layout rows: python -m studies.bench --cases layout"
    for cores, models in table.items():
        for model, rates in models.items():
            fastest = max(rates, key=rates.get)
            assert choose_layout([model, model], cores, rows=table).layout == fastest, model


def test_measuring_two_layouts_for_real():
    rates = measure_layouts("egeunet", 2, rounds=2, size=32, unit_seconds=0.2)
    assert set(rates) == {ONE, TWO}
    assert all(len(v) == 2 and all(math.isfinite(r) and r > 0 for r in v) for v in rates.values())


# ---------------------------------------------------------------------------------- the runner
def _plan(tmp_path: Path, models: list[str], budget: str = "cpu"):
    from studies.run import _Plan
    from studies.suites import RunSpec, get_suite

    specs = [RunSpec(suite="ablation_ghpa", variant=m, model=m, dataset="isic2018", seed=i, budget=budget,
                     protocol="clean")
             for i, m in enumerate(models)]
    return _Plan(suite=get_suite("ablation_ghpa"), budget=budget, results=str(tmp_path), datasets=["isic2018"],
                 data_root=None, missing_data=[], specs=specs, configs=[None] * len(specs),
                 hashes=[f"{i:012x}" for i in range(len(specs))])


def _args(**kw) -> argparse.Namespace:
    base = dict(workers="auto", executor="local", device="cpu", pack=1, threads=2)
    return argparse.Namespace(**{**base, **kw})


def test_auto_workers_follow_the_rule(tmp_path):
    from studies.run import _resolve_workers

    models = ["egeunet"] * 3
    args = _args()
    note = _resolve_workers(args, _plan(tmp_path, models))
    assert args.workers == choose_layout(models, 2).layout.workers
    assert note.startswith(f"auto, {args.workers} x {2 // args.workers} thread(s)")


@pytest.mark.parametrize("kw, budget", [({}, "smoke"), ({"device": "cuda"}, "cpu"), ({"pack": 2}, "cpu"),
                                        ({"executor": "ray"}, "cpu"), ({"threads": 3}, "cpu")])
def test_auto_is_one_worker_where_nothing_measured_applies(tmp_path, kw, budget):
    from studies.run import _resolve_workers

    args = _args(**kw)
    _resolve_workers(args, _plan(tmp_path, ["egeunet"] * 3, budget))
    assert args.workers == 1


def test_a_number_is_kept_and_a_word_is_refused(tmp_path):
    import subprocess
    import sys

    from studies.run import _resolve_workers

    args = _args(workers=2)
    assert _resolve_workers(args, _plan(tmp_path, ["egeunet"] * 3)) is None and args.workers == 2
    p = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--workers", "many",
                        "--results", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--workers must be a number or auto, got 'many'" in p.stderr
