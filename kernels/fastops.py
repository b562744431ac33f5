"""The fused C++ kernels of the fast path (``kernels/csrc/fastops.cpp``), compiled on first use.

:func:`ops` returns the compiled module, or ``None`` when it cannot be had: no C++ compiler,
a failed build, or ``EGEUNET_FAST_EXT=0`` in the environment. The fast path then keeps its
pure-PyTorch kernels (same numbers to float32 round-off, slower). The build is cached under
``torch.utils.cpp_extension``'s folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) by a hash of the source, flags, torch and Python; the first build
takes a minute or two, later processes import it directly. A build that starts says so on stderr
through :data:`NOTICE` (replace it to show or silence the message elsewhere).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

SOURCE = Path(__file__).with_name("csrc") / "fastops.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, ModuleType | None] = {}
BUILD_MESSAGE = "building fast kernels once (a minute or two, the first time only)…"


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: called with :data:`BUILD_MESSAGE` when a build of the kernels starts (not when a finished one is imported)
NOTICE: Callable[[str], None] | None = _notice


def enabled() -> bool:
    """False when ``EGEUNET_FAST_EXT`` is set to 0/false/no/off."""
    return os.environ.get("EGEUNET_FAST_EXT", "1").strip().lower() not in ("0", "false", "no", "off")


def ops() -> ModuleType | None:
    """The compiled kernels, built once per process (None where unavailable; see the module notes)."""
    if not enabled():
        return None
    if "mod" in _STATE:
        return _STATE["mod"]
    with _LOCK:
        if "mod" not in _STATE:
            _STATE["mod"] = _build()
    return _STATE["mod"]


# -fno-math-errno: without it the per-pixel 1/sqrt loops stay scalar (sqrtf must be able to set errno);
# vectorised sqrt and division are correctly rounded, so the results do not change
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]
STALE_LOCK_S = 600  # a build lock older than this was left by a killed process


def _build() -> ModuleType | None:
    try:
        return _load_or_build()
    except Exception as exc:  # no compiler, no ninja, a build error: fall back to the PyTorch kernels
        lines = str(exc).splitlines()
        errors = [ln.strip() for ln in lines if "error" in ln.lower()][-2:]  # the compiler's own words
        why = "; ".join(errors) if errors else (lines[0] if lines else "")
        warnings.warn(f"egeunet.fast: the fused C++ kernels could not be built ({type(exc).__name__}: {why}); "
                      f"using the PyTorch kernels (slower, same numbers). Install a C++ compiler (and ninja) "
                      f"to get them, or set EGEUNET_FAST_EXT=0 to silence this.", RuntimeWarning, stacklevel=3)
        return None


def _load_or_build() -> ModuleType:
    """Import the build for this source, flags, torch and Python if one exists, else build it.

    The module name carries a hash of all of them, so a finished build is imported directly, without
    ``torch.utils.cpp_extension.load`` (which takes a lock file and re-runs ninja on every load: a
    process killed there would leave the lock behind and every later load would wait on it). A marker
    file written after a successful build tells a finished build from one being linked right now.
    """
    import hashlib
    import importlib.machinery
    import importlib.util
    import platform

    import torch
    from torch.utils.cpp_extension import _get_build_directory, load

    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), torch.__version__.encode(),
                                     sys.version.encode(), platform.machine().encode()])).hexdigest()[:12]
    name = f"egeunet_fastops_{key}"
    build_dir = Path(_get_build_directory(name, verbose=False))
    lib = build_dir / f"{name}.so"
    marker = build_dir / "built.ok"
    if not (lib.exists() and marker.exists()):
        lock = build_dir / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
        if NOTICE is not None:
            NOTICE(BUILD_MESSAGE)
        module = load(name=name, sources=[str(SOURCE)], extra_cflags=FLAGS, build_directory=str(build_dir),
                      verbose=False)
        marker.write_text(f"{name}\n")
        return module
    loader = importlib.machinery.ExtensionFileLoader(name, str(lib))
    spec = importlib.util.spec_from_file_location(name, str(lib), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def active() -> bool:
    """Whether the fused kernels are in use in this process (built, and not switched off)."""
    return ops() is not None
