"""Training: the official recipe (docs/protocol.md §4), budgets, run configs, resumable and deterministic runs.

Quick use::

    from engine.train import RunConfig, run_training
    res = run_training(RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0), "results")
    res.status, res.metrics["test"]["pooled_dsc"], res.record_dir

**Recipe** (:class:`Recipe`, paper defaults): AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
decay 1e-2, one parameter group); CosineAnnealingLR(T_max = 50, eta_min = 1e-5) stepped once after
every epoch -- with 300 epochs this cosine is *periodic with period 100 epochs* (lr = 1e-3 at epochs
1, 101, 201; 1e-5 at epochs 51, 151, 251), kept on purpose in both protocols (T_max = epochs is an
ablation); 300 epochs, batch 8 (shuffled, last partial batch kept), 256 x 256 inputs scaled per image
to [0, 255]; loss ``model_loss`` with ``model.loss_weights`` (GT-BceDice for EGE-UNet); AMP
(float16 autocast + GradScaler) on CUDA only (the official code has none: ``amp=False`` restores
it); ``paper_quirks`` = one rotation angle for the whole run (the official config's quirk).
Model selection on ``val`` by the lowest val loss (``selection="val_loss"``, as the official
``best.pth``; any summary key such as ``"pooled_dsc"`` selects by its highest val value); under the
``paper`` protocol ``val`` is the test set (labelled in every record).

**Budgets** (:data:`BUDGETS`) override the recipe: ``smoke`` (seconds: 64 x 64, 2 epochs, batch 4,
16 train / 8 val / 8 test images), ``cpu`` (224 x 224, 50 epochs, ~1 h on 2 CPU cores for ISIC 2018;
the measurement is in :data:`CPU_BUDGET_NOTE`), ``paper`` (the full recipe: 256 x 256, 300 epochs).
``RunConfig.recipe`` overrides win over the budget.

**Determinism**: the run seed seeds Python / NumPy / torch right before the model is built (same
seed => same initialisation), and two private ``torch.Generator`` streams derived from it drive
the data order and the augmentation (so the data order does not depend on the model). On CPU
``torch.use_deterministic_algorithms(True)`` is on for the run (restored afterwards): the same seed
gives bit-identical weights for the same thread count and machine.

**Resume**: ``checkpoints/latest.pt`` is written atomically at the end of every epoch with model,
optimizer, scheduler, GradScaler, every RNG state (global + data-order + augmentation), the
history and the selected (best) weights. ``run_training`` on an unfinished record continues after
the last completed epoch and -- on CPU with the same seed and threads -- ends with the same weights
and metrics as an uninterrupted run. A finished record (``status.json``) is returned as is.

**Failure**: a non-finite training or validation loss, a training loss above ``Recipe.max_loss``
(divergence), or running out of (GPU) memory ends the run with ``status.json`` = ``failed`` and the
reason; ``run_training`` returns ``RunResult(status="failed", ...)`` instead of raising. Errors
in the configuration or the data (``DataError``, unknown model) and I/O errors are raised; they
leave the record unfinished (no ``status.json``), so it is resumed after the cause is fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from zoo.contract import as_seg_output, loss_weights_of
from kernels import fastops as _fastops
from engine.env import capture_rng, collect_env, derived_seed, restore_rng, seed_everything
from engine.evaluate import (
    PER_IMAGE_COLUMNS, EvalResult, evaluate, parse_eval_target, selection_info,
)
from engine.losses import model_loss
from engine.metrics import SUMMARY_KEYS
from engine.numerics import precision_mode, resume_key
from engine.record import (
    atomic_torch_save, atomic_write_csv, atomic_write_json, read_json, read_status, record_dir_for, write_status,
)

__all__ = [
    "Recipe", "Budget", "BUDGETS", "CPU_BUDGET_NOTE", "RunConfig", "RunResult", "run_training", "HISTORY_COLUMNS",
    "lr_at_epoch", "ResumeRefused", "resume_conflict", "uses_fast_path",
]

CONFIG_SCHEMA = 1
CHECKPOINT_FORMAT = 1


# ============================================================================== recipe and budgets
@dataclass(frozen=True)
class Recipe:
    """The training recipe; defaults = the official EGE-UNet code (docs/protocol.md §4). See the module docstring.

    ``max_train_images`` / ``max_eval_images`` keep the first images of the train / val / test splits
    (budgets only; None = all). ``max_loss``: a training step loss above it counts as divergence.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t_max: int = 50
    eta_min: float = 1e-5
    epochs: int = 300
    batch_size: int = 8
    size: int = 256
    amp: bool = True
    paper_quirks: bool = False
    selection: str = "val_loss"
    max_train_images: int | None = None
    max_eval_images: int | None = None
    max_loss: float = 1e4

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("lr", "weight_decay", "eps", "eta_min", "max_loss"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.epochs < 1 or self.batch_size < 1 or self.t_max < 1 or self.size < 1:
            raise ValueError(f"epochs, batch_size, t_max and size must be positive: {self}")
        if self.selection != "val_loss" and self.selection not in SUMMARY_KEYS:
            raise ValueError(f"selection must be 'val_loss' or one of {', '.join(SUMMARY_KEYS)}, "
                             f"got {self.selection!r}")

    def replace(self, **changes: Any) -> "Recipe":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; valid: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def lr_at_epoch(recipe: Recipe, epoch: int) -> float:
    """Closed form of the learning rate used in (1-based) ``epoch``: periodic cosine, period 2 * t_max."""
    return recipe.eta_min + 0.5 * (recipe.lr - recipe.eta_min) * (1 + math.cos(math.pi * (epoch - 1) / recipe.t_max))


CPU_BUDGET_NOTE = """\
``cpu`` budget: 224 x 224 inputs, 50 epochs -- exactly the first half-period of the official cosine
(T_max = 50: lr goes from 1e-3 to eta_min), everything else official. About 50 min for EGE-UNet on
ISIC 2018 clean (1816 train + 259 val images per epoch, 519 test images once) on 2 CPU cores.

Measured 2026-11-25 on this project's machine (torch 2.13 CPU, EGE-UNet + GT-BceDice, batch 8, the
engine's own step: normalise + augment_batch + forward/backward + AdamW; eval batch 16, no grad),
single thread, as images per CPU-second (median of 8 steps after warm-up; process CPU time, which
stays meaningful while other jobs share the cores):

    size        128    160    192    224    256
    train img/s 75.0   56.0   42.2   32.2   22.9
    eval  img/s  226    154     98     55     61

=> seconds per epoch (1816 / train + 259 / eval): 128: 25 s, 160: 34 s, 192: 46 s, 224: 61 s,
256: 84 s; 50 epochs: 21, 28, 38, **51**, 70 min. An earlier 2-thread measurement with the cores
otherwise idle gave 52.6 / 44.7 / 37.1 / 24.2 train img/s at 128 / 160 / 192 / 256 (bare step), i.e.
no faster than one thread for this tiny model. 224 is the largest multiple of 32 whose full
half-period fits in about an hour; 256 would need ~70 min. Warning: with more runnable threads than
cores, torch's OpenMP threads spin and a 2-thread run slowed to <2 img/s here: on shared machines use
``threads=1`` per run. Metrics of ``cpu`` runs are at 224 x 224: label them with that resolution.
"""


@dataclass(frozen=True)
class Budget:
    """A named compute budget: recipe fields it overrides, and what it is for."""

    name: str
    description: str
    recipe: dict[str, Any] = field(default_factory=dict)

    def apply(self, recipe: Recipe) -> Recipe:
        return recipe.replace(**self.recipe)


BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", "seconds: 64 x 64, 2 epochs, 16 train / 8 eval images (plumbing checks only)",
                    {"size": 64, "epochs": 2, "batch_size": 4, "max_train_images": 16, "max_eval_images": 8}),
    "cpu": Budget("cpu", "about 1 h on 2 CPU cores for ISIC 2018 clean: 224 x 224, 50 epochs (T_max 50)",
                  {"size": 224, "epochs": 50}),
    "paper": Budget("paper", "the official recipe: 256 x 256, 300 epochs, batch 8", {}),
}


# ============================================================================== run config
_PROTOCOL_ALIASES = {"official": "paper", "paper": "paper", "clean": "clean"}


@dataclass
class RunConfig:
    """Everything that defines a run. ``recipe``: overrides of :class:`Recipe` fields (win over the budget).

    ``external_test``: extra evaluations of the selected checkpoint, each ``"dataset"`` or
    ``"dataset:split"`` (split default ``test``), e.g. ``("ph2",)`` for an ISIC-trained model; checked
    by ``engine.data.check_eval_allowed`` before training starts.
    """

    model: str = "egeunet"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "isic2018"
    protocol: str = "clean"
    budget: str = "cpu"
    seed: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    external_test: tuple[str, ...] = ()
    data: str = ""

    def __post_init__(self) -> None:
        self.dataset = str(self.dataset).lower()
        self.data = str(self.data or "")
        if not self.data and self.dataset == "synthetic":  # its identity needs no folder
            from engine.data import data_fingerprint

            self.data = data_fingerprint("synthetic").id
        proto = str(self.protocol).lower()
        if proto not in _PROTOCOL_ALIASES:
            raise ValueError(f"unknown protocol {self.protocol!r}; valid: clean, paper (alias official)")
        self.protocol = _PROTOCOL_ALIASES[proto]
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; valid: {', '.join(BUDGETS)}")
        self.seed = int(self.seed)
        self.model_overrides = dict(self.model_overrides or {})
        self.recipe = dict(self.recipe or {})
        self.external_test = tuple(self.external_test or ())
        self.resolved_recipe()  # validate now

    def resolved_recipe(self) -> Recipe:
        """Paper recipe -> budget overrides -> this config's overrides."""
        return BUDGETS[self.budget].apply(Recipe()).replace(**self.recipe)

    def to_dict(self) -> dict[str, Any]:
        """The full resolved config (what ``config.json`` holds and the hash covers)."""
        return _canonical({
            "schema": CONFIG_SCHEMA,
            "model": self.model,
            "model_overrides": self.model_overrides,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "budget": self.budget,
            "seed": self.seed,
            "recipe": self.resolved_recipe().to_dict(),
            "external_test": [":".join(parse_eval_target(t)) for t in self.external_test],
            "data": self.data,
        })

    def with_data(self, root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> "RunConfig":
        """This config with ``data`` set to the fingerprint of the dataset found under ``root``."""
        from engine.data import data_fingerprint

        return dataclasses.replace(self, data=data_fingerprint(self.dataset, self.protocol, root, cache_dir).id)

    def config_hash(self) -> str:
        """First 12 hex digits of sha256 over the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict` (the stored recipe becomes the overrides; the hash is unchanged)."""
        return cls(model=d["model"], model_overrides=dict(d.get("model_overrides", {})), dataset=d["dataset"],
                   protocol=d["protocol"], budget=d["budget"], seed=d["seed"], recipe=dict(d.get("recipe", {})),
                   external_test=tuple(d.get("external_test", ())), data=d.get("data", ""))


def _canonical(obj: Any) -> Any:
    """JSON-stable form: tuples -> lists, dict keys -> str (keys are sorted when dumped)."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


# ============================================================================== result
@dataclass
class RunResult:
    """What ``run_training`` returns. ``metrics`` is the parsed ``metrics.json`` (empty when failed early)."""

    status: str  # "done" | "failed"
    record_dir: Path
    metrics: dict[str, Any]
    reason: str | None = None
    config_hash: str = ""
    resumed_from_epoch: int | None = None
    reused: bool = False  # the record was already finished: nothing was run


class RunFailed(Exception):
    """Ends a run with status ``failed`` (non-finite loss, divergence, out of memory)."""


class ResumeRefused(RuntimeError):
    """An unfinished record cannot be resumed here (other device type, precision, numerics version or path, or
    an unreadable checkpoint); the record is left untouched. ``restart=True`` starts the run over."""


HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", *(f"val_{k}" for k in SUMMARY_KEYS), "lr", "seconds")


# ============================================================================== runtime context
@contextlib.contextmanager
def _runtime(device: torch.device, threads: int | None, deterministic: bool) -> Iterator[None]:
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


# ============================================================================== progress
class _Progress:
    """Rich bars (epochs with ETA, steps of the current epoch) and/or a callback, or nothing."""

    def __init__(self, spec: Any, label: str, epochs: int) -> None:
        self.callback: Callable[..., None] | None = spec if callable(spec) and not isinstance(spec, bool) else None
        show = bool(spec) if isinstance(spec, bool) else (spec is None and sys.stdout.isatty())
        self.bar = None
        if show:
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.epoch_task = self.bar.add_task(label, total=epochs, info="")
            self.step_task = self.bar.add_task("  epoch", total=1, info="", visible=False)

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, done_epochs: int) -> None:
        if self.bar is not None:
            self.bar.update(self.epoch_task, completed=done_epochs)

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.step_task, total=steps, visible=True, description=f"  epoch {epoch}", info="")

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.step_task, advance=1, info=f"loss {loss:.4f}")

    def epoch_end(self, row: dict[str, Any], epochs: int, eta_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.step_task, visible=False)
            self.bar.update(self.epoch_task, completed=row["epoch"],
                            info=f"loss {row['train_loss']:.4f} val {row['val_loss']:.4f} "
                                 f"DSC {row['val_pooled_dsc']:.4f}")
        if self.callback is not None:
            try:
                self.callback(epoch=row["epoch"], epochs=epochs, train_loss=row["train_loss"],
                              val_loss=row["val_loss"], val_dsc=row["val_pooled_dsc"], lr=row["lr"],
                              seconds=row["seconds"], eta_s=eta_s)
            except Exception as e:  # noqa: BLE001 - a display must never end a training run
                warnings.warn(f"progress callback failed ({type(e).__name__}: {e}); disabled for this run",
                              RuntimeWarning, stacklevel=2)
                self.callback = None


# ============================================================================== the run
def run_training(cfg: RunConfig, results_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", threads: int | None = None, progress: Any = None,
                 cache_dir: str | os.PathLike | None = None, eval_batch_size: int = 16,
                 deterministic: bool | None = None, profile: bool = True, overwrite: bool = False,
                 fast: bool | None = None, restart: bool = False,
                 code_version: dict[str, Any] | None = None) -> RunResult:
    """Train ``cfg`` into ``<results_dir>/runs/<config_hash>/`` (resuming an unfinished record).

    ``device``: ``cpu`` / ``cuda[:i]``; ``threads``: torch CPU threads for the run (restored after);
    ``progress``: None = rich bars when stdout is a terminal, True / False to force, or a callable
    called after every epoch with keywords ``epoch, epochs, train_loss, val_loss, val_dsc, lr, seconds,
    eta_s``; ``eval_batch_size``: evaluation batch (results do not depend on it);
    ``deterministic``: ``torch.use_deterministic_algorithms`` (default: on for CPU, off for CUDA);
    ``profile``: complexity.json from ``engine.profile.profile_model`` (False = params only, fast);
    ``overwrite``: delete a finished record and run again; ``fast``: train and evaluate through
    :func:`egeunet.fast.make_fast` (same parameters, same numbers to float32 round-off; default: on for
    EGE-UNet models on the CPU, where it pays, off elsewhere; recorded in ``env.json`` as ``fast_path``;
    not part of the config hash); ``restart``: discard an unfinished record's partial state and start over;
    ``code_version``: ``{"commit", "dirty"}`` to record when this process's packages carry no git checkout
    (see :func:`engine.env.collect_env`).
    ``cfg.data`` empty: filled with the fingerprint of the data under ``data_root``; set: must equal it.
    A resume under another device type, precision mode, numerics version or path raises
    :class:`ResumeRefused` (see :func:`resume_conflict`). See the module docstring for failures.
    """
    cfg = _resolve_data(cfg, data_root, cache_dir)
    chash = cfg.config_hash()
    rdir = record_dir_for(results_dir, chash)
    status = read_status(rdir)
    if status is not None and not overwrite:
        metrics = _read_json_or_empty(rdir / "metrics.json")
        return RunResult(status["status"], rdir, metrics, status.get("reason"), chash, reused=True)
    if overwrite and rdir.exists():
        shutil.rmtree(rdir)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if status is None and rdir.exists():
        if restart:
            shutil.rmtree(rdir)
        else:
            problem = resume_conflict(cfg, results_dir, device=dev, fast=fast)
            if problem:
                raise ResumeRefused(problem)
    det = (dev.type == "cpu") if deterministic is None else bool(deterministic)
    runner = _Run(cfg, rdir, chash, data_root=data_root, cache_dir=cache_dir, device=dev, threads=threads,
                  progress=progress, eval_batch_size=eval_batch_size, profile=profile, fast=fast,
                  code_version=code_version)
    with _runtime(dev, threads, det):
        return runner.run()


def _resolve_data(cfg: RunConfig, data_root: Any, cache_dir: Any) -> RunConfig:
    from engine.data import DataError, data_fingerprint

    if cfg.dataset == "synthetic":
        return cfg
    fp = data_fingerprint(cfg.dataset, cfg.protocol, data_root, cache_dir)
    if not cfg.data:
        return dataclasses.replace(cfg, data=fp.id)
    if cfg.data != fp.id:
        raise DataError(f"{fp.root}: {cfg.dataset} data fingerprint is {fp.id}, but the run config names "
                        f"{cfg.data}; point --data-root at the data the run was defined on, or leave `data` empty",
                        fp.root)
    return cfg


def uses_fast_path(model: str, device: str | torch.device, request: bool | None = None) -> bool:
    """Whether a run of registered ``model`` trains through its fast view (default: on the CPU, for the models
    whose registry entry declares one -- the EGE-UNet family)."""
    if request is not None:
        return bool(request)
    from zoo.registry import get_entry

    return torch.device(device).type == "cpu" and get_entry(model).fast is not None


def resume_conflict(cfg: RunConfig, results_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                    fast: bool | None = None) -> str | None:
    """Why the unfinished record of ``cfg`` (data resolved) cannot resume here, or None.

    The session that started the run (``env.json`` ``sessions[0]``) fixes the device type, precision mode,
    numerics version and path; any difference, a record from before these were recorded, or an unreadable
    ``latest.pt`` is a conflict. A finished or absent record has none.
    """
    from engine.numerics import precision_mode, resume_key

    rdir = record_dir_for(results_dir, cfg.config_hash())
    if read_status(rdir) is not None or not rdir.exists():
        return None
    latest = rdir / "checkpoints" / "latest.pt"
    if not latest.exists():
        return None  # nothing trained yet: starting over loses nothing
    try:
        torch.load(latest, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        return (f"run {rdir.name}: checkpoint {latest} cannot be read ({type(e).__name__}); "
                f"rerun with --restart to start this run over")
    sessions = _read_json_or_empty(rdir / "env.json").get("sessions") or []
    first = sessions[0] if sessions and isinstance(sessions[0], dict) else {}
    want = resume_key(device, precision_mode(device, cfg.resolved_recipe().amp),
                      uses_fast_path(cfg.model, device, fast))
    diffs = [f"{k} {first.get(k)!r} -> {v!r}" for k, v in want.items() if first.get(k) != v]
    if not diffs:
        return None
    return (f"run {rdir.name} ({cfg.model} seed {cfg.seed}) started with other numerics: {'; '.join(diffs)}; "
            f"resume it where it started, or rerun with --restart to start it over")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _state_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class _Run:
    def __init__(self, cfg: RunConfig, rdir: Path, chash: str, *, data_root: Any, cache_dir: Any,
                 device: torch.device, threads: int | None, progress: Any, eval_batch_size: int,
                 profile: bool, fast: bool | None = None, code_version: dict[str, Any] | None = None) -> None:
        self.cfg, self.rdir, self.chash = cfg, rdir, chash
        self.recipe = cfg.resolved_recipe()
        self.data_root, self.cache_dir = data_root, cache_dir
        self.device, self.threads = device, threads
        self.progress_spec = progress
        self.eval_bs = max(1, int(eval_batch_size))
        self.profile = profile
        self.fast_request = fast
        self.code_version = code_version
        self.use_fast = False
        self.use_amp = self.recipe.amp and device.type == "cuda"
        self.precision = precision_mode(device, self.use_amp)
        self.ckpt_dir = rdir / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": None, "state": None}
        self.resumed_from: int | None = None
        self.wall_s = 0.0

    # -------------------------------------------------------------------------- setup
    def _write_config(self) -> None:
        path = self.rdir / "config.json"
        cfg = self.cfg.to_dict()
        if path.exists():
            stored = read_json(path)
            if stored != json.loads(json.dumps(cfg)):
                raise RuntimeError(f"{path}: stored config differs from this run's config with the same hash "
                                   f"{self.chash}; move the record aside")
        else:
            atomic_write_json(path, cfg)

    def _write_env(self, start_epoch: int) -> None:
        path = self.rdir / "env.json"
        prev = _read_json_or_empty(path)
        env = collect_env(self.device, self.threads, self.code_version)
        sessions = list(prev.get("sessions", []))
        key = resume_key(self.device, self.precision, self.use_fast)
        sessions.append({**key, "time_utc": env["time_utc"], "hostname": env["hostname"], "device": env["device"],
                         "threads": env["threads"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
                         "start_epoch": start_epoch, "fast_path": self.use_fast, "amp": self.use_amp,
                         "fused_kernels": self.use_fast and self.device.type == "cpu" and _fastops.active()})
        env["sessions"] = sessions
        env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
        env["amp"] = self.use_amp
        env.update(key)
        env["fast_path"] = self.use_fast
        env["fused_kernels"] = sessions[-1]["fused_kernels"]
        atomic_write_json(path, env)

    def _load_data(self) -> None:
        from engine.data import load_split

        r, cfg = self.recipe, self.cfg
        kw = {"protocol": cfg.protocol, "size": r.size, "root": self.data_root, "cache_dir": self.cache_dir}
        self.train_data = load_split(cfg.dataset, "train", **kw, n=r.max_train_images)
        self.val_data = load_split(cfg.dataset, "val", **kw, n=r.max_eval_images)
        self.n_train = len(self.train_data.ids) if r.max_train_images is None else \
            min(len(self.train_data.ids), r.max_train_images)
        if self.n_train == 0:
            raise RuntimeError(f"{cfg.dataset} train split is empty")

    def _build(self) -> None:
        from zoo.registry import create_model

        r, cfg = self.recipe, self.cfg
        seed_everything(cfg.seed)
        self.model: nn.Module = create_model(cfg.model, **cfg.model_overrides).to(self.device)
        self.weights = loss_weights_of(self.model)
        self.train_model, self.eval_model = self._fast_views()
        opt_cls: Any = torch.optim.AdamW
        if self.use_fast:  # the fast path also takes the fused AdamW kernel on the CPU
            from engine.optim import adamw as opt_cls
        self.optimizer = opt_cls(self.model.parameters(), lr=r.lr, betas=r.betas, eps=r.eps,
                                 weight_decay=r.weight_decay, amsgrad=False)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=r.t_max, eta_min=r.eta_min)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.data_gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "data-order"))
        self.aug_gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "augment"))
        self.run_angle: float | None = None
        if r.paper_quirks:
            from engine.data import draw_run_angle

            self.run_angle = draw_run_angle(torch.Generator().manual_seed(derived_seed(cfg.seed, "run-angle")))

    # -------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config_hash": self.chash,
            "epoch": epoch,
            "model": _state_to_cpu(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "data_gen": self.data_gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "run_angle": self.run_angle,
            "history": self.history,
            "best_epoch": self.best["epoch"],
            "best_value": self.best["value"],
            "best_model": self.best["state"],
            "wall_s": self.wall_s,
        }

    def _save_best(self) -> None:
        atomic_torch_save(self.ckpt_dir / "best.pt", {
            "format": CHECKPOINT_FORMAT, "config_hash": self.chash, "epoch": self.best["epoch"],
            "value": self.best["value"], "criterion": self.recipe.selection, "model": self.best["state"],
        })

    def _fast_views(self) -> tuple[nn.Module, nn.Module]:
        """The modules that train and evaluate: the model itself, or fast-path views sharing its parameters."""
        from zoo.registry import get_entry

        self.use_fast = uses_fast_path(self.cfg.model, self.device, self.fast_request)
        if not self.use_fast:
            return self.model, self.model
        make_fast = get_entry(self.cfg.model).fast_view()
        if make_fast is None:
            raise ValueError(f"model {self.cfg.model!r} declares no fast view in the registry; run it without --fast")
        # evaluation keeps the side outputs: the validation loss that selects the checkpoint is the training loss
        return make_fast(self.model, "train"), make_fast(self.model, "infer", side_outputs=True)

    def _resume(self) -> int:
        path = self.ckpt_dir / "latest.pt"
        if not path.exists():
            return 0
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated or corrupt file
            raise ResumeRefused(f"run {self.chash}: checkpoint {path} cannot be read ({type(e).__name__}); rerun "
                                f"with --restart to start this run over") from None
        if ck.get("config_hash") != self.chash:
            raise RuntimeError(f"{path} belongs to run {ck.get('config_hash')}, not {self.chash}")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        restore_rng(ck["rng"])
        self.data_gen.set_state(ck["data_gen"])
        self.aug_gen.set_state(ck["aug_gen"])
        self.run_angle = ck["run_angle"]
        self.history = list(ck["history"])
        self.best = {"epoch": ck["best_epoch"], "value": ck["best_value"], "state": ck["best_model"]}
        self.wall_s = float(ck.get("wall_s", 0.0))
        if self.best["state"] is not None:  # best.pt may lag or lead latest.pt after a kill: rewrite it
            self._save_best()
        self.resumed_from = int(ck["epoch"])
        return int(ck["epoch"])

    # -------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int, bar: _Progress) -> float:
        from engine.data import augment_batch, normalise

        r = self.recipe
        self.model.train()
        n, bs = self.n_train, r.batch_size
        perm = torch.randperm(n, generator=self.data_gen).numpy()
        steps = (n + bs - 1) // bs
        bar.epoch_start(epoch, steps)
        total = 0.0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            x = normalise(self.train_data.images[idx], device=self.device)
            y = torch.from_numpy(self.train_data.masks[idx]).to(self.device).unsqueeze(1).float()
            x, y = augment_batch(x, y, self.aug_gen, paper_quirks=r.paper_quirks, run_angle=self.run_angle)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = as_seg_output(self.train_model(x))
            loss = model_loss(out, y, self.weights, fused=self.use_fast)
            value = float(loss.detach().item())
            if not math.isfinite(value):
                raise RunFailed(f"non-finite training loss ({value}) at epoch {epoch}, step {s + 1}/{steps}")
            if value > r.max_loss:
                raise RunFailed(f"diverged: training loss {value:.4g} > max_loss {r.max_loss:.4g} at epoch {epoch}, "
                                f"step {s + 1}/{steps}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += value * len(idx)
            bar.step(value)
        return total / n

    def _evaluate(self, data: Any, max_images: int | None) -> EvalResult:
        try:
            return evaluate(self.eval_model, data, device=self.device, batch_size=self.eval_bs,
                            loss_weights=self.weights, max_images=max_images, fused_loss=self.use_fast)
        finally:
            self.model.train()

    def _is_better(self, value: float) -> bool:
        if self.best["value"] is None:
            return True
        if self.recipe.selection == "val_loss":
            return value < self.best["value"]
        return value > self.best["value"]

    # -------------------------------------------------------------------------- main
    def _check_external(self) -> None:
        from engine.data import check_eval_allowed

        cfg = self.cfg
        self.external = [parse_eval_target(t) for t in cfg.external_test]
        for ds, split in self.external:  # refuse forbidden evaluations before writing or computing anything
            check_eval_allowed(cfg.dataset, ds, split, train_protocol=cfg.protocol,
                               eval_protocol=cfg.protocol if ds == cfg.dataset else None)

    def run(self) -> RunResult:
        self._check_external()
        self.rdir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        for folder in (self.rdir, self.ckpt_dir):  # temp files of a killed writer (the record is not shared)
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        self._write_config()
        self._load_data()
        self._build()
        start = self._resume()
        self._write_env(start)
        r = self.recipe
        label = f"{self.cfg.model} {self.cfg.dataset} s{self.cfg.seed}"
        try:
            with _Progress(self.progress_spec, label, r.epochs) as bar:
                bar.start(start)
                for epoch in range(start + 1, r.epochs + 1):
                    self._one_epoch(epoch, bar)
            return self._finish()
        except RunFailed as e:
            return self._fail(str(e))
        except torch.OutOfMemoryError as e:
            return self._fail(f"out of memory: {str(e).splitlines()[0] if str(e) else ''}")

    def _one_epoch(self, epoch: int, bar: _Progress) -> None:
        r = self.recipe
        t0 = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_loss = self._train_epoch(epoch, bar)
        val = self._evaluate(self.val_data, r.max_eval_images)
        if val.loss is None or not math.isfinite(val.loss):
            raise RunFailed(f"non-finite validation loss ({val.loss}) at epoch {epoch}")
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        self.wall_s += seconds
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss,
               **{f"val_{k}": val.summary[k] for k in SUMMARY_KEYS}, "lr": lr, "seconds": seconds}
        self.history.append(row)
        value = val.loss if r.selection == "val_loss" else val.summary[r.selection]
        if self._is_better(value):
            self.best = {"epoch": epoch, "value": value, "state": _state_to_cpu(self.model.state_dict())}
            self._save_best()
        atomic_write_csv(self.rdir / "history.csv", self.history, HISTORY_COLUMNS)
        atomic_torch_save(self.ckpt_dir / "latest.pt", self._checkpoint(epoch))
        done = len(self.history)
        mean_s = self.wall_s / max(1, done)
        bar.epoch_end(row, r.epochs, mean_s * (r.epochs - epoch))

    def _finish(self) -> RunResult:
        from engine.data import load_split

        r, cfg = self.recipe, self.cfg
        t0 = time.perf_counter()
        if self.best["state"] is None:
            raise RuntimeError("no epoch completed: nothing to evaluate")
        self.model.load_state_dict(self.best["state"])
        kw = {"size": r.size, "root": self.data_root, "cache_dir": self.cache_dir}
        test_data = load_split(cfg.dataset, "test", protocol=cfg.protocol, **kw, n=r.max_eval_images)
        test = self._evaluate(test_data, r.max_eval_images)
        if test.loss is None or not math.isfinite(test.loss):
            raise RunFailed(f"non-finite test loss ({test.loss}) of the selected checkpoint")
        rows = test.per_image_rows()
        external: dict[str, Any] = {}
        for ds, split in self.external:
            key = ds if split == "test" else f"{ds}:{split}"
            try:
                data = load_split(ds, split, protocol=cfg.protocol if ds == cfg.dataset else "clean", **kw)
            except Exception as e:  # missing external data must not lose the run; evaluate_checkpoint later
                external[key] = {"dataset": ds, "split": split, "error": f"{type(e).__name__}: {e}"}
                continue
            res = self._evaluate(data, None)
            external[key] = res.to_dict()
            rows += res.per_image_rows()
        selected = next(h for h in self.history if h["epoch"] == self.best["epoch"])
        eval_s = time.perf_counter() - t0
        metrics = {
            "config_hash": self.chash,
            "model": cfg.model,
            "dataset": cfg.dataset,
            "protocol": cfg.protocol,
            "budget": cfg.budget,
            "seed": cfg.seed,
            "synthetic": bool(getattr(test_data, "synthetic", cfg.dataset == "synthetic")),
            "eval_size": [r.size, r.size],
            "threshold": 0.5,
            "conventions": {"pooled": "one confusion matrix over all test pixels (official; miou = foreground IoU)",
                            "per_image": "mean / sample std (ddof 1) over images; both-empty image = 1.0",
                            "isic_tjaccard": "per-image IoU, < 0.65 -> 0, mean"},
            "selection": {**selection_info(cfg.protocol, r.selection), "epoch": self.best["epoch"],
                          "value": self.best["value"]},
            "best_epoch": self.best["epoch"],
            "epochs": len(self.history),
            "val_at_selected": {"loss": selected["val_loss"], **{k: selected[f"val_{k}"] for k in SUMMARY_KEYS}},
            "test": test.to_dict(),
            "external": external,
            "run_angle": self.run_angle,
            "wall_s": self.wall_s + eval_s,
            "train_wall_s": self.wall_s,
            "resumed_from_epoch": self.resumed_from,
        }
        complexity = self._complexity()
        metrics["params"] = complexity.get("params")
        best = self.ckpt_dir / "best.pt"  # its hash lets a clone without the (large) file check a recreated one
        metrics["best_checkpoint"] = {"bytes": best.stat().st_size, "sha256": _sha256(best)}
        atomic_write_csv(self.rdir / "per_image.csv", rows, PER_IMAGE_COLUMNS)
        atomic_write_json(self.rdir / "complexity.json", complexity)
        atomic_write_json(self.rdir / "metrics.json", metrics)
        write_status(self.rdir, "done", None, wall_s=metrics["wall_s"])
        return RunResult("done", self.rdir, _read_json_or_empty(self.rdir / "metrics.json"), None, self.chash,
                         resumed_from_epoch=self.resumed_from)

    def _complexity(self) -> dict[str, Any]:
        from zoo.registry import create_model

        model = create_model(self.cfg.model, **self.cfg.model_overrides)
        params = sum(p.numel() for p in model.parameters())
        base = {"params": int(params), "trainable_params": int(sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad))}
        if not self.profile:
            return {**base, "note": "params only (profiling skipped)"}
        try:
            from engine.profile import profile_model
        except ImportError:
            return {**base, "note": "params only (engine.profile not available)"}
        try:
            prof = profile_model(model, size=256, latency=False, counters=("flopcounter", "thop"),
                                 name=self.cfg.model)
        except Exception as e:  # complexity must not lose a finished run
            return {**base, "note": f"profile failed: {type(e).__name__}: {e}"}
        return {**base, **prof, "profile_size": 256, "train_size": self.recipe.size}

    def _fail(self, reason: str) -> RunResult:
        if self.history:
            atomic_write_csv(self.rdir / "history.csv", self.history, HISTORY_COLUMNS)
        metrics = {"config_hash": self.chash, "model": self.cfg.model, "dataset": self.cfg.dataset,
                   "protocol": self.cfg.protocol, "budget": self.cfg.budget, "seed": self.cfg.seed,
                   "failed": True, "reason": reason, "epochs": len(self.history), "best_epoch": self.best["epoch"],
                   "wall_s": self.wall_s}
        atomic_write_json(self.rdir / "metrics.json", metrics)
        write_status(self.rdir, "failed", reason, epochs=len(self.history))
        return RunResult("failed", self.rdir, metrics, reason, self.chash, resumed_from_epoch=self.resumed_from)
