"""The fused C++ kernels of the fast path (``engine/csrc/fastops.cpp``), compiled on first use.

:func:`ops` returns the compiled module, or ``None`` when it cannot be had: no C++ compiler,
a failed build, or ``EGEUNET_FAST_EXT=0`` in the environment. The fast path then keeps its
pure-PyTorch kernels (same numbers to float32 round-off, slower). The build is cached by
``torch.utils.cpp_extension`` (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``);
the first build takes about a minute.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("csrc") / "fastops.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, ModuleType | None] = {}


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


def _build() -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import load

        return load(name="egeunet_fastops", sources=[str(SOURCE)],
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
                    verbose=False)
    except Exception as exc:  # no compiler, no ninja, a build error: fall back to the PyTorch kernels
        warnings.warn(f"engine.fast: the fused C++ kernels could not be built ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); using the PyTorch kernels "
                      f"(slower, same numbers). Set EGEUNET_FAST_EXT=0 to silence this.", RuntimeWarning,
                      stacklevel=3)
        return None
