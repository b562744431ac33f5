"""The results store: run records, per-run locks, suite manifests and the aggregated results table.

Layout under a results folder (default ``results/``)::

    runs/<config_hash>/      the engine's run record (shared by every suite; status.json written last),
                             read through engine.record
    locks/<config_hash>.lock held by whichever runner is executing that run (RunLock)
    profiles/<model>-256.json CPU latency of a model (measured once per results folder)
    runs_failed/<hash>-<t>/  records of failed runs moved aside before a retry
    <suite>/manifest.jsonl   every run ever requested under that suite (one line per config hash)
    <suite>/results.csv      one row per finished run of the manifest, rebuilt from the run records
    <suite>/results.parquet  the same table

Every lock is a :func:`file_lock`, a ``filelock.FileLock``: run locks, manifest and table writes
(``<suite>/.manifest.lock``, ``<suite>/.table.lock``) and latency measurement (``profiles/*.lock``).
Run locks live outside the record folders so that the engine may create, clean or replace a record
without touching a lock in use. The lock is the OS's, held by the open file: the OS drops it when the
holder dies, even by SIGKILL, so a killed runner never leaves a stale lock behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from filelock import FileLock, Timeout

from engine.record import STATUS_FILE, atomic_write, atomic_write_text
from engine.record import read_status as read_record_status
from studies.suites import BUDGETS, RunSpec, Suite, get_suite, variant_key

METRIC_COLUMNS = (
    "pooled_miou",
    "pooled_dsc",
    "pooled_acc",
    "pooled_sen",
    "pooled_spe",
    "per_image_dsc_mean",
    "per_image_dsc_std",
    "per_image_iou_mean",
    "per_image_iou_std",
    "isic_tjaccard",
)

TABLE_COLUMNS = (
    "suite",
    "variant",
    "model",
    "dataset",
    "protocol",
    "budget",
    "seed",
    "params",
    "gmacs",
    "flop_counter_gmacs",
    "latency_ms",
    *METRIC_COLUMNS,
    "best_epoch",
    "epochs",
    "wall_s",
    "device",
    "status",
    "reason",
    "config_hash",
    "data",
    "numerics_version",
    "precision",
    "commit",
    "synthetic",
)

# ----------------------------------------------------------------------------------------- engine glue


def make_config(spec: RunSpec, data_root: str | os.PathLike | None = None,
                fingerprints: dict[tuple[str, str], str] | None = None) -> Any:
    """The engine's ``RunConfig`` of one suite run (the recipe follows from the budget; ``data`` is the
    fingerprint of the dataset under ``data_root``, computed once per (dataset, protocol) into ``fingerprints``;
    the variant's keyword arguments become ``model_overrides``, so they are in the config hash)."""
    from engine.data import data_fingerprint
    from engine.train import RunConfig

    memo = fingerprints if fingerprints is not None else {}
    key = (spec.dataset, spec.protocol)
    if key not in memo:
        memo[key] = data_fingerprint(spec.dataset, spec.protocol, data_root).id
    return RunConfig(
        model=spec.model,
        model_overrides=dict(spec.overrides),  # constructor keyword arguments: part of the config and its hash
        dataset=spec.dataset,
        protocol=spec.protocol,
        budget=spec.budget,
        seed=spec.seed,
        data=memo[key],
    )


def config_hash(cfg: Any) -> str:
    return str(cfg.config_hash())


# ---------------------------------------------------------------------------------------------- paths


def runs_dir(results: str | os.PathLike) -> Path:
    return Path(results) / "runs"


def run_dir(results: str | os.PathLike, chash: str) -> Path:
    return runs_dir(results) / chash


def lock_path(results: str | os.PathLike, chash: str) -> Path:
    return Path(results) / "locks" / f"{chash}.lock"


def suite_dir(results: str | os.PathLike, suite: str) -> Path:
    return Path(results) / suite


# --------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class RecordStatus:
    status: str  # "done" | "failed"
    reason: str | None
    mtime: float


def read_status(record: Path) -> RecordStatus | None:
    """The record's status (:func:`engine.record.read_status`) with the time it was written, or None while
    the run is unfinished (or never started)."""
    try:
        mtime = (Path(record) / STATUS_FILE).stat().st_mtime
        data = read_record_status(record)
    except OSError:  # unreadable: as an absent status, an unfinished record
        return None
    if data is None:
        return None
    return RecordStatus(str(data["status"]), data.get("reason"), mtime)


def is_done(record: Path) -> bool:
    st = read_status(record)
    return st is not None and st.status == "done"


def run_state(results: str | os.PathLike, chash: str) -> str:
    """One word: ``done``, ``failed``, ``running`` (locked by a live runner), ``partial`` (interrupted,
    will resume) or ``todo``."""
    rec = run_dir(results, chash)
    st = read_status(rec)
    if st is not None:
        return "done" if st.status == "done" else "failed"
    if is_locked(results, chash):
        return "running"
    return "partial" if rec.exists() else "todo"


def move_failed_aside(results: str | os.PathLike, chash: str) -> Path | None:
    """Move a failed record to ``runs_failed/`` so that a retry starts clean (call with the lock held)."""
    rec = run_dir(results, chash)
    if not rec.exists():
        return None
    dest = Path(results) / "runs_failed" / f"{chash}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(rec), str(dest))
    return dest


# ---------------------------------------------------------------------------------------------- locks


class RunLock:
    """An exclusive per-run lock on ``locks/<hash>.lock`` (``filelock``: an OS lock the kernel drops when the
    holder dies, even by SIGKILL, so a killed runner never leaves a stale lock). Not re-entrant; one
    instance per attempt."""

    def __init__(self, results: str | os.PathLike, chash: str):
        self.path = lock_path(results, chash)
        self._lock: FileLock | None = None

    def acquire(self, blocking: bool = False, timeout: float | None = None) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = file_lock(self.path)
        wait = (-1 if timeout is None else timeout) if blocking else 0
        try:
            lock.acquire(timeout=wait, poll_interval=0.2)
        except Timeout:
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> "RunLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_lock(path: str | os.PathLike) -> FileLock:
    """The suite's one lock mechanism: an exclusive ``filelock.FileLock`` on ``path`` (its folder is created).
    Use as a context manager for a short blocking section, or ``acquire(timeout=0)`` to try."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), is_singleton=False, thread_local=False)


def is_locked(results: str | os.PathLike, chash: str) -> bool:
    """True while a live runner holds the run's lock."""
    p = lock_path(results, chash)
    if not p.exists():
        return False
    probe = file_lock(p)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


# ------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    config_hash: str
    model: str
    dataset: str
    protocol: str
    budget: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)  # model keyword arguments (omitted if none)

    @property
    def key(self) -> str:
        """The variant key: the model name, with its keyword arguments when it has some."""
        return variant_key(self.model, self.overrides)

    def to_json(self) -> dict[str, Any]:
        """The manifest line's fields (``overrides`` only when there are some, so older lines stay as they are)."""
        d = asdict(self)
        if not d["overrides"]:
            del d["overrides"]
        return d


def _manifest_path(results: str | os.PathLike, suite: str) -> Path:
    return suite_dir(results, suite) / "manifest.jsonl"


def read_manifest(results: str | os.PathLike, suite: str) -> list[ManifestEntry]:
    p = _manifest_path(results, suite)
    if not p.exists():
        return []
    out: dict[str, ManifestEntry] = {}
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            e = ManifestEntry(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a torn last line of a killed writer
        out.setdefault(e.config_hash, e)
    return list(out.values())


def add_to_manifest(results: str | os.PathLike, suite: str, entries: Iterable[ManifestEntry]) -> None:
    """Append the entries whose hash is not yet in the suite's manifest."""
    p = _manifest_path(results, suite)
    with file_lock(p.with_name(".manifest.lock")):
        known = {e.config_hash for e in read_manifest(results, suite)}
        new = [e for e in entries if e.config_hash not in known and not known.add(e.config_hash)]
        if new:
            with open(p, "a") as f:
                for e in new:
                    f.write(json.dumps(e.to_json(), sort_keys=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


# -------------------------------------------------------------------------------------------- latency

LATENCY_SIZE = 256


def latency_path(results: str | os.PathLike, model: str, size: int = LATENCY_SIZE) -> Path:
    return Path(results) / "profiles" / f"{model}-{size}.json"


def read_latency_ms(results: str | os.PathLike, model: str, size: int = LATENCY_SIZE) -> float:
    """The cached CPU latency (median ms, batch 1) of ``model``, NaN when not measured."""
    try:
        data = json.loads(latency_path(results, model, size).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return math.nan
    return _as_float(data.get("latency_ms_median")) if isinstance(data, dict) else math.nan


def measure_latency(results: str | os.PathLike, model: str, *, threads: int = 1,
                    size: int = LATENCY_SIZE) -> float | None:
    """Measure ``model``'s CPU latency with ``engine.profile.profile_model`` and cache it under
    ``profiles/`` (once per model and results folder). Returns the median in ms, or None when another
    runner is measuring it right now."""
    from engine.profile import profile_model

    path = latency_path(results, model, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = file_lock(path.with_suffix(".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    try:
        cached = read_latency_ms(results, model, size)
        if not math.isnan(cached):
            return cached
        row = profile_model(model, size=size, device="cpu", threads=threads, latency=True,
                            batch_throughput=0, counters=())
        row.update(measured_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host=os.uname().nodename)
        text = json.dumps({k: v for k, v in row.items() if isinstance(v, (str, int, float, bool, type(None)))},
                          indent=2, sort_keys=True)
        atomic_write_text(path, text + "\n")
        return _as_float(row.get("latency_ms_median"))
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------- table


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def record_row(record: Path) -> dict[str, Any]:
    """The table fields of one finished run record, read through :class:`engine.record.RunRecord`
    (missing ones are NaN / None).

    ``gmacs`` is the legacy-thop MAC count in G (the papers' "GFLOPs"); ``flop_counter_gmacs`` is
    ``torch.utils.flop_counter`` FLOPs / 2 (docs/protocol.md section 6).
    """
    from engine.record import load_record

    r = load_record(record)
    test = r.test_metrics
    row: dict[str, Any] = {m: _as_float(test.get(m)) for m in METRIC_COLUMNS}
    row.update(
        data=r.data_id,
        numerics_version=r.numerics_version,
        precision=r.precision,
        params=r.params,
        gmacs=_as_float(r.thop_macs) / 1e9 if r.thop_macs is not None else math.nan,
        flop_counter_gmacs=_as_float(r.flopcounter_flops) / 2e9 if r.flopcounter_flops is not None else math.nan,
        latency_ms=_as_float(r.latency_ms),
        best_epoch=r.best_epoch,
        epochs=r.epochs,
        wall_s=_as_float(r.wall_s),
        device=r.device_label,
        status=(r.status or {}).get("status"),
        reason=r.reason,
        commit=r.commit,
        synthetic=r.synthetic,
    )
    return row


def build_table(results: str | os.PathLike, suite: Suite | str) -> pd.DataFrame:
    """One row per finished run in the suite's manifest, rebuilt from the run records (never duplicated)."""
    s = get_suite(suite) if isinstance(suite, str) else suite
    order = {k: i for i, k in enumerate(s.all_variants())}
    latency: dict[str, float] = {}
    rows = []
    ranks: list[int] = []  # table order of each row's variant (variants outside the suite: first seen, last)
    for e in read_manifest(results, s.name):
        rec = run_dir(results, e.config_hash)
        if read_status(rec) is None:
            continue
        row: dict[str, Any] = dict(
            suite=s.name,
            variant=s.label(e.key),
            model=e.model,
            dataset=e.dataset,
            protocol=e.protocol,
            budget=e.budget,
            seed=e.seed,
            config_hash=e.config_hash,
        )
        row.update(record_row(rec))
        if math.isnan(row["latency_ms"]) and not e.overrides:  # the cache is per model, built without arguments
            row["latency_ms"] = latency.setdefault(e.model, read_latency_ms(results, e.model))
        if row["synthetic"] is None:
            row["synthetic"] = e.dataset == "synthetic"
        rows.append(row)
        ranks.append(order.setdefault(e.key, len(order)))
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if len(df):
        bidx = {b: i for i, b in enumerate(BUDGETS)}
        df = (
            df.assign(
                _b=df["budget"].map(bidx),
                _m=ranks,
            )
            .sort_values(["_b", "protocol", "dataset", "_m", "seed"], kind="stable")
            .drop(columns=["_b", "_m"])
            .reset_index(drop=True)
        )
    df["seed"] = df["seed"].astype("int64")
    df["params"] = df["params"].astype("Int64")
    for c in ("best_epoch", "epochs"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("gmacs", "flop_counter_gmacs", "latency_ms", "wall_s", *METRIC_COLUMNS):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["synthetic"] = df["synthetic"].astype("boolean")
    df["numerics_version"] = pd.to_numeric(df["numerics_version"], errors="coerce").astype("Int64")
    for c in ("suite", "variant", "model", "dataset", "protocol", "budget", "status", "reason",
              "config_hash", "data", "precision", "commit"):
        df[c] = df[c].astype("string")
    return df


def write_table(results: str | os.PathLike, suite: Suite | str) -> tuple[pd.DataFrame, Path]:
    """Rebuild the suite's table from the run records and write ``results.csv`` / ``results.parquet``
    atomically (temp file + ``os.replace``). Returns the table and the csv path."""
    s = get_suite(suite) if isinstance(suite, str) else suite
    d = suite_dir(results, s.name)
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(d / ".table.lock"):
        df = build_table(results, s)
        atomic_write(d / "results.csv", lambda f: df.to_csv(f, index=False))
        atomic_write(d / "results.parquet", lambda f: df.to_parquet(f, index=False), binary=True)
    return df, d / "results.csv"
