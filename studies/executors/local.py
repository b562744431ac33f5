"""The local executor: runs on this machine, in this process (1 worker) or in N worker processes.

The torch threads of the machine are split among the workers (``threads // workers`` each, at least
1). Runs another runner holds are deferred to the end of the queue and then waited for, so two runners
on one results folder share the work and each run is trained exactly once. With ``pack=K`` (one worker)
the seeds of one variant are trained together in this process, K at a time (:func:`engine.packed.run_packed`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from studies.executors import (
    DoneCallback,
    ProgressCallback,
    RunOutcome,
    RunTask,
    StartCallback,
    execute_pack,
    execute_task,
    pack_groups,
)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None, pack: int = 1, **_: object):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if pack < 1:
            raise ValueError(f"pack must be >= 1, got {pack}")
        if pack > 1 and workers > 1:
            raise ValueError("packs run in this process: use --pack with one worker")
        self.workers = workers
        self.pack = pack
        self.total_threads = threads or default_threads()
        self.threads_per_worker = max(1, self.total_threads // workers)

    def run(
        self,
        tasks: list[RunTask],
        *,
        on_start: StartCallback | None = None,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[RunOutcome]:
        tasks = [replace(t, threads=t.threads or self.threads_per_worker) for t in tasks]
        if self.pack > 1:
            return self._run_packs(tasks, on_start, on_done, on_progress)
        if self.workers == 1:
            return self._run_inline(tasks, on_start, on_done, on_progress)
        return self._run_pool(tasks, on_start, on_done)

    # -- one worker: this process -------------------------------------------------------------------

    def _run_inline(self, tasks, on_start, on_done, on_progress) -> list[RunOutcome]:
        import torch

        torch.set_num_threads(self.threads_per_worker)
        results: dict[str, RunOutcome] = {}

        def one(task: RunTask, blocking: bool) -> bool:
            if on_start:
                on_start(task)
            progress = (lambda *a, _t=task, **k: on_progress(_t, *a, **k)) if on_progress else None
            out = execute_task(task, blocking=blocking, progress=progress)
            if out.status == "busy":
                return False
            results[task.config_hash] = out
            if on_done:
                on_done(out)
            return True

        # first pass without waiting; runs another runner holds are deferred, then waited for
        deferred = [t for t in tasks if not one(t, False)]
        for t in deferred:
            one(t, True)
        return [results[t.config_hash] for t in tasks]

    # -- packs of K runs, in this process -----------------------------------------------------------------

    def _run_packs(self, tasks, on_start, on_done, on_progress) -> list[RunOutcome]:
        import torch

        torch.set_num_threads(self.threads_per_worker)
        results: dict[str, RunOutcome] = {}

        def one(group: list[RunTask], blocking: bool) -> list[RunTask]:
            """Train what can be claimed of ``group``; returns the tasks another runner holds."""
            progress = (lambda *a, _t=group[0], **k: on_progress(_t, *a, **k)) if on_progress else None
            busy = []
            for t, out in zip(group, execute_pack(group, blocking=blocking, progress=progress, on_start=on_start)):
                if out.status == "busy":
                    busy.append(t)
                    continue
                results[t.config_hash] = out
                if on_done:
                    on_done(out)
            return busy

        deferred = [t for g in pack_groups(tasks, self.pack) for t in one(g, False)]
        for g in pack_groups(deferred, self.pack):
            one(g, True)
        return [results[t.config_hash] for t in tasks]

    # -- N workers: a process pool ----------------------------------------------------------------------

    def _run_pool(self, tasks, on_start, on_done) -> list[RunOutcome]:
        results: dict[str, RunOutcome] = {}
        pending = deque((t, False) for t in tasks)
        deferred: list[RunTask] = []
        while pending or deferred:
            pool = self._pool()
            inflight: dict[Future, RunTask] = {}
            broken = False
            try:
                while (pending or inflight or deferred) and not broken:
                    if not pending and not inflight:
                        # only runs held by other runners remain: wait for their locks
                        pending.extend((t, True) for t in deferred)
                        deferred = []
                    while pending and len(inflight) < self.workers:
                        task, blocking = pending.popleft()
                        if on_start:
                            on_start(task)
                        inflight[pool.submit(execute_task, task, blocking=blocking)] = task
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        task = inflight.pop(fut)
                        try:
                            out = fut.result()
                        except BrokenProcessPool as e:  # a worker died (killed, out of memory, ...)
                            broken = True
                            out = RunOutcome(task.config_hash, task.label, "failed",
                                             f"worker process died: {e}")
                        if out.status == "busy":
                            deferred.append(task)
                            continue
                        results[task.config_hash] = out
                        if on_done:
                            on_done(out)
                if broken:  # the others in flight were lost with the pool: run them again
                    pending.extendleft((t, False) for t in inflight.values())
                    inflight.clear()
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                _kill_workers(pool)
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return [results[t.config_hash] for t in tasks]

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(), self.threads_per_worker),
        )


def _worker_init(parent_pid: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    def watch() -> None:  # die with the parent (e.g. a SIGKILLed runner), releasing the run's lock
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    procs = getattr(pool, "_processes", None) or {}
    for p in list(procs.values()):
        try:
            p.kill()
        except Exception:  # noqa: BLE001
            pass
