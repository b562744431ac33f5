"""Executors: where the runs of a suite execute.

An executor takes a list of :class:`RunTask` and returns one :class:`RunOutcome` per task, calling the
callbacks as runs start and finish. Who trains a run is one policy, :func:`claim_run`, shared by every
executor (finished runs are skipped; a per-run lock, :class:`studies.store.RunLock`, decides who trains
a run when several runners share a results folder; failed runs are reported unless retried): the local
executor applies it through :func:`execute_task` / :func:`execute_pack`, the Ray executor's driver
before it submits a run. So an executor only decides *where* tasks execute.

* ``local``: this machine, one or more worker processes (:mod:`studies.executors.local`).
* ``ray``: a Ray cluster (:mod:`studies.executors.ray_executor` and its ``ray_*`` parts, imported only
  when asked for).

Packs (the local executor's ``pack=K``, ``python -m studies.run --pack K``):
:func:`pack_groups` puts the runs that differ only in their seed into packs of up to K, and
:func:`execute_pack` claims and trains each pack as one (:func:`engine.packed.run_packed`) under the
same claim policy.

Contract for an executor class (``get_executor(name, **kw)`` builds it with ``workers=``, ``threads=``
(total torch threads, None = all cores) and any further keywords; accept and ignore unknown ones):

* ``run(tasks, *, on_start=None, on_done=None, on_progress=None) -> list[RunOutcome]``, one outcome
  per task in task order, never ``busy``; ``on_start(task)`` / ``on_done(outcome)`` are called in the
  calling process; ``on_progress(task, **epoch_info)`` is optional (per-epoch information).
* execute each task with ``execute_task(task, blocking=False)`` where the results folder is visible
  (shared file system whose file locks work across the machines that share it), or claim it with
  ``claim_run(task)`` and train it elsewhere while holding the returned lock (the Ray executor); an
  outcome ``busy`` means another runner holds the run: submit it again later, with ``blocking=True``
  once nothing else is left, and report the outcome of that attempt.
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
    cuda_graph: bool = False  # train with a CUDA-graph-captured step (engine.graphs; path "graph")


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


def pack_groups(tasks: list[RunTask], k: int) -> list[list[RunTask]]:
    """``tasks`` in packs of at most ``k`` runs that differ only in their seed (:mod:`engine.packed`), in
    task order of each pack's first run; a run that cannot be packed (e.g. BatchNorm) is a pack of one."""
    from engine.packed import pack_problem, same_architecture

    groups: list[list[RunTask]] = []
    for t in tasks:
        for g in groups:
            if len(g) < k and same_architecture(g[0].config, t.config) and g[0].device == t.device \
                    and pack_problem([x.config for x in (*g, t)], t.device) is None:
                g.append(t)
                break
        else:
            groups.append([t])
    return groups


def execute_pack(tasks: list[RunTask], *, blocking: bool = False, progress: ProgressCallback | None = None,
                 on_start: StartCallback | None = None) -> list[RunOutcome]:
    """Claim each task (:func:`claim_run`) and train the claimed ones together with
    :func:`engine.packed.run_packed`; one outcome per task, in order (``busy`` for runs another runner holds).
    A single claimed task that cannot be packed runs alone, as :func:`execute_task` would run it."""
    from engine.packed import pack_problem

    outcomes: dict[str, RunOutcome] = {}
    claimed: list[tuple[RunTask, store.RunLock]] = []
    for t in tasks:
        out, lock, _ = claim_run(t, blocking)
        if out is not None:
            outcomes[t.config_hash] = out
        else:
            assert lock is not None
            claimed.append((t, lock))
    try:
        if claimed:
            for t, _ in claimed:
                if on_start:
                    on_start(t)
            group = [t for t, _ in claimed]
            if len(group) == 1 and pack_problem([group[0].config], group[0].device) is not None:
                outcomes[group[0].config_hash] = _train(group[0], progress)
            else:
                outcomes.update(_train_pack(group, progress))
    finally:
        for _, lock in claimed:
            lock.release()
    return [outcomes[t.config_hash] for t in tasks]


def _failed(task: RunTask, e: BaseException, t0: float) -> RunOutcome:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return RunOutcome(task.config_hash, task.label, "failed", f"{type(e).__name__}: {e}{where}",
                      wall_s=time.time() - t0, record_dir=str(store.run_dir(task.results_dir, task.config_hash)))


def _train_pack(group: list[RunTask], progress: ProgressCallback | None) -> dict[str, RunOutcome]:
    from engine.packed import run_packed

    t0 = time.time()
    first = group[0]
    try:
        results = run_packed([t.config for t in group], first.results_dir, data_root=first.data_root,
                             device=first.device, threads=first.threads,
                             progress=progress if progress is not None else False,
                             restart=any(t.restart for t in group))
    except Exception as e:  # noqa: BLE001 - one failed pack must not stop the suite
        return {t.config_hash: _failed(t, e, t0) for t in group}
    wall = (time.time() - t0) / len(group)
    return {t.config_hash: RunOutcome(t.config_hash, t.label, "done" if r.status == "done" else "failed",
                                      r.reason, wall_s=wall, record_dir=str(r.record_dir))
            for t, r in zip(group, results)}


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
            cuda_graph=task.cuda_graph,
        )
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the suite
        return _failed(task, e, t0)
    status = "done" if res.status == "done" else "failed"
    return RunOutcome(task.config_hash, task.label, status, getattr(res, "reason", None),
                      wall_s=time.time() - t0, record_dir=str(getattr(res, "record_dir", "") or ""))
