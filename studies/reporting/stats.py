"""Statistics of a report table (docs/protocol.md §10): mean ± sample std over seeds, and a paired hierarchical
bootstrap of the difference of every variant to the reference (EGE-UNet).

Cells
    mean ± sample standard deviation (ddof = 1) over seeds, with n; a single seed has no std.

Differences to the reference
    The unit of replication is the training seed, so the test resamples seeds first and test images second
    (a two-stage, *hierarchical* bootstrap): for each of ``n_boot`` replicates, draw the shared seeds with
    replacement; for each drawn seed, draw that seed's shared test images with replacement, the same images for
    the variant and the reference (paired by seed and by image id). Pooled DSC = 2TP / (2TP + FP + FN) and
    pooled mIoU (foreground IoU) = TP / (TP + FP + FN) are recomputed from the per-image confusion counts of the
    resampled images, per seed; the replicate's Δ is the mean over its seeds of (variant − reference). The 95 %
    interval is the percentile interval of the replicates; the two-sided bootstrap p-value is
    ``2 min(P*(Δ ≤ 0), P*(Δ ≥ 0))`` (with the +1 correction), so p < 0.05 exactly when the percentile interval
    excludes 0.

    A variant is marked better / worse only when its Holm-adjusted p (across the variants of one table,
    separately per metric) is below 0.05 *and* its 95 % interval excludes 0. With fewer than 2 shared seeds
    nothing is inferred ("one seed: no inference"): image resampling alone measures test-set sampling, not
    training variability.

Bold
    The best mean of a metric column is bold only when it is distinguishable from the runner-up: the same
    bootstrap of (best − runner-up) gives a 95 % interval that excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

ALPHA = 0.05
N_BOOT = 2000
BOOT_SEED = 20260
COUNT_COLUMNS = ("tp", "fp", "fn")
#: metric of the results table -> function of summed (tp, fp, fn)
METRICS = {
    "pooled_dsc": lambda tp, fp, fn: _ratio(2 * tp, 2 * tp + fp + fn),
    "pooled_miou": lambda tp, fp, fn: _ratio(tp, tp + fp + fn),
}
TEST_NAME = ("paired hierarchical bootstrap (seeds, then test images within seed; {n_boot} replicates), "
             "Holm-corrected across the {k} variant{s} of the table")
NO_INFERENCE = "one seed: no inference"


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


# --------------------------------------------------------------------------------------------- cells


def aggregate(runs: pd.DataFrame, columns: list[str], order: list[str]) -> pd.DataFrame:
    """Per variant: ``<col>_mean``, ``<col>_std`` (ddof = 1, NaN for one seed), ``n`` and ``seeds``."""
    rows = []
    for variant in order:
        sub = runs[runs["variant"] == variant]
        row: dict = {"variant": variant, "n": int(len(sub)),
                     "seeds": ",".join(str(int(s)) for s in sorted(sub["seed"].dropna()))}
        for col in columns:
            vals = pd.to_numeric(sub[col], errors="coerce").dropna().to_numpy(dtype=float) \
                if col in sub.columns else np.array([])
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


# --------------------------------------------------------------------------------------- bootstrap


def _counts(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per-image tp / fp / fn indexed by image id (duplicates: last kept)."""
    missing = [c for c in ("id",) + COUNT_COLUMNS if c not in per_image.columns]
    if missing:
        raise ValueError(f"per-image table lacks {', '.join(missing)}")
    frame = per_image.drop_duplicates("id", keep="last")
    return frame.set_index(frame["id"].astype(str))[list(COUNT_COLUMNS)].astype(float)


def paired_counts(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(seed, counts of a, counts of b) on the seeds both have, rows = the image ids both have (sorted)."""
    out = []
    for seed in sorted(set(a) & set(b)):
        ca, cb = _counts(a[seed]), _counts(b[seed])
        ids = sorted(set(ca.index) & set(cb.index))
        if ids:
            out.append((int(seed), ca.loc[ids].to_numpy(), cb.loc[ids].to_numpy()))
    return out


@dataclass(frozen=True)
class Difference:
    """``other − reference`` of one metric (fractions, not %)."""

    metric: str
    n_seeds: int
    n_images: int  # shared test images per seed (the smallest)
    diff: float  # mean over shared seeds of the per-seed pooled difference on the shared images
    ci_low: float
    ci_high: float
    p: float  # two-sided bootstrap p (NaN: no inference)

    @property
    def inferred(self) -> bool:
        return self.n_seeds >= 2 and np.isfinite(self.p)

    @property
    def excludes_zero(self) -> bool:
        return self.inferred and (self.ci_low > 0 or self.ci_high < 0)


def hierarchical_bootstrap(ref: dict[int, pd.DataFrame], other: dict[int, pd.DataFrame],
                           metrics: tuple[str, ...] = tuple(METRICS), n_boot: int = N_BOOT,
                           seed: int = BOOT_SEED, level: float = 0.95) -> dict[str, Difference]:
    """Paired two-stage bootstrap of ``other − ref`` per metric (per-image counts keyed by training seed).

    Returns an empty dict when no seed and image are shared. With one shared seed the point estimate is
    given, but no interval or p (no inference over training seeds is possible).
    """
    pairs = paired_counts(ref, other)
    if not pairs:
        return {}
    n_seeds = len(pairs)
    n_images = min(len(p[1]) for p in pairs)
    point = {}
    for m in metrics:
        f = METRICS[m]
        point[m] = float(np.mean([f(*cb.sum(0)) - f(*ca.sum(0)) for _, ca, cb in pairs]))
    if n_seeds < 2:
        return {m: Difference(m, 1, n_images, point[m], np.nan, np.nan, np.nan) for m in metrics}
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    # per replicate and drawn slot: summed counts of both runs over that seed's resampled images
    sums = np.zeros((n_boot, n_seeds, 2, 3))
    for s, (_seed, ca, cb) in enumerate(pairs):
        both = np.concatenate([ca, cb], axis=1)  # N x 6
        n = len(both)
        where = np.argwhere(seed_draw == s)
        if not len(where):
            continue
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=len(where)).astype(float)
        block = weights @ both  # draws x 6
        sums[where[:, 0], where[:, 1]] = block.reshape(-1, 2, 3)
    out = {}
    alpha = 1.0 - level
    for m in metrics:
        f = METRICS[m]
        va = f(sums[..., 0, 0], sums[..., 0, 1], sums[..., 0, 2])
        vb = f(sums[..., 1, 0], sums[..., 1, 1], sums[..., 1, 2])
        reps = (vb - va).mean(axis=1)
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        p = min(1.0, 2 * min((np.sum(reps <= 0) + 1) / (n_boot + 1), (np.sum(reps >= 0) + 1) / (n_boot + 1)))
        out[m] = Difference(m, n_seeds, n_images, point[m], float(lo), float(hi), float(p))
    return out


COMPARE_COLUMNS = ["variant", "metric", "test", "n_seeds", "n_images", "diff", "ci_low", "ci_high", "p", "p_holm",
                   "verdict", "mark"]


def compare_with_reference(reference: str | None, variants: list[str],
                           per_image: dict[tuple[str, int], pd.DataFrame],
                           metrics: tuple[str, ...] = tuple(METRICS), n_boot: int = N_BOOT,
                           seed: int = BOOT_SEED) -> pd.DataFrame:
    """One row per (variant, metric): Δ to the reference, 95 % CI, p, Holm-adjusted p, verdict and mark.

    ``verdict`` is 'better', 'worse', 'n.s.' or ``NO_INFERENCE``; ``mark`` the table's symbol for it
    ('↑' / '↓' / ''). Variants without per-image counts shared with the reference are left out.
    """
    if reference is None:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    by_variant: dict[str, dict[int, pd.DataFrame]] = {}
    for (v, s), frame in per_image.items():
        if frame is not None and set(COUNT_COLUMNS) <= set(frame.columns):
            by_variant.setdefault(v, {})[int(s)] = frame
    ref = by_variant.get(reference, {})
    rows = []
    others = [v for v in variants if v != reference]
    for v in others:
        res = hierarchical_bootstrap(ref, by_variant.get(v, {}), metrics, n_boot, seed)
        for m, d in res.items():
            rows.append({"variant": v, **asdict(d)})
    if not rows:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    out = pd.DataFrame(rows)
    out["p_holm"] = np.nan
    for _m, idx in out.groupby("metric").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p"].to_numpy())
    # Holm's family is the variants with a p-value (one-seed variants have none and are not corrected for)
    tested = out[np.isfinite(out["p"])].groupby("metric")["variant"].nunique()
    k = int(tested.max()) if len(tested) else 0
    out["test"] = TEST_NAME.format(n_boot=n_boot, k=k, s="s" if k != 1 else "")

    def verdict(r) -> str:
        if r["n_seeds"] < 2 or not np.isfinite(r["p"]):
            return NO_INFERENCE
        excl = r["ci_low"] > 0 or r["ci_high"] < 0
        if r["p_holm"] < ALPHA and excl:
            return "better" if r["diff"] > 0 else "worse"
        return "n.s."

    out["verdict"] = out.apply(verdict, axis=1)
    out["mark"] = out["verdict"].map({"better": "↑", "worse": "↓"}).fillna("")
    return out[COMPARE_COLUMNS]


def best_distinguishable(means: pd.Series, per_image: dict[tuple[str, int], pd.DataFrame], metric: str,
                         higher: bool = True, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> str | None:
    """The variant to set in bold for ``metric``: the best mean, if its bootstrap CI against the runner-up
    excludes 0 (needs ≥ 2 shared seeds); otherwise None."""
    vals = means.dropna()
    if len(vals) < 2:
        return None
    ranked = vals.sort_values(ascending=not higher)
    best, runner = ranked.index[0], ranked.index[1]
    if ranked.iloc[0] == ranked.iloc[1]:
        return None
    a = {s: f for (v, s), f in per_image.items() if v == runner and f is not None}
    b = {s: f for (v, s), f in per_image.items() if v == best and f is not None}
    try:
        res = hierarchical_bootstrap(a, b, (metric,), n_boot, seed)
    except ValueError:
        return None
    d = res.get(metric)
    if d is None or not d.excludes_zero:
        return None
    return best if (d.diff > 0) == higher else None


def describe_test(tests: pd.DataFrame) -> str:
    """Plain-text statement of the test for captions."""
    if tests.empty:
        return ""
    inferred = tests[tests["verdict"] != NO_INFERENCE]
    if inferred.empty:
        return NO_INFERENCE
    return str(inferred["test"].iloc[0])
