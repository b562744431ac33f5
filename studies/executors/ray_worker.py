"""What runs inside a Ray worker: one training run into the staging folder, and its clean-up.

:func:`train_in_worker` takes the run's staging lock, seeds the staging record from the driver's
unfinished one when it has none, logs the attempt (``<staging>/attempts/<hash>.jsonl``: pid, node,
time) and trains, resuming ``checkpoints/latest.pt`` when a retry lands where that record is visible.
An exception inside the run is returned as its outcome (status ``error``), not raised: Ray retries
only lost workers, never a run's own error. :func:`cleanup_in_worker` deletes a committed run's
staging record on the node that trained it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from studies import store
from studies.executors import RunTask
from studies.executors.ray_records import default_staging, read_record_files, safe_rel

__all__ = ["ATTEMPTS_DIR", "CLEANUP_LOCK_WAIT_S", "train_in_worker", "cleanup_in_worker", "worker_device"]

ATTEMPTS_DIR = "attempts"  # <staging>/attempts/<hash>.jsonl: one line per attempt (pid, node, time)
CLEANUP_LOCK_WAIT_S = 30.0  # a staging clean-up waits this long for the trainer to release the run's lock


def worker_device(device: str) -> str:
    """Ray maps the task's GPUs to ``CUDA_VISIBLE_DEVICES``: an index from the driver means nothing here."""
    return "cuda" if str(device).startswith("cuda") else str(device)


def train_in_worker(task: RunTask, staging: str | None, seed_files: dict[str, bytes] | None, fresh: bool,
                    driver_git: dict[str, Any] | None) -> dict[str, Any]:
    """One run inside a Ray worker: train into the staging record (resuming it), return its files."""
    import ray

    from engine.record import STATUS_FILE, atomic_write_bytes

    t0 = time.time()
    staging = staging or default_staging()
    node_id = ray.get_runtime_context().get_node_id()
    chash = task.config_hash
    lock = store.RunLock(staging, chash)
    lock.acquire(blocking=True)  # a stale attempt still finishing, or a second driver on this node
    try:
        rec = store.run_dir(staging, chash)
        if fresh and store.read_status(rec) is not None:
            shutil.rmtree(rec)
        if seed_files and store.read_status(rec) is None and not (rec / "checkpoints" / "latest.pt").exists():
            for rel, data in seed_files.items():
                if rel != STATUS_FILE:
                    atomic_write_bytes(rec / safe_rel(rel), data)
        log = Path(staging) / ATTEMPTS_DIR / f"{chash}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "node_id": node_id,
                                "time": time.time(), "label": task.label}) + "\n")
        _prepare_worker()
        from engine.train import run_training

        try:
            res = run_training(task.config, staging, data_root=task.data_root, device=worker_device(task.device),
                               threads=task.threads, progress=False, fast=task.fast,
                               restart=task.restart, cuda_graph=task.cuda_graph, code_version=driver_git)
        except Exception as e:  # noqa: BLE001 - a run's own error is its outcome, not a reason to retry
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
            return {"status": "error", "reason": f"{type(e).__name__}: {e}{where}", "wall_s": time.time() - t0,
                    "node_id": node_id}
        return {"status": res.status, "reason": res.reason, "files": read_record_files(rec),
                "wall_s": time.time() - t0, "node_id": node_id, "host": socket.gethostname(), "pid": os.getpid()}
    finally:
        lock.release()


_PREPARED = False


def _prepare_worker() -> None:
    """Once per worker process: one inter-op thread (the run's own thread count is set by the engine)."""
    global _PREPARED
    if _PREPARED:
        return
    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started in this process
        pass
    _PREPARED = True


def cleanup_in_worker(staging: str | None, chash: str) -> bool:
    """Delete a committed run's staging record (on the node that trained it) unless a run holds it."""
    staging = staging or default_staging()
    lock = store.RunLock(staging, chash)
    # the trainer releases the lock just after returning its files: wait for that, not for a live run
    if not lock.acquire(blocking=True, timeout=CLEANUP_LOCK_WAIT_S):
        return False
    try:
        rec = store.run_dir(staging, chash)
        if rec.exists() and store.read_status(rec) is not None:
            shutil.rmtree(rec, ignore_errors=True)
        (Path(staging) / ATTEMPTS_DIR / f"{chash}.jsonl").unlink(missing_ok=True)
        return True
    finally:
        lock.release()
