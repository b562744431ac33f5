"""The Ray executor: every run of a suite is one Ray task on a Ray cluster (local or remote).

``python -m studies.run --suite compare --executor ray [--ray-address ADDR]`` -- see docs/ray.md.

Ray schedules; this module only says what each run needs and keeps the results store right:

* **Resources.** Each run is ``@ray.remote(num_cpus=C, num_gpus=G, max_retries=R)``. ``C`` is
  ``--ray-cpus-per-run`` (default 1, fractions allowed) and is also the run's torch thread count
  (rounded up). ``G`` is 0 on ``--device cpu``; on CUDA it is ``--ray-gpus-per-run``: a number for
  every run, or a rule on the model's parameter count (default :data:`DEFAULT_GPU_RULE` =
  ``1M:0.25,5M:0.5,*:1``: models under 1 M parameters -- EGE-UNet and its variants, MALUNet,
  UNeXt-S, TransFuse-lite -- take a quarter of a GPU, so four share one; UNeXt half; UNet-32 and
  TransFuse-S a whole GPU). Ray sets ``CUDA_VISIBLE_DEVICES`` for each task, so runs use ``cuda``.
* **The driver owns the results store.** A worker trains into a *staging* folder
  (``--ray-shared-dir``, else ``$EGEUNET_RAY_STAGING``, else ``<tmp>/egeunet-ray-<user>`` on each
  node), then returns the finished record's files (relative path -> bytes). The driver writes them
  into ``<results>/runs/<config_hash>/`` atomically, file by file, ``status.json`` last, while it
  holds the run's lock (``store.RunLock``, as the local executor), so runners of any executor on
  one results folder still train each run exactly once, and a record in ``results/`` is either
  finished or absent/partial -- never half-written by a worker that died.
* **Fault tolerance.** A worker (or node) that dies is retried by Ray up to ``max_retries`` times;
  the retry resumes from ``checkpoints/latest.pt`` of the staging record when it lands where that
  record is visible (always on one machine; on every node with a shared ``--ray-shared-dir``),
  otherwise it starts the run again. Errors *inside* a run (bad data, a diverged loss) are not
  retried: they are the run's outcome, as with the local executor. Ctrl-C cancels every pending
  task (``ray.cancel(force=True)``), releases the locks and shuts down a cluster this process
  started; the next invocation resumes the interrupted runs from their staging checkpoints.
* **Code.** A local cluster (no address) runs this checkout (``PYTHONPATH``). When connecting to a
  cluster, the packages (``egeunet``, ``baselines``, ``engine``, ``studies``) are shipped as Ray
  ``py_modules`` unless ``ship_code=False`` (``--no-ray-ship-code``: they are installed there).

Ray is imported only when this executor is built; without it the error is one line.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studies import store
from studies.executors import (
    DoneCallback,
    claim_run,
    ExecutorError,
    ProgressCallback,
    RunOutcome,
    RunTask,
    StartCallback,
)

INSTALL_HINT = 'pip install -e ".[ray]"  (or: pip install "ray[default]")'
DEFAULT_CPUS_PER_RUN = 1.0
DEFAULT_GPU_RULE = "1M:0.25,5M:0.5,*:1"
DEFAULT_MAX_RETRIES = 3
LOCAL_OBJECT_STORE_MB = 512  # a local cluster's object store: records are small (Ray spills beyond)
STAGING_ENV = "EGEUNET_RAY_STAGING"
CLEANUP_LOCK_WAIT_S = 30.0  # a staging clean-up waits this long for the trainer to release the run's lock
CLEANUP_WAIT_S = 60.0  # the driver waits this long, at the end, for the clean-ups (seconds on an idle machine)
ATTEMPTS_DIR = "attempts"  # <staging>/attempts/<hash>.jsonl: one line per attempt (pid, node, time)
PACKAGES = ("zoo", "kernels", "egeunet", "baselines", "engine", "studies")


def import_ray() -> Any:
    """``ray``, or :class:`ExecutorError` with a one-line install hint."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------------------------------- resources

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


@dataclass(frozen=True)
class GpuRule:
    """GPUs per run as a function of the model's parameter count.

    ``"1M:0.25,5M:0.5,*:1"``: below 1 M parameters 0.25 GPU, below 5 M 0.5, otherwise 1. A plain
    number (``"0.5"``) gives every run that share. Thresholds take K / M / G suffixes.
    """

    steps: tuple[tuple[float, float], ...]  # (params below, gpus), ascending
    otherwise: float
    text: str

    @classmethod
    def parse(cls, text: str | float | int) -> "GpuRule":
        s = str(text).strip()
        if s.lower() == "auto":
            s = DEFAULT_GPU_RULE
        try:
            fixed = float(s)
        except ValueError:
            fixed = None
        if fixed is not None:
            return cls((), _check_gpus(fixed, s), s)
        steps: list[tuple[float, float]] = []
        otherwise: float | None = None
        for part in (p.strip() for p in s.split(",") if p.strip()):
            key, sep, val = part.partition(":")
            if not sep:
                raise ValueError(f"bad GPU rule part {part!r} in {s!r}: expected PARAMS:GPUS, e.g. {DEFAULT_GPU_RULE}")
            try:
                value = float(val)
            except ValueError:
                raise ValueError(f"bad GPU count {val!r} in GPU rule {s!r}") from None
            gpus = _check_gpus(value, s)
            if key.strip() == "*":
                otherwise = gpus
                continue
            m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([KMG]?)\s*", key, re.IGNORECASE)
            if not m:
                raise ValueError(f"bad parameter threshold {key!r} in GPU rule {s!r} (e.g. 1M, 500K, 2e6)")
            steps.append((float(m.group(1)) * _SUFFIX[m.group(2).upper()], gpus))
        if not steps and otherwise is None:
            raise ValueError(f"empty GPU rule {s!r}")
        steps.sort()
        if otherwise is None:
            otherwise = steps[-1][1]
        return cls(tuple(steps), otherwise, s)

    def gpus_for(self, params: int | None) -> float:
        if params is None:  # unknown size: the largest share of the rule
            return max([g for _, g in self.steps] + [self.otherwise])
        for below, gpus in self.steps:
            if params < below:
                return gpus
        return self.otherwise


def _check_gpus(g: float, rule: str) -> float:
    if not math.isfinite(g) or g < 0:
        raise ValueError(f"GPUs per run must be >= 0, got {g} in {rule!r}")
    if g > 1 and g != int(g):
        raise ValueError(f"GPUs per run above 1 must be whole (Ray's rule), got {g} in {rule!r}")
    return g


_PARAMS_CACHE: dict[str, int | None] = {}


def model_params(model: str, overrides: dict[str, Any] | None = None) -> int | None:
    """The model's parameter count: the registry's, or counted when the config overrides the model."""
    key = f"{model}|{sorted((overrides or {}).items())!r}"
    if key not in _PARAMS_CACHE:
        params = None
        try:
            from zoo.registry import create_model, get_entry

            if not overrides:
                params = get_entry(model).params
            if params is None:
                m = create_model(model, **(overrides or {}))
                params = int(sum(p.numel() for p in m.parameters()))
        except Exception:  # noqa: BLE001 - an unknown size falls back to the largest share
            params = None
        _PARAMS_CACHE[key] = params
    return _PARAMS_CACHE[key]


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


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- executor


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

    # -- resources -----------------------------------------------------------------------------------

    def resources_for(self, task: RunTask) -> tuple[float, float]:
        """(num_cpus, num_gpus) of the task: GPUs only on a CUDA device, by the GPU rule."""
        if not str(task.device).startswith("cuda"):
            return self.cpus_per_run, 0.0
        cfg = task.config
        gpus = self.gpu_rule.gpus_for(model_params(cfg.model, getattr(cfg, "model_overrides", None)))
        if gpus <= 0:
            raise ExecutorError(f"device {task.device!r} needs GPUs per run > 0 (--ray-gpus-per-run)")
        return self.cpus_per_run, gpus

    # -- connection ----------------------------------------------------------------------------------

    def _connect(self) -> bool:
        """Initialise Ray unless it already is; True when this call did (and must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        ship = self.ship_code if self.ship_code is not None else bool(self.address)
        runtime_env: dict[str, Any] = {}
        if ship:
            import importlib

            runtime_env["py_modules"] = [str(Path(importlib.import_module(p).__file__).parent) for p in PACKAGES]
            runtime_env["excludes"] = ["__pycache__", "*.pyc"]
        else:
            root = str(_project_root())
            pp = os.environ.get("PYTHONPATH", "")
            runtime_env["env_vars"] = {"PYTHONPATH": root + (os.pathsep + pp if pp else "")}
        self._driver_git = None
        if ship:
            from engine.env import git_info

            self._driver_git = git_info()
        common = dict(runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")
        if self.address:
            _check_reachable(self.address)  # Ray itself retries an unreachable address for many minutes
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, RuntimeError) as e:
                raise ExecutorError(
                    f"cannot connect to the Ray cluster at {self.address!r} ({_first_line(e)}); is it running "
                    "(ray status)? A cluster with token authentication also needs RAY_AUTH_MODE=token here"
                ) from None
        else:
            from studies.executors.local import default_threads

            mb = self.object_store_mb or LOCAL_OBJECT_STORE_MB
            # address="local": a new cluster even when `ray start` left one running on this machine
            ray.init(address="local", num_cpus=self.local_cpus or default_threads(), include_dashboard=False,
                     object_store_memory=int(mb) * 1024 * 1024, **common)
        return True

    # -- main loop -----------------------------------------------------------------------------------

    def run(
        self,
        tasks: list[RunTask],
        *,
        on_start: StartCallback | None = None,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,  # noqa: ARG002 - no per-epoch progress from workers
    ) -> list[RunOutcome]:
        ray = self.ray
        tasks = [replace(t, threads=t.threads or self.threads_per_run) for t in tasks]
        resources = {t.config_hash: self.resources_for(t) for t in tasks}  # fail early on a bad rule
        self._driver_git = None
        owns = self._connect()
        remote_train = ray.remote(_ray_train)
        remote_cleanup = ray.remote(_ray_cleanup)
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
            self._check_feasible(resources)
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
                    ).remote(task, staging, _seed_files(task), fresh, self._driver_git)
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
                        cleanups.append(_cleanup_ref(ray, remote_cleanup, node, staging, task.config_hash))
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

    def _check_feasible(self, resources: dict[str, tuple[float, float]]) -> None:
        """Refuse runs that no node of the cluster can hold (Ray would keep them pending forever)."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for cpus, gpus in sorted(set(resources.values())):
            if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
                have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "no nodes"
                raise ExecutorError(f"no node of the Ray cluster can run a run needing {cpus:g} CPU + {gpus:g} GPU "
                                    f"(nodes: {have}); lower --ray-cpus-per-run / --ray-gpus-per-run, use "
                                    "--device cpu, or add nodes")

    def _collect(self, ref: Any, task: RunTask, t0: float) -> tuple[RunOutcome, str | None]:
        """The outcome of a finished Ray task; a finished record is committed to the results store.
        Returns the outcome and the node whose staging record can be cleaned (None: keep it)."""
        ray = self.ray
        rec = store.run_dir(task.results_dir, task.config_hash)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # an error in the task's own code (not retried)
            cause = getattr(e, "cause", None)
            msg = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(e)
            return RunOutcome(task.config_hash, task.label, "failed", f"error in the Ray task: {msg}",
                              wall_s=time.time() - t0, record_dir=str(rec)), None
        except ray.exceptions.RayError as e:  # worker / node died more than max_retries times, ...
            return RunOutcome(task.config_hash, task.label, "failed",
                              f"Ray task lost ({type(e).__name__}: {_first_line(e)}) after {self.max_retries} "
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


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A quick TCP connect to ``HOST:PORT`` / ``ray://HOST:PORT`` (``auto`` and others are left to Ray)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {e.strerror or e}; is it running "
                            "(ray status on its head node) and is the port open from here?") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _cleanup_ref(ray: Any, remote_cleanup: Any, node_id: str, staging: str | None, chash: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return remote_cleanup.options(
        num_cpus=0, max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(staging, chash)


# ------------------------------------------------------------------------------------------- driver side


def _seed_files(task: RunTask) -> dict[str, bytes] | None:
    """An unfinished record in the results store with a checkpoint (e.g. a killed local-executor run):
    its files, so that the worker resumes it instead of starting over."""
    rec = store.run_dir(task.results_dir, task.config_hash)
    if not (rec / "checkpoints" / "latest.pt").is_file() or store.read_status(rec) is not None:
        return None
    return read_record_files(rec)


def _safe_rel(rel: str) -> Path:
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


def commit_record(results: str | os.PathLike, chash: str, files: dict[str, bytes]) -> Path:
    """Write a worker's finished record into ``<results>/runs/<chash>/``: every file atomically,
    stale files of an earlier partial record removed, ``status.json`` last (call with the run's lock)."""
    from engine.record import STATUS_FILE, atomic_write_bytes

    if STATUS_FILE not in files:
        raise ValueError(f"record {chash} from a worker has no {STATUS_FILE}")
    names = {_safe_rel(r).as_posix() for r in files}
    rec = store.run_dir(results, chash)
    rec.mkdir(parents=True, exist_ok=True)
    (rec / STATUS_FILE).unlink(missing_ok=True)  # a record without status.json is unfinished meanwhile
    for p in sorted(rec.rglob("*"), reverse=True):
        if p.is_file() and p.relative_to(rec).as_posix() not in names:
            p.unlink()
    for rel, data in files.items():
        if rel != STATUS_FILE:
            atomic_write_bytes(rec / _safe_rel(rel), data)
    atomic_write_bytes(rec / STATUS_FILE, files[STATUS_FILE])
    return rec


# ------------------------------------------------------------------------------------------- worker side


def _worker_device(device: str) -> str:
    """Ray maps the task's GPUs to ``CUDA_VISIBLE_DEVICES``: an index from the driver means nothing here."""
    return "cuda" if str(device).startswith("cuda") else str(device)


def _ray_train(task: RunTask, staging: str | None, seed_files: dict[str, bytes] | None, fresh: bool,
               driver_git: dict[str, Any] | None) -> dict[str, Any]:
    """One run inside a Ray worker: train into the staging record (resuming it), return its files."""
    import json

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
                    atomic_write_bytes(rec / _safe_rel(rel), data)
        log = Path(staging) / ATTEMPTS_DIR / f"{chash}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "node_id": node_id,
                                "time": time.time(), "label": task.label}) + "\n")
        _prepare_worker()
        from engine.train import run_training

        try:
            res = run_training(task.config, staging, data_root=task.data_root, device=_worker_device(task.device),
                               threads=task.threads, progress=False, fast=task.fast,
                               restart=task.restart, code_version=driver_git)
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
    global _PREPARED
    if _PREPARED:
        return
    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    _PREPARED = True


def _ray_cleanup(staging: str | None, chash: str) -> bool:
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
