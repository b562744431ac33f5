"""Training: the loop that turns a :class:`~engine.config.RunConfig` into a finished run record.

Quick use::

    from engine.train import RunConfig, run_training
    res = run_training(RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0), "results")
    res.status, res.metrics["test"]["pooled_dsc"], res.record_dir

What a run is (recipe, budgets, config hash) lives in :mod:`engine.config`; checkpoints and the resume
rules in :mod:`engine.checkpoint`; the environment and torch settings of a run in :mod:`engine.env`;
evaluation and model selection in :mod:`engine.evaluate`; the fast view in :mod:`engine.fastview`.
Those names stay importable from here.

**Determinism**: the run seed seeds Python / NumPy / torch right before the model is built (same
seed => same initialisation), and two private ``torch.Generator`` streams derived from it drive
the data order and the augmentation (so the data order does not depend on the model). On CPU
``torch.use_deterministic_algorithms(True)`` is on for the run (restored afterwards): the same seed
gives bit-identical weights for the same thread count and machine.

**Resume**: ``run_training`` on an unfinished record continues after the last completed epoch (from
``checkpoints/latest.pt``) and -- on CPU with the same seed and threads -- ends with the same weights
and metrics as an uninterrupted run. A finished record (``status.json``) is returned as is.

**Failure**: a non-finite training or validation loss, a training loss above ``Recipe.max_loss``
(divergence), or running out of (GPU) memory ends the run with ``status.json`` = ``failed`` and the
reason; ``run_training`` returns ``RunResult(status="failed", ...)`` instead of raising. Errors
in the configuration or the data (``DataError``, unknown model) and I/O errors are raised; they
leave the record unfinished (no ``status.json``), so it is resumed after the cause is fixed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernels import fastops as _fastops
from zoo.contract import as_seg_output, loss_weights_of
from engine.checkpoint import (
    ResumeRefused, checkpoint_facts, load_latest, restore_training, resume_conflict, save_best, save_latest,
    state_to_cpu, training_state,
)
from engine.config import BUDGETS, Budget, Recipe, RunConfig, lr_at_epoch
from engine.env import derived_seed, env_record, runtime, seed_everything
from engine.optim import make_adamw
from engine.evaluate import (
    METRIC_CONVENTIONS, PER_IMAGE_COLUMNS, EvalResult, eval_target_key, evaluate, is_better, parse_eval_target,
    selection_info,
)
from engine.fastview import choose_view, fast_views, uses_fast_path
from engine.losses import model_loss
from engine.metrics import SUMMARY_KEYS
from engine.numerics import precision_mode, resume_key, training_path
from engine.progress import EpochProgress
from engine.record import (
    atomic_write_csv, atomic_write_json, read_json, read_json_or_empty, read_metrics, read_status, record_dir_for,
    started_session, write_status,
)

__all__ = [
    "Recipe", "Budget", "BUDGETS", "RunConfig", "RunResult", "run_training", "HISTORY_COLUMNS",
    "lr_at_epoch", "ResumeRefused", "resume_conflict", "uses_fast_path",
]

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", *(f"val_{k}" for k in SUMMARY_KEYS), "lr", "seconds")


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


def run_training(cfg: RunConfig, results_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", threads: int | None = None, progress: Any = None,
                 cache_dir: str | os.PathLike | None = None, eval_batch_size: int = 16,
                 deterministic: bool | None = None, profile: bool = True, overwrite: bool = False,
                 fast: bool | None = None, restart: bool = False, cuda_graph: bool = False,
                 code_version: dict[str, Any] | None = None) -> RunResult:
    """Train ``cfg`` into ``<results_dir>/runs/<config_hash>/`` (resuming an unfinished record).

    ``device``: ``cpu`` / ``cuda[:i]``; ``threads``: torch CPU threads for the run (restored after);
    ``progress``: None = rich bars when stdout is a terminal, True / False to force, or a callable
    called after every epoch with keywords ``epoch, epochs, train_loss, val_loss, val_dsc, lr, seconds,
    eta_s``; ``eval_batch_size``: evaluation batch (results do not depend on it);
    ``deterministic``: ``torch.use_deterministic_algorithms`` (default: on for CPU, off for CUDA);
    ``profile``: complexity.json from ``engine.profile.profile_model`` (False = params only, fast);
    ``overwrite``: delete a finished record and run again; ``fast``: train and evaluate through the
    registry's fast view (:mod:`engine.fastview`: same parameters, same numbers to float32 round-off;
    default: on on the CPU for models whose entry declares a view, off elsewhere; recorded in ``env.json``
    as ``fast_path``; not part of the config hash); ``restart``: discard an unfinished record's partial
    state and start over; ``cuda_graph``: train with the forward, loss and backward captured as one CUDA graph
    (:mod:`engine.graphs`; CUDA, plain model; the run's path is ``graph``); ``code_version``: ``{"commit",
    "dirty"}`` to record when this process's packages carry no git checkout (see :func:`engine.env.collect_env`).
    ``cfg.data`` empty: filled with the fingerprint of the data under ``data_root``; set: must equal it.
    A resume under another device type, precision mode, numerics version or path raises
    :class:`ResumeRefused` (see :func:`resume_conflict`). See the module docstring for failures.
    """
    cfg = _resolve_data(cfg, data_root, cache_dir)
    chash = cfg.config_hash()
    rdir = record_dir_for(results_dir, chash)
    status = read_status(rdir)
    if status is not None and not overwrite:
        metrics = read_metrics(rdir)
        return RunResult(status["status"], rdir, metrics, status.get("reason"), chash, reused=True)
    if overwrite and rdir.exists():
        shutil.rmtree(rdir)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if cuda_graph:
        from engine.graphs import graph_refusal

        problem = graph_refusal(dev, fast=uses_fast_path(cfg.model, dev, fast))
        if problem:
            raise RuntimeError(problem)
    if status is None and rdir.exists():
        if restart:
            shutil.rmtree(rdir)
        else:
            problem = resume_conflict(cfg, results_dir, device=dev, fast=fast, graph=cuda_graph)
            if problem:
                raise ResumeRefused(problem)
    det = (dev.type == "cpu") if deterministic is None else bool(deterministic)
    runner = _Run(cfg, rdir, chash, data_root=data_root, cache_dir=cache_dir, device=dev, threads=threads,
                  progress=progress, eval_batch_size=eval_batch_size, profile=profile, fast=fast,
                  cuda_graph=cuda_graph, code_version=code_version)
    with runtime(threads, det):
        return runner.run()


def _resolve_data(cfg: RunConfig, data_root: Any, cache_dir: Any) -> RunConfig:
    """``cfg`` with its data fingerprint filled in, or checked against the data under ``data_root``."""
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


#: the share of the accelerator's free memory the training split may take to be held there (uint8)
RESIDENT_SHARE = 0.25
#: a CPU fast-path run prepares the next batch in a background thread when it has at least this many torch
#: threads (a one-thread suite worker shares its core with another run: nothing to gain there)
PREFETCH_MIN_THREADS = 2


def prefetches(fast: bool, device: torch.device) -> bool:
    """Whether a run's epoch prepares the next batch in a background thread (:mod:`engine.data.prefetch`): the
    CPU fast path with at least :data:`PREFETCH_MIN_THREADS` torch threads (the same batches either way)."""
    return fast and device.type == "cpu" and torch.get_num_threads() >= PREFETCH_MIN_THREADS


def resident_policy(device: torch.device, nbytes: int) -> bool:
    """Whether the training split is copied to ``device`` once and batched there: on CUDA, when its uint8
    images and masks take at most :data:`RESIDENT_SHARE` of the free memory (ISIC 2018 at 224 px: 0.36 GB).
    On the CPU the split already is in memory (a memory map); the batches are indexed there."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free


class TrainBatches:
    """The training split's batches on the run's device, as ``(normalised images, {0,1} float masks)``.

    Host-held (default): each batch is gathered from the memory-mapped uint8 arrays and copied to the
    device. Resident: the split is copied to the device once as uint8 and each batch is gathered there, so
    no host work or copy is left in the step (the augmentation already runs on the device). Both give
    the same tensors bit for bit (the same uint8 values, normalised by the same device code).
    """

    def __init__(self, images: Any, masks: Any, n: int, device: torch.device, *, resident: bool = False) -> None:
        import numpy as np

        self.device, self.resident = device, bool(resident)
        if self.resident:
            self.images = torch.from_numpy(np.array(images[:n])).to(device)  # a copy: the map is read-only
            self.masks = torch.from_numpy(np.array(masks[:n])).to(device)
        else:
            self.images, self.masks = images, masks

    def get(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from engine.data import normalise

        if self.resident:
            i = torch.as_tensor(idx, dtype=torch.long).to(self.device, non_blocking=True)
            return normalise(self.images.index_select(0, i)), self.masks.index_select(0, i).unsqueeze(1).float()
        x = normalise(self.images[idx], device=self.device)
        return x, torch.from_numpy(self.masks[idx]).to(self.device).unsqueeze(1).float()


class _Run:
    """One run's state and steps: set up, resume, train epoch by epoch, evaluate the selected checkpoint."""

    def __init__(self, cfg: RunConfig, rdir: Path, chash: str, *, data_root: Any, cache_dir: Any,
                 device: torch.device, threads: int | None, progress: Any, eval_batch_size: int,
                 profile: bool, fast: bool | None = None, cuda_graph: bool = False,
                 code_version: dict[str, Any] | None = None) -> None:
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
        self.packed = False  # set by engine.packed: trained in lockstep with runs of the same architecture
        self.view = "declared"  # or "compiled" (engine.fastview.choose_view, in _build)
        self.prefetch = False  # the next batch prepared while this one trains (in _build)
        self.use_graph = bool(cuda_graph)
        self.graph_step: Any = None  # engine.graphs.GraphStep, captured on the first training batch
        self.use_amp = self.recipe.amp and device.type == "cuda"
        self.precision = precision_mode(device, self.use_amp)
        self.ckpt_dir = rdir / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": None, "state": None}
        self.resumed_from: int | None = None
        self.wall_s = 0.0

    @property
    def path(self) -> str:
        """The training path recorded in ``env.json`` and fixed for resumes: fast, plain, packed or graph."""
        return training_path(fast=self.use_fast, packed=self.packed, graph=self.use_graph,
                             compiled=self.view == "compiled")

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
        key = resume_key(self.device, self.precision, self.use_fast, path=self.path)
        fused = self.use_fast and self.device.type == "cpu" and _fastops.active()
        atomic_write_json(path, env_record(read_json_or_empty(path), self.device, self.threads, self.code_version,
                                           key, start_epoch=start_epoch, fast_path=self.use_fast, amp=self.use_amp,
                                           fused_kernels=fused))

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
        imgs, masks = self.train_data.images, self.train_data.masks
        nbytes = self.n_train * (imgs[0].nbytes + masks[0].nbytes)
        self.batches = TrainBatches(imgs, masks, self.n_train, self.device,
                                    resident=resident_policy(self.device, nbytes))

    def _build(self) -> None:
        from zoo.registry import create_model

        r, cfg = self.recipe, self.cfg
        seed_everything(cfg.seed)
        self.model: nn.Module = create_model(cfg.model, **cfg.model_overrides).to(self.device)
        self.weights = loss_weights_of(self.model)
        self.use_fast = uses_fast_path(cfg.model, self.device, self.fast_request)
        self.view = choose_view(cfg.model, self.device, self.use_fast, r.epochs * self.n_train, r.size,
                                started_path=self._started_path())
        self.train_model, self.eval_model = fast_views(cfg.model, self.model, self.use_fast,
                                                       compiled=self.view == "compiled")
        self.prefetch = prefetches(self.use_fast, self.device)
        self.optimizer = make_adamw(self.model.parameters(), self.use_fast, lr=r.lr, betas=r.betas, eps=r.eps,
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
    def _save_best(self) -> None:
        save_best(self.ckpt_dir, self.chash, self.best, self.recipe.selection)

    def _started_path(self) -> str | None:
        """The training path the session that started this record wrote (None for a new record)."""
        return started_session(read_json_or_empty(self.rdir / "env.json")).get("path")

    def _resume(self) -> int:
        """Load ``latest.pt`` when there is one; returns the last completed epoch (0: a fresh start)."""
        ck = load_latest(self.ckpt_dir, self.chash)
        if ck is None:
            return 0
        restore_training(ck, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                         scaler=self.scaler, data_gen=self.data_gen, aug_gen=self.aug_gen)
        self.run_angle = ck["run_angle"]
        self.history = list(ck["history"])
        self.best = {"epoch": ck["best_epoch"], "value": ck["best_value"], "state": ck["best_model"]}
        self.wall_s = float(ck.get("wall_s", 0.0))
        if self.best["state"] is not None:  # best.pt may lag or lead latest.pt after a kill: rewrite it
            self._save_best()
        self.resumed_from = int(ck["epoch"])
        return int(ck["epoch"])

    # -------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int, bar: EpochProgress) -> float:
        from engine.data import augment_batch
        from engine.data.prefetch import prefetched

        r = self.recipe
        self.model.train()
        n, bs = self.n_train, r.batch_size
        perm = torch.randperm(n, generator=self.data_gen).numpy()
        steps = (n + bs - 1) // bs
        bar.epoch_start(epoch, steps)
        total = 0.0
        def batch(s: int) -> tuple[int, torch.Tensor, torch.Tensor]:  # the data path of step s
            idx = perm[s * bs:(s + 1) * bs]
            x, y = self.batches.get(idx)
            x, y = augment_batch(x, y, self.aug_gen, paper_quirks=r.paper_quirks, run_angle=self.run_angle)
            return len(idx), x, y

        for s, (count, x, y) in enumerate(prefetched(batch, steps, ahead=self.prefetch)):
            if self.use_graph:
                value = self._graph_step(x, y)
                self._check_loss(value, epoch, s, steps)
                total += value * count
                bar.step(value)
                continue
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = as_seg_output(self.train_model(x))
            loss = model_loss(out, y, self.weights, fused=self.use_fast)
            value = float(loss.detach().item())
            self._check_loss(value, epoch, s, steps)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += value * count
            bar.step(value)
        return total / n

    def _check_loss(self, value: float, epoch: int, s: int, steps: int) -> None:
        if not math.isfinite(value):
            raise RunFailed(f"non-finite training loss ({value}) at epoch {epoch}, step {s + 1}/{steps}")
        if value > self.recipe.max_loss:
            raise RunFailed(f"diverged: training loss {value:.4g} > max_loss {self.recipe.max_loss:.4g} at epoch "
                            f"{epoch}, step {s + 1}/{steps}")

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One training step with the forward, loss and backward replayed from a CUDA graph (captured by the
        first call on this batch's shape; a ragged batch later runs them eagerly), the optimizer eagerly."""
        if self.graph_step is None:
            from engine.graphs import GraphStep

            weights, dev, amp = self.weights, self.device.type, self.use_amp

            def loss_fn(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                with torch.autocast(device_type=dev, dtype=torch.float16, enabled=amp, cache_enabled=False):
                    out = as_seg_output(model(xb))
                return model_loss(out, yb, weights)

            self.graph_step = GraphStep(self.train_model, loss_fn, self.optimizer, self.scaler, x, y)
        return float(self.graph_step(x, y))

    def _evaluate(self, data: Any, max_images: int | None) -> EvalResult:
        try:
            return evaluate(self.eval_model, data, device=self.device, batch_size=self.eval_bs,
                            loss_weights=self.weights, max_images=max_images, fused_loss=self.use_fast)
        finally:
            self.model.train()

    # -------------------------------------------------------------------------- main
    def _check_external(self) -> None:
        from engine.data import check_eval_allowed

        cfg = self.cfg
        self.external = [parse_eval_target(t) for t in cfg.external_test]
        for ds, split in self.external:  # refuse forbidden evaluations before writing or computing anything
            check_eval_allowed(cfg.dataset, ds, split, train_protocol=cfg.protocol,
                               eval_protocol=cfg.protocol if ds == cfg.dataset else None)

    def run(self) -> RunResult:
        """Set up (or resume), train every remaining epoch, then finish or record the failure."""
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
            with EpochProgress(self.progress_spec, label, r.epochs) as bar:
                bar.start(start)
                for epoch in range(start + 1, r.epochs + 1):
                    self._one_epoch(epoch, bar)
            return self._finish()
        except RunFailed as e:
            return self._fail(str(e))
        except torch.OutOfMemoryError as e:
            return self._fail(f"out of memory: {str(e).splitlines()[0] if str(e) else ''}")

    def _one_epoch(self, epoch: int, bar: EpochProgress) -> None:
        t0 = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_loss = self._train_epoch(epoch, bar)
        self._end_epoch(epoch, bar, train_loss, lr, time.perf_counter() - t0)

    def _end_epoch(self, epoch: int, bar: EpochProgress, train_loss: float, lr: float, train_s: float) -> None:
        """Validate, step the schedule, record the epoch, keep the best state and write ``latest.pt``."""
        r = self.recipe
        t0 = time.perf_counter() - train_s
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
        if is_better(r.selection, value, self.best["value"]):
            self.best = {"epoch": epoch, "value": value, "state": state_to_cpu(self.model.state_dict())}
            self._save_best()
        atomic_write_csv(self.rdir / "history.csv", self.history, HISTORY_COLUMNS)
        save_latest(self.ckpt_dir, training_state(
            config_hash=self.chash, epoch=epoch, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, data_gen=self.data_gen, aug_gen=self.aug_gen,
            run_angle=self.run_angle, history=self.history, best=self.best, wall_s=self.wall_s))
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
            key = eval_target_key(ds, split)
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
            "conventions": dict(METRIC_CONVENTIONS),
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
        metrics["best_checkpoint"] = checkpoint_facts(best)
        atomic_write_csv(self.rdir / "per_image.csv", rows, PER_IMAGE_COLUMNS)
        atomic_write_json(self.rdir / "complexity.json", complexity)
        atomic_write_json(self.rdir / "metrics.json", metrics)
        write_status(self.rdir, "done", None, wall_s=metrics["wall_s"])
        return RunResult("done", self.rdir, read_metrics(self.rdir), None, self.chash,
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
