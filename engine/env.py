"""Run environment: code version, library versions, device; the run's torch settings; seeding and RNG state.

* :func:`collect_env` / :func:`env_record` build ``env.json`` of every run record (docs/protocol.md §9 R1:
  every run is defined by a stored config, seed, code version and environment), one entry per session
  (a resumed run appends one) with the key a resume must match (:func:`engine.numerics.resume_key`).
* :func:`runtime` sets the thread count and determinism switches for one run and restores them after.
* :func:`seed_everything`, :func:`derived_seed`, :func:`capture_rng` / :func:`restore_rng`: the seeds and
  RNG states that make a run, and a resumed run, repeat bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["collect_env", "env_record", "git_info", "runtime", "seed_everything", "capture_rng", "restore_rng",
           "derived_seed"]

_REPO = Path(__file__).resolve().parents[1]

#: the paths whose changes can change a result: a run is ``git_dirty`` only when one of them differs from HEAD
CODE_PATHS = ("zoo", "kernels", "egeunet", "baselines", "engine", "studies", "pyproject.toml")


def git_info(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` of the checkout holding this package.

    ``dirty``: a file under :data:`CODE_PATHS` differs from the commit (results and reports written by the
    suite itself do not make a run dirty).

    ``$EGEUNET_GIT_COMMIT`` (and ``$EGEUNET_GIT_DIRTY=1``), when set, name the commit instead: for a copy
    of the tree without its ``.git`` or with a stale one.
    """
    cwd = str(repo or _REPO)

    def run(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    # A copied tree (a batch node, a GPU box) may carry no .git or a stale one: the launcher that copied
    # it names the commit instead, and that wins.
    named = os.environ.get("EGEUNET_GIT_COMMIT", "").strip()
    if named:
        return {"commit": named, "dirty": os.environ.get("EGEUNET_GIT_DIRTY", "0").strip() not in ("", "0")}
    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    # untracked, non-ignored files count (they may be code); results, reports, docs and tests do not
    status = run("status", "--porcelain", "--", *CODE_PATHS)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_env(device: str | torch.device = "cpu", threads: int | None = None,
                code_version: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, device and host facts for ``env.json``. ``code_version``: ``{"commit", "dirty"}`` of the
    code that runs, when the caller knows it better than this checkout (a copy of the packages without .git
    shipped to a cluster worker); default :func:`git_info`."""
    dev = torch.device(device)
    code = git_info()
    if code_version and code_version.get("commit") and code.get("commit") is None:
        code = {"commit": code_version["commit"], "dirty": code_version.get("dirty")}
    info: dict[str, Any] = {
        **{f"git_{k}": v for k, v in code.items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(dev),
        "device_name": _cpu_name(),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "cpu_count": os.cpu_count(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    return info


def env_record(prev: dict[str, Any], device: torch.device, threads: int | None,
               code_version: dict[str, Any] | None, key: dict[str, Any], *, start_epoch: int, fast_path: bool,
               amp: bool, fused_kernels: bool) -> dict[str, Any]:
    """The new ``env.json``: this session's :func:`collect_env`, with a session entry (resume ``key``, host,
    device, code version, first epoch, path) appended to those of ``prev`` (the stored ``env.json`` or {})."""
    env = collect_env(device, threads, code_version)
    sessions = list(prev.get("sessions", []))
    sessions.append({**key, "time_utc": env["time_utc"], "hostname": env["hostname"], "device": env["device"],
                     "threads": env["threads"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
                     "start_epoch": start_epoch, "fast_path": fast_path, "amp": amp, "fused_kernels": fused_kernels})
    env["sessions"] = sessions
    env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    env["amp"] = amp
    env.update(key)
    env["fast_path"] = fast_path
    env["fused_kernels"] = fused_kernels
    return env


@contextlib.contextmanager
def runtime(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Torch CPU threads and determinism switches for one run; the previous settings are restored after."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if threads:
            torch.set_num_threads(int(threads))
        # warn_only: an op without a deterministic kernel (some baselines) warns instead of killing the run
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = True  # as the official code
        torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


def derived_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for a named random stream of a run (``data``, ``augment``, ...)."""
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Global RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
