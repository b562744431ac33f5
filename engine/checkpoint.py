"""Checkpoints of a run record and the rules for resuming one.

``checkpoints/latest.pt`` is written atomically at the end of every epoch with model, optimizer,
scheduler, GradScaler, every RNG state (global + data-order + augmentation), the history and the
selected (best) weights: everything a resumed run needs to continue bit for bit (on CPU, same seed
and threads). ``checkpoints/best.pt`` holds the selected epoch's weights and the selection value.

A resume is refused (:class:`ResumeRefused`, the record left untouched) when ``latest.pt`` cannot be
read or the session that started the run (``env.json`` ``sessions[0]``) used another device type,
precision mode, numerics version or path (:func:`engine.numerics.resume_key`); see
:func:`resume_conflict`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.env import capture_rng, restore_rng
from engine.fastview import uses_fast_path
from engine.numerics import precision_mode, resume_key, training_path
from engine.record import (
    RecordError, atomic_torch_save, load_record, read_metrics, read_status, record_dir_for,
    update_metrics,
)

if TYPE_CHECKING:
    from engine.config import RunConfig

__all__ = [
    "CHECKPOINT_FORMAT", "LATEST", "BEST", "ResumeRefused", "resume_conflict", "training_state", "save_latest",
    "save_best", "load_latest", "restore_training", "state_to_cpu", "file_sha256", "checkpoint_facts",
    "stamp_best_checkpoint",
]

CHECKPOINT_FORMAT = 1
LATEST = "latest.pt"
BEST = "best.pt"


class ResumeRefused(RuntimeError):
    """An unfinished record cannot be resumed here (other device type, precision, numerics version or path, or
    an unreadable checkpoint); the record is left untouched. ``restart=True`` starts the run over."""


def state_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """A detached CPU copy of a ``state_dict`` (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """What a record stores of its ``best.pt`` (``metrics.json`` ``best_checkpoint``): size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def stamp_best_checkpoint(record_dir: Path) -> str | None:
    """Store the size and SHA-256 of ``best.pt`` in a finished record that predates them (schema 1).

    Such a record cannot keep a ``best.pt`` over the 2 MB rule out of git, since a recreated file could not be
    checked. The file is taken as the run's own only when it names the record's run and its selected epoch;
    returns why nothing was stamped (already stored, unfinished, no or foreign file), or None once stamped.
    """
    if read_status(record_dir) is None:
        return "unfinished"
    metrics = read_metrics(record_dir)
    if not metrics:
        return f"the metrics of {record_dir} cannot be read"
    if metrics.get("best_checkpoint"):
        return "already stored"
    best = record_dir / "checkpoints" / BEST
    if not best.is_file():
        return f"{best} is missing"
    try:
        ck = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt file
        return f"{best} cannot be read ({type(e).__name__})"
    if ck.get("config_hash") != record_dir.name or ck.get("epoch") != metrics.get("best_epoch"):
        return (f"{best} holds run {ck.get('config_hash')} epoch {ck.get('epoch')}, the record selected "
                f"run {record_dir.name} epoch {metrics.get('best_epoch')}")
    update_metrics(record_dir, best_checkpoint=checkpoint_facts(best))
    return None


def training_state(*, config_hash: str, epoch: int, model: nn.Module, optimizer: Any, scheduler: Any,
                   scaler: Any, data_gen: torch.Generator, aug_gen: torch.Generator, run_angle: float | None,
                   history: list[dict[str, Any]], best: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The content of ``latest.pt`` after ``epoch`` (the global RNG states are captured now)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config_hash": config_hash,
        "epoch": epoch,
        "model": state_to_cpu(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng(),
        "data_gen": data_gen.get_state(),
        "aug_gen": aug_gen.get_state(),
        "run_angle": run_angle,
        "history": history,
        "best_epoch": best["epoch"],
        "best_value": best["value"],
        "best_model": best["state"],
        "wall_s": wall_s,
    }


def save_latest(ckpt_dir: Path, state: dict[str, Any]) -> None:
    """Write ``latest.pt`` atomically."""
    atomic_torch_save(ckpt_dir / LATEST, state)


def save_best(ckpt_dir: Path, config_hash: str, best: dict[str, Any], criterion: str) -> None:
    """Write ``best.pt`` (the selected weights, their epoch, value and criterion) atomically."""
    atomic_torch_save(ckpt_dir / BEST, {
        "format": CHECKPOINT_FORMAT, "config_hash": config_hash, "epoch": best["epoch"],
        "value": best["value"], "criterion": criterion, "model": best["state"],
    })


def load_latest(ckpt_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The stored ``latest.pt`` of run ``config_hash``, or None when there is none.

    An unreadable file raises :class:`ResumeRefused`; a checkpoint of another run raises ``RuntimeError``.
    """
    path = ckpt_dir / LATEST
    if not path.exists():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt file
        raise ResumeRefused(f"run {config_hash}: checkpoint {path} cannot be read ({type(e).__name__}); rerun "
                            f"with --restart to start this run over") from None
    if ck.get("config_hash") != config_hash:
        raise RuntimeError(f"{path} belongs to run {ck.get('config_hash')}, not {config_hash}")
    return ck


def restore_training(ck: dict[str, Any], *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                     data_gen: torch.Generator, aug_gen: torch.Generator) -> None:
    """Load a :func:`training_state` into the run's objects and restore the global RNG states."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    restore_rng(ck["rng"])
    data_gen.set_state(ck["data_gen"])
    aug_gen.set_state(ck["aug_gen"])


def resume_conflict(cfg: "RunConfig", results_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                    fast: bool | None = None, packed: bool = False, graph: bool = False) -> str | None:
    """Why the unfinished record of ``cfg`` (data resolved) cannot resume here, or None.

    The session that started the run (``env.json`` ``sessions[0]``) fixes the device type, precision mode,
    numerics version and path (:attr:`engine.record.RunRecord.started_resume_key`); any difference, a record
    from before these were recorded, an unreadable ``latest.pt`` or record file is a conflict. A finished or
    absent record has none.
    """
    rdir = record_dir_for(results_dir, cfg.config_hash())
    if read_status(rdir) is not None or not rdir.exists():
        return None
    latest = rdir / "checkpoints" / LATEST
    if not latest.exists():
        return None  # nothing trained yet: starting over loses nothing
    try:
        torch.load(latest, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        return (f"run {rdir.name}: checkpoint {latest} cannot be read ({type(e).__name__}); "
                f"rerun with --restart to start this run over")
    try:
        started = load_record(rdir).started_resume_key
    except RecordError as e:
        return f"run {rdir.name}: {e}"
    use_fast = uses_fast_path(cfg.model, device, fast)
    path = training_path(fast=use_fast, packed=packed, graph=graph)
    if path == "fast" and started.get("path") == "compiled":
        path = "compiled"  # the fast view or torch.compile is chosen once, when a run starts (engine.fastview)
    want = resume_key(device, precision_mode(device, cfg.resolved_recipe().amp), use_fast, path=path)
    diffs = [f"{k} {started.get(k)!r} -> {v!r}" for k, v in want.items() if started.get(k) != v]
    if not diffs:
        return None
    return (f"run {rdir.name} ({cfg.model} seed {cfg.seed}) started with other numerics: {'; '.join(diffs)}; "
            f"resume it where it started, or rerun with --restart to start it over")
