"""Run records: one folder per run, ``<results_dir>/runs/<config_hash>/``.

Layout (docs/architecture.md)::

    config.json       the full resolved RunConfig (written first)
    env.json          code version (git commit + dirty flag), versions, device, threads, host
    history.csv       one row per completed epoch: epoch, train_loss, val_loss, val_<metric>..., lr, seconds
    metrics.json      final test metrics in every convention, the selected epoch, external tests
    per_image.csv     dataset, split, id, tn, fp, fn, tp, dsc, iou (test split and external tests)
    complexity.json   params (+ MACs etc. from engine.profile when available)
    checkpoints/latest.pt   resume state, rewritten atomically at the end of every epoch
    checkpoints/best.pt     weights of the selected epoch
    status.json       {"status": "done" | "failed", "reason": ...}: written LAST

Every file is written atomically (temporary file in the same folder + ``os.replace``), so a
reader sees either the old or the new complete file. A record without ``status.json`` is
unfinished (running, killed or crashed) and is resumed by ``engine.train.run_training``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = [
    "STATUS_FILE", "FINISHED_STATUSES", "record_dir_for", "atomic_write", "atomic_write_bytes", "atomic_write_text",
    "atomic_write_json", "atomic_write_csv", "atomic_torch_save", "read_json", "read_json_or_empty", "read_metrics",
    "update_metrics",
    "write_status", "read_status", "is_finished", "load_record", "RunRecord", "Session", "RecordError", "RECORD_SCHEMA",
    "RESUME_KEY_FIELDS", "started_session", "jsonable",
]

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FINISHED_STATUSES = ("done", "failed")


def record_dir_for(results_dir: str | os.PathLike, config_hash: str) -> Path:
    return Path(results_dir) / "runs" / config_hash


# ------------------------------------------------------------------------------ atomic writes
def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` atomically: ``writer`` fills an open temporary file in the same folder (text
    with ``newline=""`` or binary), which is fsynced and moved into place; on error nothing changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual permissions
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def jsonable(obj: Any) -> Any:
    """Plain-JSON form: tuples -> lists, numpy scalars -> Python, non-finite floats -> None, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"  # serialise before touching disk
    atomic_write_text(path, text)


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form
    return v


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_or_empty(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file's content; ``{}`` when it is missing, not valid JSON or not an object."""
    try:
        data = read_json(path)
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_metrics(record_dir: str | os.PathLike) -> dict[str, Any]:
    """The record's ``metrics.json`` as written; ``{}`` when it is missing or unreadable."""
    return read_json_or_empty(Path(record_dir) / METRICS_FILE)


def update_metrics(record_dir: str | os.PathLike, **fields: Any) -> None:
    """Add ``fields`` to a finished record's ``metrics.json`` (atomic rewrite, other keys kept).

    Raises :class:`RecordError` when the file is missing or is not a JSON object, leaving it untouched.
    """
    path = Path(record_dir) / METRICS_FILE
    try:
        metrics = read_json(path)
    except (OSError, ValueError) as e:
        raise RecordError(f"{path} cannot be read ({type(e).__name__}); rerun the run with --restart") from e
    if not isinstance(metrics, dict):
        raise RecordError(f"{path} is not a JSON object; rerun the run with --restart")
    atomic_write_json(path, {**metrics, **fields})


# ------------------------------------------------------------------------------ status
def write_status(record_dir: str | os.PathLike, status: str, reason: str | None = None, **extra: Any) -> None:
    """Write ``status.json``; call it only after every other file of the record is complete."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {FINISHED_STATUSES}, got {status!r}")
    atomic_write_json(Path(record_dir) / STATUS_FILE,
                      {"status": status, "reason": reason, "schema": RECORD_SCHEMA, **extra})


def read_status(record_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``status.json``, or None when the record is unfinished (absent or unreadable)."""
    path = Path(record_dir) / STATUS_FILE
    try:
        status = read_json(path)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(status, dict) or status.get("status") not in FINISHED_STATUSES:
        return None
    return status


def is_finished(record_dir: str | os.PathLike) -> bool:
    """True when the record holds a valid ``status.json`` (``done`` or ``failed``)."""
    return read_status(record_dir) is not None


# ------------------------------------------------------------------------------ loading
#: record layout version, written into status.json; records without it are version 1 (loaded with fallbacks)
RECORD_SCHEMA = 2
#: what a resumed session must share with the first one (the keys of ``engine.numerics.resume_key``)
RESUME_KEY_FIELDS = ("device_type", "precision", "numerics_version", "path")


def started_session(env: dict[str, Any] | None) -> dict[str, Any]:
    """The raw entry the session that started a run wrote in ``env.json`` (``{}`` when there is none)."""
    sessions = (env or {}).get("sessions") or []
    return sessions[0] if sessions and isinstance(sessions[0], dict) else {}


class RecordError(ValueError):
    """A record file cannot be read: the message is one line naming the file and what to do."""


@dataclass(frozen=True)
class Session:
    """One training session of a run (``env.json`` ``sessions``): where, how and on which code it ran.

    ``device_type`` / ``precision`` are derived for version-1 records from ``device`` and ``amp``;
    ``numerics_version`` and ``path`` are None where a record predates them.
    """

    device: str | None
    device_type: str | None
    precision: str | None
    numerics_version: int | None
    path: str | None
    git_commit: str | None
    git_dirty: bool | None
    start_epoch: int | None = None
    time_utc: str | None = None
    hostname: str | None = None
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Session":
        device = d.get("device")
        device_type = d.get("device_type") or (str(device).split(":")[0] if device else None)
        precision = d.get("precision")
        if precision is None and device_type is not None and "amp" in d:
            precision = "amp-fp16" if d["amp"] else ("fp32" if device_type == "cpu" else None)
        path = d.get("path") or ({True: "fast", False: "plain"}.get(d["fast_path"]) if "fast_path" in d else None)
        return cls(device=device, device_type=device_type, precision=precision,
                   numerics_version=d.get("numerics_version"), path=path, git_commit=d.get("git_commit"),
                   git_dirty=d.get("git_dirty"), start_epoch=d.get("start_epoch"), time_utc=d.get("time_utc"),
                   hostname=d.get("hostname"), threads=d.get("threads"))

    def resume_key(self) -> dict[str, Any]:
        return {"device_type": self.device_type, "precision": self.precision,
                "numerics_version": self.numerics_version, "path": self.path}


@dataclass
class RunRecord:
    """One run record, read by :func:`load_record`: the parsed files plus typed views of what readers need.

    The dicts (``config``, ``env``, ``metrics``, ``complexity``, ``status``) are the files as written (None when
    absent); the properties are the only place that knows their keys and the fallbacks for older records.
    """

    record_dir: Path
    status: dict[str, Any] | None
    config: dict[str, Any] | None
    env: dict[str, Any] | None
    metrics: dict[str, Any] | None
    complexity: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    # -- identity and state
    @property
    def config_hash(self) -> str:
        return self.record_dir.name

    @property
    def schema(self) -> int:
        return int((self.status or {}).get("schema", 1))

    @property
    def finished(self) -> bool:
        return self.status is not None

    @property
    def done(self) -> bool:
        return (self.status or {}).get("status") == "done"

    @property
    def reason(self) -> str | None:
        return (self.status or {}).get("reason")

    @property
    def model(self) -> str | None:
        return (self.config or {}).get("model")

    @property
    def model_overrides(self) -> dict[str, Any]:
        """The model constructor's keyword arguments (``{}`` for none, and for records that predate them)."""
        return dict((self.config or {}).get("model_overrides") or {})

    @property
    def dataset(self) -> str | None:
        return (self.config or {}).get("dataset")

    @property
    def protocol(self) -> str | None:
        return (self.config or {}).get("protocol")

    @property
    def seed(self) -> int | None:
        return (self.config or {}).get("seed")

    @property
    def data_id(self) -> str | None:
        """The data fingerprint the run was defined on (None for records that predate it)."""
        return (self.config or {}).get("data") or None

    @property
    def recipe_epochs(self) -> int | None:
        return ((self.config or {}).get("recipe") or {}).get("epochs")

    @property
    def recipe_size(self) -> int | None:
        """The training (and evaluation) image size of the run's recipe."""
        return ((self.config or {}).get("recipe") or {}).get("size")

    # -- where and on what it ran
    @property
    def sessions(self) -> list[Session]:
        return [Session.from_dict(s) for s in (self.env or {}).get("sessions") or [] if isinstance(s, dict)]

    @property
    def first_session(self) -> Session | None:
        sessions = self.sessions
        return sessions[0] if sessions else None

    @property
    def started_resume_key(self) -> dict[str, Any]:
        """The resume key (device type, precision, numerics version, path) as the session that started the
        run wrote it, without the fallbacks of :class:`Session`: a field the record predates is None, so
        that :func:`engine.checkpoint.resume_conflict` refuses to resume such a record."""
        first = started_session(self.env)
        return {k: first.get(k) for k in RESUME_KEY_FIELDS}

    @property
    def numerics_version(self) -> int | None:
        first = self.first_session
        return first.numerics_version if first else None

    @property
    def precision(self) -> str | None:
        first = self.first_session
        return first.precision if first else None

    @property
    def device_label(self) -> str | None:
        """``cpu``, ``cuda (NVIDIA H200)``, or ``cuda -> cpu`` for a run resumed on another device."""
        env = self.env or {}
        dev = env.get("device")
        if dev is None:
            return None
        name = env.get("device_name")
        last = f"{dev} ({name})" if name and str(dev).startswith("cuda") else str(dev)
        seen: list[str] = []
        for s in self.sessions:
            if s.device and (not seen or seen[-1] != s.device):
                seen.append(str(s.device))
        return " -> ".join([*seen[:-1], last]) if len(seen) > 1 else last

    @property
    def commit(self) -> str | None:
        """The commit of the last session, ``+dirty`` when its code differed from it."""
        env = self.env or {}
        commit = env.get("git_commit") or env.get("commit")
        if commit is not None and env.get("git_dirty"):
            commit = f"{commit}+dirty"
        return commit

    # -- results
    @property
    def test_metrics(self) -> dict[str, Any]:
        """The held-out (test) summary of ``metrics.json`` (empty for a failed or unfinished run)."""
        test = (self.metrics or {}).get("test")
        return test if isinstance(test, dict) else {}

    @property
    def params(self) -> int | None:
        value = (self.complexity or {}).get("params")
        if value is None:
            value = (self.metrics or {}).get("params")
        return int(value) if value is not None else None

    @property
    def thop_macs(self) -> float | None:
        return (self.complexity or {}).get("thop_macs")

    @property
    def flopcounter_flops(self) -> float | None:
        return (self.complexity or {}).get("flopcounter_flops")

    @property
    def latency_ms(self) -> float | None:
        return (self.complexity or {}).get("latency_ms_median")

    @property
    def best_epoch(self) -> int | None:
        return (self.metrics or {}).get("best_epoch")

    @property
    def epochs(self) -> int | None:
        value = (self.metrics or {}).get("epochs")
        if value is None and self.history:
            value = max(int(h["epoch"]) for h in self.history if h.get("epoch") not in (None, ""))
        return value

    @property
    def wall_s(self) -> float | None:
        value = (self.metrics or {}).get("wall_s")
        return value if value is not None else (self.status or {}).get("wall_s")

    @property
    def synthetic(self) -> bool | None:
        return (self.metrics or {}).get("synthetic")

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def per_image_frame(self):
        import pandas as pd

        return pd.DataFrame(self.per_image)

    @property
    def best_checkpoint_sha256(self) -> str | None:
        """The SHA-256 of ``best.pt`` when the run finished (records before schema 2 do not store it)."""
        return ((self.metrics or {}).get("best_checkpoint") or {}).get("sha256")

    @property
    def best_checkpoint_bytes(self) -> int | None:
        """The size of ``best.pt`` when the run finished, as recorded with its SHA-256 (None before schema 2)."""
        value = ((self.metrics or {}).get("best_checkpoint") or {}).get("bytes")
        return int(value) if value is not None else None

    @property
    def best_checkpoint(self) -> Path:
        return self.record_dir / "checkpoints" / "best.pt"

    @property
    def latest_checkpoint(self) -> Path:
        return self.record_dir / "checkpoints" / "latest.pt"


def _maybe_json(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e}); restore it from git or rerun the run with --restart")


_STRING_COLUMNS = frozenset({"dataset", "split", "id"})


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, csv.Error) as e:
        raise RecordError(f"{path}: not a readable CSV ({e}); restore it from git or rerun the run") from None
    return [{k: v if k in _STRING_COLUMNS else _parse_cell(v) for k, v in r.items()} for r in rows]


def _parse_cell(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except (TypeError, ValueError):
            pass
    return v


def load_record(record_dir: str | os.PathLike) -> RunRecord:
    """Read every file of a run record (finished or not); a corrupt file raises :class:`RecordError`."""
    d = Path(record_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no run record at {d}")
    status_path = d / STATUS_FILE
    status = _maybe_json(status_path)
    if status is not None and (not isinstance(status, dict) or status.get("status") not in FINISHED_STATUSES):
        status = None
    if status is not None and int(status.get("schema", 1)) > RECORD_SCHEMA:
        raise RecordError(f"{status_path}: record schema {status['schema']} is newer than this code "
                          f"({RECORD_SCHEMA}); update the package to read it")
    return RunRecord(
        record_dir=d,
        status=status,
        config=_maybe_json(d / "config.json"),
        env=_maybe_json(d / "env.json"),
        metrics=_maybe_json(d / "metrics.json"),
        complexity=_maybe_json(d / "complexity.json"),
        history=_read_csv(d / "history.csv"),
        per_image=_read_csv(d / "per_image.csv"),
    )
