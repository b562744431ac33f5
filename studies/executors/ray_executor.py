"""The Ray executor: every run of a suite is one Ray task on a Ray cluster (local or remote).

``python -m studies.run --suite compare --executor ray [--ray-address ADDR]`` -- see docs/ray.md.

Ray schedules; this executor says what each run needs and keeps the results store right. Its parts:

* :mod:`~studies.executors.ray_resources` -- CPUs and GPUs per run (``--ray-cpus-per-run``, the GPU
  rule on the parameter count). Ray sets ``CUDA_VISIBLE_DEVICES`` for each task, so runs use ``cuda``.
* :mod:`~studies.executors.ray_cluster` -- importing Ray, connecting or starting a local cluster,
  shipping the code, refusing runs no node can hold.
* :mod:`~studies.executors.ray_records` -- the staging folder and the transfer of finished records:
  **the driver owns the results store**; it commits a worker's record, ``status.json`` last, while it
  holds the run's lock (:func:`studies.executors.claim_run`, as the local executor), so runners of any
  executor on one results folder still train each run exactly once.
* :mod:`~studies.executors.ray_worker` -- the task itself: train into staging, return the files.
* this module -- :class:`RayExecutor`: claim, submit, collect, commit, clean up.

**Fault tolerance.** A worker (or node) that dies is retried by Ray up to ``max_retries`` times; the
retry resumes from ``checkpoints/latest.pt`` of the staging record when it lands where that record is
visible (always on one machine; on every node with a shared ``--ray-shared-dir``), otherwise it starts
the run again. Errors *inside* a run (bad data, a diverged loss) are not retried: they are the run's
outcome, as with the local executor. Ctrl-C cancels every pending task (``ray.cancel(force=True)``),
releases the locks and shuts down a cluster this process started; the next invocation resumes the
interrupted runs from their staging checkpoints.

Ray is imported only when this executor is built; without it the error is one line.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from studies import store
from studies.executors import (
    DoneCallback,
    ExecutorError,
    ProgressCallback,
    RunOutcome,
    RunTask,
    StartCallback,
    claim_run,
)
from studies.executors.ray_cluster import INSTALL_HINT, check_feasible, connect, first_line, import_ray
from studies.executors.ray_records import commit_record, default_staging, read_record_files, seed_files
from studies.executors.ray_resources import DEFAULT_CPUS_PER_RUN, DEFAULT_GPU_RULE, GpuRule, model_params
from studies.executors.ray_worker import cleanup_in_worker, train_in_worker

__all__ = [
    "RayExecutor", "DEFAULT_MAX_RETRIES", "CLEANUP_WAIT_S",
    # re-exported from the parts
    "INSTALL_HINT", "import_ray", "DEFAULT_CPUS_PER_RUN", "DEFAULT_GPU_RULE", "GpuRule", "model_params",
    "commit_record", "default_staging", "read_record_files",
]

DEFAULT_MAX_RETRIES = 3
CLEANUP_WAIT_S = 60.0  # the driver waits this long, at the end, for the staging clean-ups


class RayExecutor:
    """Runs each task as a Ray task; see the module docstring.

    ``address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``; default
    ``$RAY_ADDRESS``), else a local cluster is started with ``threads`` CPUs (default: all usable
    cores) and shut down at the end. When Ray is already initialised in this process it is used as is.
    ``workers`` is ignored: the cluster's resources decide how many runs execute at once.
    """

    name = "ray"

    def __init__(
        self,
        workers: int = 1,
        threads: int | None = None,
        *,
        address: str | None = None,
        cpus_per_run: float = DEFAULT_CPUS_PER_RUN,
        gpus_per_run: str | float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        shared_dir: str | os.PathLike | None = None,
        ship_code: bool | None = None,
        object_store_mb: int | None = None,
        **_: object,
    ):
        self.ray = import_ray()
        try:
            self.cpus_per_run = float(cpus_per_run)
        except (TypeError, ValueError):
            raise ExecutorError(f"--ray-cpus-per-run must be a number, got {cpus_per_run!r}") from None
        if not (self.cpus_per_run > 0 and math.isfinite(self.cpus_per_run)):
            raise ExecutorError(f"--ray-cpus-per-run must be > 0, got {cpus_per_run!r}")
        try:
            self.gpu_rule = GpuRule.parse(DEFAULT_GPU_RULE if gpus_per_run is None else gpus_per_run)
        except ValueError as e:
            raise ExecutorError(f"--ray-gpus-per-run: {e}") from None
        if int(max_retries) < 0:
            raise ExecutorError(f"--ray-max-retries must be >= 0, got {max_retries}")
        self.max_retries = int(max_retries)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if threads is not None and int(threads) < 1:
            raise ExecutorError(f"local Ray cluster CPUs must be >= 1, got {threads}")
        self.local_cpus = int(threads) if threads else None
        self.shared_dir = str(Path(shared_dir).expanduser().resolve()) if shared_dir else None
        self.ship_code = ship_code
        self.object_store_mb = object_store_mb
        self.threads_per_run = max(1, math.ceil(self.cpus_per_run))
        self.commits: dict[str, int] = {}  # config hash -> records written by this driver (diagnostics)
        self._driver_git: dict[str, Any] | None = None

    def resources_for(self, task: RunTask) -> tuple[float, float]:
        """(num_cpus, num_gpus) of the task: GPUs only on a CUDA device, by the GPU rule."""
        if not str(task.device).startswith("cuda"):
            return self.cpus_per_run, 0.0
        cfg = task.config
        gpus = self.gpu_rule.gpus_for(model_params(cfg.model, getattr(cfg, "model_overrides", None)))
        if gpus <= 0:
            raise ExecutorError(f"device {task.device!r} needs GPUs per run > 0 (--ray-gpus-per-run)")
        return self.cpus_per_run, gpus

    def _connect(self) -> bool:
        """Initialise Ray unless it already is; True when this call did (and must shut it down)."""
        owns, self._driver_git = connect(self.ray, self.address, ship_code=self.ship_code,
                                         local_cpus=self.local_cpus, object_store_mb=self.object_store_mb)
        return owns

    def run(
        self,
        tasks: list[RunTask],
        *,
        on_start: StartCallback | None = None,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,  # noqa: ARG002 - no per-epoch progress from workers
    ) -> list[RunOutcome]:
        """Claim, submit and collect every task; one outcome per task, in task order."""
        ray = self.ray
        tasks = [replace(t, threads=t.threads or self.threads_per_run) for t in tasks]
        resources = {t.config_hash: self.resources_for(t) for t in tasks}  # fail early on a bad rule
        self._driver_git = None
        owns = self._connect()
        remote_train = ray.remote(train_in_worker)
        remote_cleanup = ray.remote(cleanup_in_worker)
        staging = self.shared_dir  # None: each worker uses its node's default_staging()
        results: dict[str, RunOutcome] = {}
        inflight: dict[Any, tuple[RunTask, store.RunLock, float]] = {}
        cleanups: list[Any] = []
        pending = deque((t, False) for t in tasks)
        deferred: list[RunTask] = []

        def finish(out: RunOutcome) -> None:
            results[out.config_hash] = out
            if on_done:
                on_done(out)

        try:
            check_feasible(ray, resources)
            while pending or inflight or deferred:
                while pending:
                    task, blocking = pending.popleft()
                    out, lock, fresh = claim_run(task, blocking)
                    if out is not None:
                        if out.status == "busy":
                            deferred.append(task)
                        else:
                            finish(out)
                        continue
                    if on_start:
                        on_start(task)
                    cpus, gpus = resources[task.config_hash]
                    ref = remote_train.options(
                        num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False,
                        name=f"egeunet {task.label or task.config_hash}",
                    ).remote(task, staging, seed_files(task), fresh, self._driver_git)
                    inflight[ref] = (task, lock, time.time())
                if not inflight:
                    if deferred:  # only runs held by other runners remain: wait for their locks
                        pending.extend((t, True) for t in deferred)
                        deferred = []
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    task, lock, t0 = inflight.pop(ref)
                    try:
                        out, node = self._collect(ref, task, t0)
                    finally:
                        lock.release()
                    if node is not None:
                        cleanups.append(_cleanup_ref(remote_cleanup, node, staging, task.config_hash))
                    finish(out)
        except BaseException:  # Ctrl-C (or a bug): cancel everything in flight, keep what is committed
            for ref in inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
            for _, lock, _ in inflight.values():
                lock.release()
            if owns:
                ray.shutdown()
                owns = False
            raise
        finally:
            if cleanups and ray.is_initialized():  # let the staging clean-ups finish (best effort)
                try:
                    ray.wait(cleanups, num_returns=len(cleanups), timeout=CLEANUP_WAIT_S)
                except Exception:  # noqa: BLE001
                    pass
            if owns:
                ray.shutdown()
        return [results[t.config_hash] for t in tasks]

    def _collect(self, ref: Any, task: RunTask, t0: float) -> tuple[RunOutcome, str | None]:
        """The outcome of a finished Ray task; a finished record is committed to the results store.
        Returns the outcome and the node whose staging record can be cleaned (None: keep it)."""
        ray = self.ray
        rec = store.run_dir(task.results_dir, task.config_hash)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # an error in the task's own code (not retried)
            cause = getattr(e, "cause", None)
            msg = f"{type(cause).__name__}: {cause}" if cause is not None else first_line(e)
            return RunOutcome(task.config_hash, task.label, "failed", f"error in the Ray task: {msg}",
                              wall_s=time.time() - t0, record_dir=str(rec)), None
        except ray.exceptions.RayError as e:  # worker / node died more than max_retries times, ...
            return RunOutcome(task.config_hash, task.label, "failed",
                              f"Ray task lost ({type(e).__name__}: {first_line(e)}) after {self.max_retries} "
                              "retries; the record is unfinished and the next invocation resumes it",
                              wall_s=time.time() - t0, record_dir=str(rec)), None
        if res["status"] == "error":  # an exception inside the run: like the local executor, no record
            return RunOutcome(task.config_hash, task.label, "failed", res["reason"], wall_s=res["wall_s"],
                              record_dir=str(rec)), None
        commit_record(task.results_dir, task.config_hash, res["files"])
        self.commits[task.config_hash] = self.commits.get(task.config_hash, 0) + 1
        status = "done" if res["status"] == "done" else "failed"
        return RunOutcome(task.config_hash, task.label, status, res.get("reason"), wall_s=res["wall_s"],
                          record_dir=str(rec)), res["node_id"]


def _cleanup_ref(remote_cleanup: Any, node_id: str, staging: str | None, chash: str) -> Any:
    """Submit the staging clean-up of run ``chash`` to the node that trained it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return remote_cleanup.options(
        num_cpus=0, max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(staging, chash)
