"""Statistics of a report table (PROTOCOL §10): mean ± sample std over seeds, tests against EGE-UNet, Holm.

* ``n >= 2`` seeds shared with the reference: paired t-test over seeds (``scipy.stats.ttest_rel``, pairs matched
  by seed) with the 95 % CI of the mean per-seed difference; a Wilcoxon signed-rank test over seeds on request,
  and only with ``n >= 6`` (below that its smallest attainable p is 2/2^n >= 0.0625).
* one seed: Wilcoxon signed-rank test over per-image DSC, pairs matched by test image id, same seed.
* p-values are Holm-corrected across the variants of one table, separately for every metric column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

MIN_WILCOXON_SEEDS = 6
ALPHA_MARKS = ((0.01, "**"), (0.05, "*"))


def aggregate(runs: pd.DataFrame, columns: list[str], order: list[str]) -> pd.DataFrame:
    """Per variant: ``<col>_mean``, ``<col>_std`` (ddof = 1, NaN for one seed), ``n`` and ``seeds``."""
    rows = []
    for variant in order:
        sub = runs[runs["variant"] == variant]
        row: dict = {"variant": variant, "n": int(len(sub)),
                     "seeds": ",".join(str(int(s)) for s in sorted(sub["seed"].dropna()))}
        for col in columns:
            vals = pd.to_numeric(sub[col], errors="coerce").dropna().to_numpy(dtype=float)
            row[f"{col}_mean"] = float(np.mean(vals)) if len(vals) else np.nan
            row[f"{col}_std"] = float(np.std(vals, ddof=1)) if len(vals) >= 2 else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries are left out and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def mark(p_adj: float) -> str:
    """Significance mark of a Holm-adjusted p-value ('' when not significant or untested)."""
    if p_adj is None or not np.isfinite(p_adj):
        return ""
    for alpha, symbol in ALPHA_MARKS:
        if p_adj < alpha:
            return symbol
    return ""


@dataclass(frozen=True)
class TestResult:
    test: str  # "paired t-test over seeds" | "Wilcoxon signed-rank over seeds" | "Wilcoxon ... per-image DSC"
    unit: str  # "seeds" | "images"
    n: int
    mean_diff: float  # variant - reference (same units as the inputs)
    ci_low: float
    ci_high: float
    p: float


def seed_test(ref: pd.Series, other: pd.Series, method: str = "ttest") -> TestResult | None:
    """Paired test of ``other`` vs ``ref`` (both indexed by seed); None with fewer than 2 shared seeds."""
    ref = ref.dropna().groupby(level=0).mean()  # a seed recorded twice counts once
    other = other.dropna().groupby(level=0).mean()
    both = pd.concat([ref.rename("ref"), other.rename("other")], axis=1, join="inner").dropna()
    n = len(both)
    if n < 2:
        return None
    d = (both["other"] - both["ref"]).to_numpy(dtype=float)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if method == "wilcoxon" and n >= MIN_WILCOXON_SEEDS:
        if np.all(d == 0):
            p = 1.0
        else:
            p = float(sps.wilcoxon(both["other"], both["ref"]).pvalue)
        lo, hi = _t_ci(mean, sd, n)
        return TestResult("Wilcoxon signed-rank over seeds", "seeds", n, mean, lo, hi, p)
    if sd == 0.0:  # every seed gives the same difference: the t statistic is undefined
        p = 1.0 if mean == 0.0 else float("nan")
        return TestResult("paired t-test over seeds", "seeds", n, mean, mean, mean, p)
    res = sps.ttest_rel(both["other"], both["ref"])
    ci = res.confidence_interval(0.95)
    return TestResult("paired t-test over seeds", "seeds", n, mean, float(ci.low), float(ci.high),
                      float(res.pvalue))


def _t_ci(mean: float, sd: float, n: int) -> tuple[float, float]:
    if n < 2 or not math.isfinite(sd):
        return (float("nan"), float("nan"))
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def per_image_test(ref: pd.DataFrame, other: pd.DataFrame) -> TestResult | None:
    """Wilcoxon signed-rank over per-image DSC of two runs (same seed), pairs matched by image id."""
    a = ref.set_index("id")["dsc"].astype(float)
    b = other.set_index("id")["dsc"].astype(float)
    both = pd.concat([a.rename("ref"), b.rename("other")], axis=1, join="inner").dropna()
    n = len(both)
    if n < 2:
        return None
    d = (both["other"] - both["ref"]).to_numpy()
    mean = float(d.mean())
    lo, hi = _t_ci(mean, float(d.std(ddof=1)), n)
    p = 1.0 if np.all(d == 0) else float(sps.wilcoxon(both["other"], both["ref"]).pvalue)
    return TestResult("Wilcoxon signed-rank over per-image DSC", "images", n, mean, lo, hi, p)


def compare_with_reference(runs: pd.DataFrame, reference: str | None, variants: list[str], metrics: list[str],
                           per_image: dict[tuple[str, int], pd.DataFrame] | None = None,
                           seed_method: str = "ttest") -> pd.DataFrame:
    """One row per (variant, metric) tested against the reference, with Holm-adjusted p and its mark.

    Seed-level tests cover every metric column; when no variant shares 2 seeds with the reference, the
    per-image fallback covers the per-image DSC column only (the other columns are pooled over images).
    """
    cols = ["variant", "metric", "test", "unit", "n", "mean_diff", "ci_low", "ci_high", "p", "p_holm", "mark"]
    if reference is None:
        return pd.DataFrame(columns=cols)
    others = [v for v in variants if v != reference]
    ref_runs = runs[runs["variant"] == reference]
    rows = []
    for metric in metrics:
        ref_vals = ref_runs.set_index("seed")[metric]
        for v in others:
            sub = runs[runs["variant"] == v].set_index("seed")[metric]
            res = seed_test(ref_vals, sub, seed_method)
            if res is None and metric == "per_image_dsc_mean" and per_image:
                res = _per_image_fallback(ref_runs, runs[runs["variant"] == v], reference, v, per_image)
            if res is not None:
                rows.append({"variant": v, "metric": metric, **res.__dict__})
    out = pd.DataFrame(rows, columns=cols[:-2])
    if out.empty:
        return pd.DataFrame(columns=cols)
    out["p_holm"] = np.nan
    for metric, idx in out.groupby("metric").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p"].to_numpy())
    out["mark"] = out["p_holm"].map(mark)
    return out[cols]


def _per_image_fallback(ref_runs, var_runs, reference, variant, per_image) -> TestResult | None:
    shared = sorted(set(ref_runs["seed"].dropna()) & set(var_runs["seed"].dropna()))
    for seed in shared:  # the smallest shared seed with both per-image records
        a, b = per_image.get((reference, int(seed))), per_image.get((variant, int(seed)))
        if a is not None and b is not None:
            return per_image_test(a, b)
    return None


def describe_tests(tests: pd.DataFrame) -> str:
    """A one-sentence plain-text statement of the tests used (names, n, correction) for captions."""
    if tests.empty:
        return ""
    parts = []
    for (test, unit), sub in tests.groupby(["test", "unit"], sort=False):
        ns = sorted(set(int(n) for n in sub["n"]))
        n_txt = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
        metrics = sorted(set(sub["metric"]))
        scope = "per-image DSC column only" if unit == "images" else (
            "every metric column" if len(metrics) > 1 else metrics[0])
        parts.append(f"{test} ({n_txt} {unit}; {scope})")
    k = int(tests.groupby("metric")["variant"].nunique().max())
    return ("; ".join(parts) + f"; Holm correction across the {k} variant{'s' if k != 1 else ''} compared with the "
            "reference, "
            "separately per column")
