"""``studies.bench`` says how much to trust itself: the bootstrap interval on data with a known answer,
the warning logic on constructed inputs, the end-of-bench columns (no measuring here)."""

from __future__ import annotations

import math
import random

import pytest

from studies import bench


# ------------------------------------------------------------------------------ bootstrap interval
def test_constant_ratios_give_a_point_interval():
    assert bench.bootstrap_ci([2.5] * 12) == (2.5, 2.5)


def test_the_interval_is_over_paired_rounds():
    # the reference's rate swings 10x from round to round (load), the candidate's swings with it:
    # every paired ratio is exactly 3, so the interval is the point 3 although each series alone is noisy
    ref = [10.0, 100.0, 30.0, 5.0, 70.0, 20.0, 45.0]
    cand = [3 * r for r in ref]
    ratios = bench.paired_ratios(cand, ref)
    assert ratios == pytest.approx([3.0] * len(ref))
    lo, hi = bench.bootstrap_ci(ratios)
    assert lo == pytest.approx(3.0) and hi == pytest.approx(3.0)
    with pytest.raises(ValueError):
        bench.paired_ratios(cand, ref[:-1])


def test_two_rounds_exact_bootstrap_distribution():
    # resamples of [1, 3]: median 1 (p 1/4), 2 (p 1/2), 3 (p 1/4) -> the 2.5 % / 97.5 % quantiles are 1 and 3
    lo, hi = bench.bootstrap_ci([1.0, 3.0], resamples=20000)
    assert (lo, hi) == (1.0, 3.0)
    # a 40 % interval lies inside the middle mass: the point 2
    lo, hi = bench.bootstrap_ci([1.0, 3.0], level=0.4, resamples=20000)
    assert (lo, hi) == (2.0, 2.0)


def test_interval_of_the_median_matches_the_asymptotic_width():
    # ratios ~ N(2, 0.1), n = 400: the median's standard error is sqrt(pi / 2) * sigma / sqrt(n), so the
    # 95 % interval is 2 +- 1.96 * 1.2533 * 0.1 / 20 = 2 +- 0.0123 (to sampling error)
    rng = random.Random(1)
    ratios = [rng.gauss(2.0, 0.1) for _ in range(400)]
    lo, hi = bench.bootstrap_ci(ratios)
    expected = 1.96 * math.sqrt(math.pi / 2) * 0.1 / math.sqrt(400)
    assert lo < sorted(ratios)[200] < hi
    assert (hi - lo) / 2 == pytest.approx(expected, rel=0.3)
    assert abs((lo + hi) / 2 - 2.0) < 0.02


def test_bootstrap_is_reproducible_and_degenerate_cases_are_nan():
    data = [1.0, 1.2, 0.9, 1.4, 1.1, 1.05]
    assert bench.bootstrap_ci(data) == bench.bootstrap_ci(data)
    for bad in ([], [2.0], [1.0, float("nan"), 2.0]):
        lo, hi = bench.bootstrap_ci(bad)
        assert math.isnan(lo) and math.isnan(hi)


def test_rel_halfwidth():
    assert bench.rel_halfwidth(2.0, 1.8, 2.2) == pytest.approx(0.1)
    assert math.isnan(bench.rel_halfwidth(2.0, float("nan"), 2.2))


# ------------------------------------------------------------------------------ warnings
@pytest.mark.parametrize("start,end,cores,flags", [
    (0.2, 2.1, 2, []),                             # idle before; the bench's own 2 threads after
    (1.0, 2.5, 2, []),                             # exactly at both limits: not busy
    (1.01, 2.1, 2, ["busy_before"]),               # > 0.5 x cores before
    (0.2, 2.6, 2, ["busy_after"]),                 # > cores + 0.5 after
    (6.0, 6.0, 2, ["busy_before", "busy_after"]),  # a training campaign on both cores
    (7.9, 16.4, 16, []),                           # a 16-core machine
    (None, None, 2, []),                           # no load average on this OS
])
def test_machine_flags(start, end, cores, flags):
    assert bench.machine_flags(start, end, cores) == flags


@pytest.mark.parametrize("rounds,hw,flags", [
    (15, 0.05, []),
    (15, 0.10, []),
    (15, 0.11, ["wide_interval"]),
    (15, float("nan"), ["wide_interval"]),
    (3, 0.02, ["few_rounds"]),
    (1, float("nan"), ["few_rounds", "wide_interval"]),
])
def test_row_flags(rounds, hw, flags):
    assert bench.row_flags(rounds, hw) == flags


def _rates(ratio_per_round: list[float]) -> dict[str, list[float]]:
    ref = [10.0 + i for i in range(len(ratio_per_round))]
    return {"reference": ref, "fast": [r * q for r, q in zip(ref, ratio_per_round)]}


def _rows(ratios: list[float], load_start: float | None) -> list[dict]:
    env = {"device": "cpu", "cores": 2, "loadavg_start": load_start, "git_commit": "abc", "git_dirty": False}
    return bench.summarise("train_step", 8, _rates(ratios), {}, env, {})


def test_quiet_machine_and_narrow_interval_warn_nothing():
    rows = _rows([3.0, 3.05, 2.98, 3.02, 3.01, 2.99, 3.03, 3.0, 2.97], 0.1)
    warnings = bench.finish_rows(rows, 2.2, "2026-12-03T00:00:00Z")
    assert warnings == []
    fast = rows[1]
    assert fast["ratio_vs_reference"] == 3.0
    assert fast["ratio_ci_low"] <= 3.0 <= fast["ratio_ci_high"]
    assert fast["ratio_ci_rel_halfwidth"] < 0.1
    assert all(r["warnings"] == "" and r["loadavg_end"] == 2.2 and r["date"] for r in rows)
    assert rows[0]["ratio_ci_low"] == rows[0]["ratio_ci_high"] == 1.0  # the reference against itself


def test_busy_machine_warns():
    rows = _rows([3.0, 3.05, 2.98, 3.02, 3.01, 2.99, 3.03, 3.0, 2.97], 5.5)
    warnings = bench.finish_rows(rows, 6.0, "2026-12-03T00:00:00Z")
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: the machine was busy")
    assert "5.5 before, 6.0 after" in warnings[0]
    assert all(r["warnings"] == "busy_before;busy_after" for r in rows)


def test_wide_interval_warns():
    rows = _rows([2.0, 4.0, 2.5, 3.6, 2.2, 3.9, 3.0, 2.1, 4.2], 0.1)
    warnings = bench.finish_rows(rows, 2.0, "2026-12-03T00:00:00Z")
    assert rows[1]["ratio_ci_rel_halfwidth"] > 0.1
    assert rows[1]["warnings"] == "wide_interval" and rows[0]["warnings"] == ""
    assert len(warnings) == 1 and "train_step b8 fast" in warnings[0] and "wide" in warnings[0]


def test_trust_warnings_directly():
    rows = [{"case": "infer", "batch": 16, "candidate": "fast", "rounds": 3, "ratio_ci_rel_halfwidth": 0.25}]
    w = bench.trust_warnings(rows, 0.0, 0.0, 2)
    assert len(w) == 2 and all(x.startswith("WARNING: infer b16 fast") for x in w)
    assert bench.trust_warnings(rows, 3.0, 0.0, 2)[0].startswith("WARNING: the machine was busy")


@pytest.mark.parametrize("ratio", [2.6255, 3.0049, 1.2345])
def test_the_rounded_ratio_stays_inside_its_rounded_interval(ratio):
    """A ratio at an end of its interval (here every round gives it): both are rounded alike, so the CSV never
    shows a ratio outside its own interval."""
    rows = bench.summarise("train_step", 8, {"reference": [10.0] * 6, "fast": [10.0 * ratio] * 6}, {}, {}, {})
    fast = next(r for r in rows if r["candidate"] == "fast")
    assert fast["ratio_ci_low"] <= fast["ratio_vs_reference"] <= fast["ratio_ci_high"]
