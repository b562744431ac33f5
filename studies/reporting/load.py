"""Reading a suite's results table and its per-run records (the report's only inputs).

The results table is ``<results>/<suite>/results.csv`` (or ``.parquet``), one row per run; each run's
record lives under ``<results>/<suite>/runs/<config_hash>/`` or ``<results>/runs/<config_hash>/``
(history.csv, per_image.csv, config.json, checkpoints/best.pt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

#: the reference every other variant is compared with when the suite declares none (EGE-UNet as published)
REFERENCE = "egeunet"

#: columns without which no table can be made
REQUIRED = ("variant", "dataset", "protocol", "budget", "seed", "pooled_dsc")

#: (column, label, higher_is_better, scale) of the paper's table, in the paper's order
COST_COLUMNS = (("params", "Params (M)", False, 1e-6), ("gmacs", "GFLOPs", False, 1.0))
POOLED_COLUMNS = (
    ("pooled_miou", "mIoU", True, 100.0),
    ("pooled_dsc", "DSC", True, 100.0),
    ("pooled_acc", "Acc", True, 100.0),
    ("pooled_spe", "Spe", True, 100.0),
    ("pooled_sen", "Sen", True, 100.0),
)
PER_IMAGE_COLUMNS = (("per_image_dsc_mean", "DSC", True, 100.0),)
METRIC_COLUMNS = tuple(c for c, *_ in POOLED_COLUMNS + PER_IMAGE_COLUMNS)

_STR_COLUMNS = ("suite", "variant", "model", "dataset", "protocol", "budget", "status", "reason", "config_hash",
                "commit")


class ReportError(Exception):
    """A problem with the report's inputs; the CLI prints it on one line and exits 2."""


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    return series.map(lambda v: str(v).strip().lower() in {"true", "1", "yes"} if pd.notna(v) else False)


def load_results(results_root: Path | str, suite: str) -> pd.DataFrame:
    """The suite's results table with normalised dtypes; raises :class:`ReportError` when unusable."""
    folder = Path(results_root) / suite
    if not folder.is_dir():
        raise ReportError(f"no results folder {folder}: run `python -m studies.run --suite {suite}` first")
    parquet, csv = folder / "results.parquet", folder / "results.csv"
    df = None
    if parquet.is_file():
        try:
            df = pd.read_parquet(parquet)
        except Exception:  # a broken or half-written parquet file: fall back on the CSV
            df = None
    if df is None:
        if not csv.is_file():
            raise ReportError(f"no results table in {folder} (expected results.csv or results.parquet)")
        try:
            df = pd.read_csv(csv, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=True)
        except pd.errors.EmptyDataError:
            raise ReportError(f"results table {csv} is empty") from None
    if df.empty:
        raise ReportError(f"results table in {folder} is empty: no runs recorded")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ReportError(f"results table in {folder} lacks column(s) {', '.join(missing)}")
    df = df.copy()
    for col in _STR_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype("string").fillna("").astype(object)
    if "suite" not in df.columns:
        df["suite"] = suite
    if "model" not in df.columns:
        df["model"] = df["variant"]
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    df["synthetic"] = _as_bool(df["synthetic"]) if "synthetic" in df.columns else False
    if "status" not in df.columns:
        df["status"] = "done"
    numeric = [c for c, *_ in COST_COLUMNS + POOLED_COLUMNS + PER_IMAGE_COLUMNS] + [
        "flop_counter_gmacs", "latency_ms", "per_image_dsc_std", "per_image_iou_mean", "per_image_iou_std",
        "isic_tjaccard", "best_epoch", "epochs", "wall_s"]
    for col in numeric:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        else:
            df[col] = np.nan
    if "config_hash" in df.columns:  # a re-run of the same config replaces the earlier row
        keyed = df["config_hash"].astype(str) != ""
        df = pd.concat([df[keyed].drop_duplicates("config_hash", keep="last"), df[~keyed]]).sort_index()
    else:
        df["config_hash"] = ""
    if "commit" not in df.columns:
        df["commit"] = ""
    return df.reset_index(drop=True)


def is_done(df: pd.DataFrame) -> pd.Series:
    """Mask of finished runs with a test score."""
    return (df["status"].astype(str).str.lower() == "done") & df["pooled_dsc"].notna()


def done_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished runs with a test score (failed / unfinished runs never enter a table)."""
    return df[is_done(df)].reset_index(drop=True)


def discover_suites(results_root: Path | str) -> list[str]:
    """Suites under ``results_root`` that hold a results table (for ``--all``)."""
    root = Path(results_root)
    if not root.is_dir():
        raise ReportError(f"no results folder {root}: run `python -m studies.run` first")
    suites = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and ((p / "results.csv").is_file() or (p / "results.parquet").is_file()))
    if not suites:
        raise ReportError(f"no suite results under {root} (expected {root}/<suite>/results.csv)")
    return suites


GROUP_KEYS = ("dataset", "protocol", "budget")


@dataclass(frozen=True)
class Group:
    """Runs comparable in one table: same dataset, protocol and budget (docs/protocol.md §1: never mixed)."""

    dataset: str
    protocol: str
    budget: str
    runs: pd.DataFrame
    declared: str | None = None  # the suite's ``reference`` (a variant key, label or model); None: EGE-UNet

    @property
    def slug(self) -> str:
        return "-".join(_slug(v) for v in (self.dataset, self.protocol, self.budget))

    @property
    def synthetic(self) -> bool:
        return bool(self.runs["synthetic"].any())

    @property
    def variants(self) -> list[str]:
        """Variant labels in the suite's order (first appearance in the results table)."""
        return list(dict.fromkeys(self.runs["variant"]))

    @property
    def reference(self) -> str | None:
        """The variant every other one is compared with: the suite's declared reference, else EGE-UNet as
        published (model ``egeunet``; the macro ablation labels it '+GHPA+GAB'); None when no run of it is here."""
        wanted = self.declared or REFERENCE
        for col in ("variant", "model"):
            hit = self.runs.loc[self.runs[col] == wanted, "variant"]
            if len(hit):
                return str(hit.iloc[0])
        return None

    def model_of(self, variant: str) -> str:
        return str(self.runs.loc[self.runs["variant"] == variant, "model"].iloc[0])

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.runs["seed"].dropna().unique())


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_") or "na"


def iter_groups(df: pd.DataFrame, reference: str | None = None) -> Iterator[Group]:
    """Comparable groups of finished runs, in a stable order (``reference``: the suite's declared one)."""
    done = done_runs(df)
    for key, runs in done.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        yield Group(*(str(k) for k in key), runs=runs.reset_index(drop=True), declared=reference)


# --- per-run records -----------------------------------------------------------------------------------------


def run_dir(results_root: Path | str, suite: str, row: pd.Series | dict) -> Path | None:
    """The record folder of one run, wherever the runner put it; None when absent."""
    root = Path(results_root)
    explicit = row.get("run_dir") if hasattr(row, "get") else None
    candidates = []
    if isinstance(explicit, str) and explicit:
        p = Path(explicit)
        candidates += [p, root / p, root / suite / p]
    h = str(row.get("config_hash", "") or "")
    if h:
        candidates += [root / suite / "runs" / h, root / "runs" / h]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _record(path: Path | None):
    """The run record at ``path`` through :func:`engine.record.load_record` (None when absent or unreadable)."""
    from engine.record import RecordError, load_record

    if path is None:
        return None
    try:
        return load_record(path)
    except (FileNotFoundError, RecordError):
        return None


def _frame(rows: list[dict]) -> pd.DataFrame:
    """A record's CSV rows as a frame; empty cells become NaN, so number columns stay numeric."""
    return pd.DataFrame(rows).replace("", np.nan).infer_objects() if rows else pd.DataFrame()


def read_history(path: Path | None) -> pd.DataFrame | None:
    """The run's per-epoch history (None when the record has none)."""
    rec = _record(path)
    hist = _frame(rec.history) if rec is not None else pd.DataFrame()
    return hist if not hist.empty and "epoch" in hist.columns else None


def read_per_image(path: Path | None, dataset: str | None = None) -> pd.DataFrame | None:
    """The run's per-image test counts (rows of external tests on other datasets / splits dropped)."""
    rec = _record(path)
    per = _frame(rec.per_image) if rec is not None else pd.DataFrame()
    if per.empty or "id" not in per.columns:
        return None
    if "split" in per.columns:
        per = per[per["split"].astype(str) == "test"]
    if dataset is not None and "dataset" in per.columns and (per["dataset"].astype(str) == dataset).any():
        per = per[per["dataset"].astype(str) == dataset]
    if "dsc" not in per.columns and {"tp", "fp", "fn"} <= set(per.columns):
        denom = 2 * per["tp"] + per["fp"] + per["fn"]
        per = per.assign(dsc=np.where(denom > 0, 2 * per["tp"] / denom.where(denom > 0, 1), 1.0))
    if per.empty or "dsc" not in per.columns:
        return None
    return per.drop_duplicates("id", keep="last").reset_index(drop=True)


def read_config(path: Path | None) -> dict | None:
    """The run's ``config.json`` (None when the record has none)."""
    rec = _record(path)
    return rec.config if rec is not None else None
