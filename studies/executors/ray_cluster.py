"""The Ray cluster a suite runs on: importing Ray, connecting (or starting a local cluster), and whether
the cluster can hold a run at all.

* **Code.** A local cluster (no address) runs this checkout (``PYTHONPATH``). When connecting to a
  cluster, the packages (:data:`PACKAGES`) are shipped as Ray ``py_modules`` unless ``ship_code=False``
  (``--no-ray-ship-code``: they are installed there); the driver's code version then travels with each
  task, because the shipped copies carry no ``.git``.
* **Errors.** Ray missing, an unreachable address or a run no node can hold are one-line
  :class:`~studies.executors.ExecutorError` messages (CLIs exit 2); Ray itself would retry an
  unreachable address for minutes or keep an infeasible task pending forever.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from pathlib import Path
from typing import Any

from studies.executors import ExecutorError

__all__ = ["INSTALL_HINT", "PACKAGES", "LOCAL_OBJECT_STORE_MB", "import_ray", "connect", "check_feasible",
           "check_reachable", "first_line"]

INSTALL_HINT = 'pip install -e ".[ray]"  (or: pip install "ray[default]")'
LOCAL_OBJECT_STORE_MB = 512  # a local cluster's object store: records are small (Ray spills beyond)
PACKAGES = ("zoo", "kernels", "egeunet", "baselines", "engine", "studies")


def import_ray() -> Any:
    """``ray``, or :class:`ExecutorError` with a one-line install hint."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 300 characters."""
    return (str(e).strip().splitlines() or [""])[0][:300]


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def connect(ray: Any, address: str | None, *, ship_code: bool | None, local_cpus: int | None,
            object_store_mb: int | None) -> tuple[bool, dict[str, Any] | None]:
    """Initialise Ray unless it already is. Returns ``(owns, driver_git)``: whether this call initialised it
    (and must shut it down), and the driver's ``{"commit", "dirty"}`` when the code is shipped (else None)."""
    if ray.is_initialized():
        return False, None
    ship = ship_code if ship_code is not None else bool(address)
    runtime_env: dict[str, Any] = {}
    driver_git = None
    if ship:
        from engine.env import git_info

        runtime_env["py_modules"] = [str(Path(importlib.import_module(p).__file__).parent) for p in PACKAGES]
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
        driver_git = git_info()
    else:
        root = str(_project_root())
        pp = os.environ.get("PYTHONPATH", "")
        runtime_env["env_vars"] = {"PYTHONPATH": root + (os.pathsep + pp if pp else "")}
    common = dict(runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError) as e:
            raise ExecutorError(
                f"cannot connect to the Ray cluster at {address!r} ({first_line(e)}); is it running "
                "(ray status)? A cluster with token authentication also needs RAY_AUTH_MODE=token here"
            ) from None
    else:
        from studies.executors.local import default_threads

        mb = object_store_mb or LOCAL_OBJECT_STORE_MB
        # address="local": a new cluster even when `ray start` left one running on this machine
        ray.init(address="local", num_cpus=local_cpus or default_threads(), include_dashboard=False,
                 object_store_memory=int(mb) * 1024 * 1024, **common)
    return True, driver_git


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A quick TCP connect to ``HOST:PORT`` / ``ray://HOST:PORT`` (``auto`` and others are left to Ray)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {e.strerror or e}; is it running "
                            "(ray status on its head node) and is the port open from here?") from None


def check_feasible(ray: Any, resources: dict[str, tuple[float, float]]) -> None:
    """Refuse runs that no live node of the cluster can hold (Ray would keep them pending forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for cpus, gpus in sorted(set(resources.values())):
        if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "no nodes"
            raise ExecutorError(f"no node of the Ray cluster can run a run needing {cpus:g} CPU + {gpus:g} GPU "
                                f"(nodes: {have}); lower --ray-cpus-per-run / --ray-gpus-per-run, use "
                                "--device cpu, or add nodes")
