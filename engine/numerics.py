"""Numerics identity of a run: the numerics version of this code, the precision mode, and the golden fingerprint.

:data:`NUMERICS_VERSION` names the training numerics of this code (data pipeline, augmentation, model forward and
backward on both paths, loss, optimizer, schedule). Every run records it in ``env.json``; a run is never resumed
under another version, device type, precision mode or path (:func:`resume_key`).

The golden fingerprint (:func:`golden_fingerprint`) trains a fixed tiny configuration a few steps on the
synthetic data, plain path and fast path separately, and summarises the losses and the final weights. The values
for the current version are committed in ``tests/data/numerics_fingerprint.json`` and checked by
``tests/test_numerics.py``: a change that alters training numerics fails that test until the version is bumped
and the file rewritten (``python -m engine.numerics --write tests/data/numerics_fingerprint.json``); a refactor
that keeps the numbers keeps the version, so finished runs stay valid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["NUMERICS_VERSION", "precision_mode", "resume_key", "training_path", "golden_fingerprint",
           "compare_fingerprints", "GOLDEN_RTOL"]

#: bump on any change of training numerics (then rewrite the committed golden fingerprint)
NUMERICS_VERSION = 1

#: relative tolerance of the golden comparison: float32 round-off of another CPU's kernels stays far below it,
#: while any change of the recipe, loss, data order or initialisation moves the values by orders more
GOLDEN_RTOL = 2e-4

_PROJECTIONS = 8


def precision_mode(device: str | torch.device, amp: bool) -> str:
    """``amp-fp16`` (autocast on CUDA), ``tf32`` (CUDA float32 with TF32 matmuls or convs) or ``fp32``."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "fp32"
    if amp:
        return "amp-fp16"
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "fp32"


def training_path(*, fast: bool, packed: bool = False, graph: bool = False, compiled: bool = False) -> str:
    """The name of a run's training path: ``packed`` (:mod:`engine.packed`), ``graph`` (a CUDA-graph-captured
    step, :mod:`engine.graphs`), ``compiled`` (``torch.compile`` where it pays, :mod:`zoo.paths`), ``fast`` (the
    registry's fast view) or ``plain``."""
    return "packed" if packed else "graph" if graph else "compiled" if fast and compiled else \
        "fast" if fast else "plain"


def resume_key(device: str | torch.device, precision: str, fast_path: bool, *,
               path: str | None = None) -> dict[str, Any]:
    """What a resumed session must share with the session that started the run. ``path``: ``packed`` for
    runs trained in lockstep by :mod:`engine.packed`, ``graph`` for a captured step (default: ``fast`` or
    ``plain`` from ``fast_path``; see :func:`training_path`)."""
    return {"device_type": torch.device(device).type, "precision": precision,
            "numerics_version": NUMERICS_VERSION, "path": path or training_path(fast=fast_path)}


def _weights_summary(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for _, t in sorted(state.items())
                      if t.is_floating_point()])
    gen = torch.Generator().manual_seed(1234)
    proj = torch.randn(_PROJECTIONS, flat.numel(), generator=gen, dtype=torch.float64) @ flat
    raw = b"".join(t.detach().contiguous().numpy().tobytes() for _, t in sorted(state.items()))
    return {"sum": float(flat.sum()), "sum_sq": float((flat * flat).sum()), "projections": proj.tolist(),
            "sha256": hashlib.sha256(raw).hexdigest()}


def golden_fingerprint(fast: bool) -> dict[str, Any]:
    """Train the golden configuration (EGE-UNet, synthetic smoke budget, seed 0, 1 thread) on one path."""
    from engine.record import load_record
    from engine.train import RunConfig, run_training

    cfg = RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_training(cfg, tmp, threads=1, progress=False, profile=False, fast=fast)
        if res.status != "done":
            raise RuntimeError(f"golden run failed: {res.reason}")
        rows = load_record(res.record_dir).history
        state = torch.load(res.record_dir / "checkpoints" / "latest.pt", map_location="cpu",
                           weights_only=True)["model"]
    return {
        "numerics_version": NUMERICS_VERSION,
        "path": training_path(fast=fast),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__.split("+")[0],
        "train_loss": [float(r["train_loss"]) for r in rows],
        "val_loss": [float(r["val_loss"]) for r in rows],
        "test_pooled_dsc": float(res.metrics["test"]["pooled_dsc"]),
        "weights": _weights_summary(state),
    }


def compare_fingerprints(expected: dict[str, Any], got: dict[str, Any], rtol: float = GOLDEN_RTOL) -> list[str]:
    """Differences between two fingerprints beyond ``rtol`` (empty when they agree)."""
    out: list[str] = []
    if expected.get("numerics_version") != got.get("numerics_version"):
        out.append(f"numerics_version {expected.get('numerics_version')} != {got.get('numerics_version')}")

    def close(a: float, b: float, scale: float) -> bool:
        return abs(a - b) <= rtol * max(abs(a), abs(b), scale)

    for key in ("train_loss", "val_loss"):
        a, b = expected[key], got[key]
        if len(a) != len(b) or not all(close(x, y, 1e-3) for x, y in zip(a, b)):
            out.append(f"{key} {a} != {b}")
    if not close(expected["test_pooled_dsc"], got["test_pooled_dsc"], 1e-3):
        out.append(f"test_pooled_dsc {expected['test_pooled_dsc']} != {got['test_pooled_dsc']}")
    ew, gw = expected["weights"], got["weights"]
    scale = ew["sum_sq"] ** 0.5
    for key in ("sum", "sum_sq"):
        if not close(ew[key], gw[key], scale):
            out.append(f"weights.{key} {ew[key]} != {gw[key]}")
    if not all(close(x, y, scale) for x, y in zip(ew["projections"], gw["projections"])):
        out.append("weights.projections differ")
    same_machine = (expected.get("cpu_capability") == got.get("cpu_capability")
                    and expected.get("torch") == got.get("torch"))
    if same_machine and ew["sha256"] != gw["sha256"]:
        out.append(f"weights.sha256 {ew['sha256'][:12]} != {gw['sha256'][:12]} (same CPU capability and torch)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.numerics",
                                description="Compute the golden numerics fingerprint (plain and fast path).")
    p.add_argument("--write", metavar="FILE", help="write the fingerprints to FILE (after a numerics version bump)")
    args = p.parse_args(argv)
    data = {"numerics_version": NUMERICS_VERSION,
            "paths": {name: golden_fingerprint(fast) for name, fast in (("plain", False), ("fast", True))}}
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
