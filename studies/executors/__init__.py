"""Executors: where the runs of a suite execute.

An executor takes a list of :class:`RunTask` and returns one :class:`RunOutcome` per task, calling the
callbacks as runs start and finish. Every executor runs each task through :func:`execute_task`, which
owns the exactly-once logic (finished runs are skipped; a per-run lock, :class:`studies.store.RunLock`,
decides who trains a run when several runners share a results folder), so an executor only decides
*where* tasks execute.

* ``local``: this machine, one or more worker processes (:mod:`studies.executors.local`).
* ``ray``: a Ray cluster (:mod:`studies.executors.ray_executor` and its ``ray_*`` parts, imported only
  when asked for).

Contract for an executor class (``get_executor(name, **kw)`` builds it with ``workers=``, ``threads=``
(total torch threads, None = all cores) and any further keywords; accept and ignore unknown ones):

* ``run(tasks, *, on_start=None, on_done=None, on_progress=None) -> list[RunOutcome]``, one outcome
  per task in task order, never ``busy``; ``on_start(task)`` / ``on_done(outcome)`` are called in the
  calling process; ``on_progress(task, **epoch_info)`` is optional (per-epoch information).
* execute each task with ``execute_task(task, blocking=False)`` where the results folder is visible
  (shared file system whose file locks work across the machines that share it); an outcome ``busy``
  means another runner holds the run: submit it again later, with ``blocking=True`` once nothing
  else is left, and report the outcome of that attempt.
* catch worker loss and report the affected tasks as ``failed`` (their records stay unfinished and are
  resumed by the next invocation).
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from studies import store


@dataclass(frozen=True)
class RunTask:
    """One run to execute: the engine config plus where and how."""

    config: Any  # engine.train.RunConfig (picklable)
    config_hash: str
    results_dir: str
    label: str = ""  # for progress displays, e.g. "egeunet_no_xy isic2018 s0"
    data_root: str | None = None
    device: str = "cpu"
    threads: int | None = None
    session_start: float = field(default_factory=time.time)  # a failure recorded after this is a peer's
    retry_failed: bool = False  # run again a run that failed in an earlier session (its record moved aside)
    fast: bool | None = None  # engine fast path (None = the engine's default: EGE-UNet on CPU)
    restart: bool = False  # discard an unfinished record's partial state and start the run over


@dataclass(frozen=True)
class RunOutcome:
    config_hash: str
    label: str
    status: str  # "done" | "skipped" | "failed" | "busy" (locked by another runner; retry later)
    reason: str | None = None
    wall_s: float = 0.0
    record_dir: str | None = None


StartCallback = Callable[[RunTask], None]
DoneCallback = Callable[[RunOutcome], None]
ProgressCallback = Callable[..., None]


class Executor(Protocol):
    name: str

    def run(
        self,
        tasks: list[RunTask],
        *,
        on_start: StartCallback | None = None,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[RunOutcome]:
        """Execute every task (each exactly once across all runners sharing the results folder)."""
        ...


class ExecutorError(ValueError):
    """Unknown executor name or an executor that cannot be used here (CLIs exit 2)."""


EXECUTORS = {
    "local": ("studies.executors.local", "LocalExecutor"),
    "ray": ("studies.executors.ray_executor", "RayExecutor"),
}


def get_executor(name: str, **kw: Any) -> Executor:
    """The executor called ``name``, built with ``kw`` (e.g. ``workers=``, ``threads=``)."""
    try:
        module, cls = EXECUTORS[name]
    except KeyError:
        raise ExecutorError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}") from None
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ExecutorError(f"executor {name!r} is not available: {e}") from None
    return getattr(mod, cls)(**kw)


def claim_run(task: RunTask, blocking: bool = False) -> tuple[RunOutcome | None, store.RunLock | None, bool]:
    """The one run-claim policy of every executor: ``(outcome, None, False)`` when nothing is to run, else
    ``(None, held lock, fresh)``; the caller trains and then releases the lock.

    Nothing runs for a run already done (before or after waiting for its lock: ``skipped``), one whose lock
    another live runner holds while ``blocking`` is False (``busy``), or one that failed: a failure recorded
    after ``task.session_start`` is a peer's and is reported, an earlier one is reported unless
    ``task.retry_failed`` -- then its record is moved to ``runs_failed/`` and ``fresh`` is True (start
    clean). An unfinished record (killed runner, error raised by the engine) is resumed by the engine.
    """
    rec = store.run_dir(task.results_dir, task.config_hash)
    if store.is_done(rec):
        return RunOutcome(task.config_hash, task.label, "skipped", "already done", record_dir=str(rec)), None, False
    lock = store.RunLock(task.results_dir, task.config_hash)
    if not lock.acquire(blocking=blocking):
        return (RunOutcome(task.config_hash, task.label, "busy", "held by another runner", record_dir=str(rec)),
                None, False)
    st = store.read_status(rec)
    out = None
    if st is not None and st.status == "done":
        out = RunOutcome(task.config_hash, task.label, "skipped", "done by another runner", record_dir=str(rec))
    elif st is not None:
        if st.mtime >= task.session_start:
            out = RunOutcome(task.config_hash, task.label, "failed", f"(failed in another runner) {st.reason}",
                             record_dir=str(rec))
        elif not task.retry_failed:
            out = RunOutcome(task.config_hash, task.label, "failed",
                             f"(failed earlier; --retry-failed runs it again) {st.reason}", record_dir=str(rec))
        else:
            store.move_failed_aside(task.results_dir, task.config_hash)
            return None, lock, True
    if out is not None:
        lock.release()
        return out, None, False
    return None, lock, False


def execute_task(task: RunTask, *, blocking: bool = False, progress: ProgressCallback | None = None) -> RunOutcome:
    """Run one task in this process under :func:`claim_run`'s policy; returns its outcome."""
    out, lock, _ = claim_run(task, blocking)
    if out is not None:
        return out
    assert lock is not None
    try:
        return _train(task, progress)
    finally:
        lock.release()


def _train(task: RunTask, progress: ProgressCallback | None) -> RunOutcome:
    from engine.train import run_training

    t0 = time.time()
    try:
        res = run_training(
            task.config,
            task.results_dir,
            data_root=task.data_root,
            device=task.device,
            threads=task.threads,
            progress=progress if progress is not None else False,  # no engine bars inside a suite
            fast=task.fast,
            restart=task.restart,
        )
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the suite
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        return RunOutcome(task.config_hash, task.label, "failed", f"{type(e).__name__}: {e}{where}",
                          wall_s=time.time() - t0,
                          record_dir=str(store.run_dir(task.results_dir, task.config_hash)))
    status = "done" if res.status == "done" else "failed"
    return RunOutcome(task.config_hash, task.label, status, getattr(res, "reason", None),
                      wall_s=time.time() - t0, record_dir=str(getattr(res, "record_dir", "") or ""))
