"""Run records between a Ray worker's staging folder and the driver's results store.

A worker trains into a *staging* folder (``--ray-shared-dir``, else ``$EGEUNET_RAY_STAGING``, else
``<tmp>/egeunet-ray-<user>`` on each node: :func:`default_staging`) and returns the finished record's
files (relative path -> bytes, :func:`read_record_files`). The driver writes them into
``<results>/runs/<config_hash>/`` with :func:`commit_record` -- atomically, file by file,
``status.json`` last -- while it holds the run's lock, so a record in ``results/`` is either finished
or absent/partial, never half-written by a worker that died. An unfinished record already in the store
travels the other way (:func:`seed_files`) so that the worker resumes it.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

from studies import store
from studies.executors import RunTask

__all__ = ["STAGING_ENV", "default_staging", "read_record_files", "commit_record", "seed_files", "safe_rel"]

STAGING_ENV = "EGEUNET_RAY_STAGING"


def default_staging() -> str:
    """Where workers train when no shared folder is given: ``$EGEUNET_RAY_STAGING`` or a per-user
    folder in the node's temp dir (the same folder on one machine, so a retry resumes)."""
    env = os.environ.get(STAGING_ENV)
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = str(os.getuid())
    return str(Path(tempfile.gettempdir()) / f"egeunet-ray-{user}")


def safe_rel(rel: str) -> Path:
    """``rel`` as a relative path inside a record; an absolute path or one with ``..`` is a ``ValueError``."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"unsafe path {rel!r} in a run record from a worker")
    return p


def read_record_files(rec: Path) -> dict[str, bytes]:
    """Every file of a record (temp files of a killed writer left out): relative path -> bytes."""
    out: dict[str, bytes] = {}
    for p in sorted(rec.rglob("*")):
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")):
            out[p.relative_to(rec).as_posix()] = p.read_bytes()
    return out


def seed_files(task: RunTask) -> dict[str, bytes] | None:
    """An unfinished record in the results store with a checkpoint (e.g. a killed local-executor run):
    its files, so that the worker resumes it instead of starting over."""
    rec = store.run_dir(task.results_dir, task.config_hash)
    if not (rec / "checkpoints" / "latest.pt").is_file() or store.read_status(rec) is not None:
        return None
    return read_record_files(rec)


def commit_record(results: str | os.PathLike, chash: str, files: dict[str, bytes]) -> Path:
    """Write a worker's finished record into ``<results>/runs/<chash>/``: every file atomically,
    stale files of an earlier partial record removed, ``status.json`` last (call with the run's lock)."""
    from engine.record import STATUS_FILE, atomic_write_bytes

    if STATUS_FILE not in files:
        raise ValueError(f"record {chash} from a worker has no {STATUS_FILE}")
    names = {safe_rel(r).as_posix() for r in files}
    rec = store.run_dir(results, chash)
    rec.mkdir(parents=True, exist_ok=True)
    (rec / STATUS_FILE).unlink(missing_ok=True)  # a record without status.json is unfinished meanwhile
    for p in sorted(rec.rglob("*"), reverse=True):
        if p.is_file() and p.relative_to(rec).as_posix() not in names:
            p.unlink()
    for rel, data in files.items():
        if rel != STATUS_FILE:
            atomic_write_bytes(rec / safe_rel(rel), data)
    atomic_write_bytes(rec / STATUS_FILE, files[STATUS_FILE])
    return rec
