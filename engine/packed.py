"""K runs of one architecture trained in lockstep: one vmapped step (``torch.func``) instead of K.

A 53 K-parameter network is bound by kernel launches on a GPU, not by arithmetic: K runs that differ only
in their seed (the seeds of one variant) can share every launch. :func:`run_packed` trains them together
and still gives each run its own complete, resumable record, in the same form as :func:`run_training`:

* each run keeps its own model, optimizer, schedule, data order and augmentation streams (built exactly
  as a single run builds them, so the same seed gives the same initial weights and the same batches);
* per step the K batches are stacked and ``vmap(grad_and_value(loss))`` over the K stacked parameter sets
  gives each run its own loss and gradients (the convolutions become grouped ones); each run's optimizer
  then steps on its own gradients;
* validation, checkpoints, model selection and the final test evaluation are each run's own
  (``engine.train``'s code), so the records differ from K separate runs only by float32 round-off of the
  grouped kernels (tests/test_packed.py states the tolerance);
* the record says ``path: packed`` (a packed run resumes only packed; see :func:`resume_conflict`), and an
  epoch's ``seconds`` is the run's share of the packed training time plus its own evaluation.

Runs resumed at different epochs catch up first (the runs furthest behind train together) and are packed
again once level. A run that fails (non-finite loss, divergence) gets its ``failed`` record and leaves the
pack; the others go on. Packing needs a model whose training changes no buffers (no BatchNorm running
statistics) and no AMP (the step runs in float32, or TF32 where enabled): :func:`pack_problem` says why
not otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import torch
from torch.func import functional_call, grad_and_value, vmap

from zoo.contract import as_seg_output
from engine.checkpoint import resume_conflict, ResumeRefused
from engine.config import RunConfig
from engine.env import runtime
from engine.losses import model_loss
from engine.progress import EpochProgress
from engine.record import read_metrics, read_status, record_dir_for
from engine.train import RunFailed, RunResult, _Run, _resolve_data

__all__ = ["PackedStep", "pack_problem", "run_packed", "same_architecture"]


def same_architecture(a: RunConfig, b: RunConfig) -> bool:
    """True when ``a`` and ``b`` differ at most in their seed (model, overrides, data, budget, recipe)."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("seed"), db.pop("seed")
    return da == db


def pack_problem(cfgs: list[RunConfig], device: str | torch.device = "cpu") -> str | None:
    """Why ``cfgs`` cannot be trained as one pack on ``device``, or None."""
    from zoo.registry import create_model

    if not cfgs:
        return "nothing to pack"
    first = cfgs[0]
    for c in cfgs[1:]:
        if not same_architecture(first, c):
            return f"runs of {first.model} and {c.model} differ in more than the seed"
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        return f"the seeds repeat ({seeds})"
    if torch.device(device).type == "cuda" and first.resolved_recipe().amp:
        return "the recipe trains with AMP on CUDA; a pack trains in float32: set the recipe's amp = false"
    buffers = [n for n, _ in create_model(first.model, **first.model_overrides).named_buffers()]
    if buffers:
        return (f"{first.model} has {len(buffers)} buffer(s) that training updates (e.g. {buffers[0]}): "
                "packing needs a model without BatchNorm running statistics")
    return None


class PackedStep:
    """The lockstep training step of runs whose models share one architecture (no buffers).

    ``grads, losses = step.gradients(models, X, Y)``: the loss of each model on its own batch (``X[k]``,
    ``Y[k]``: K x B x ...) and the gradients, from one ``vmap(grad_and_value(loss))`` over the stacked
    parameters; ``step.apply(k, model, optimizer, grads)`` gives model ``k`` its gradients (views, no copy)
    and steps its optimizer. ``engine.packed`` trains with it and ``studies.bench`` measures it.
    """

    def __init__(self, base: torch.nn.Module, weights: Any) -> None:
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]

        def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return model_loss(as_seg_output(functional_call(base, params, (x,))), y, weights)

        self.fn: Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]] = vmap(grad_and_value(loss))

    def gradients(self, models: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        per = [list(m.parameters()) for m in models]
        params = {k: torch.stack([ps[i].detach() for ps in per]) for i, k in enumerate(self.names)}
        return self.fn(params, x, y)

    def apply(self, k: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              grads: dict[str, torch.Tensor]) -> None:
        for name, p in zip(self.names, model.parameters()):
            p.grad = grads[name][k]
        optimizer.step()


class _Pack:
    """The members (one :class:`engine.train._Run` each) and the lockstep epochs."""

    def __init__(self, members: list[_Run], progress: Any) -> None:
        self.members = members
        self.progress = progress
        self.results: dict[str, RunResult] = {}
        first = members[0]
        self.step = PackedStep(first.model, first.weights)

    def _train_epoch(self, group: list[_Run], epoch: int, bar: EpochProgress) -> tuple[list[_Run], list[float]]:
        """One epoch of ``group`` in lockstep; returns the members still alive and their mean losses."""
        from engine.data import augment_batch

        r, dev = group[0].recipe, group[0].device
        n, bs = group[0].n_train, r.batch_size
        perms = {id(m): torch.randperm(n, generator=m.data_gen).numpy() for m in group}
        totals = {id(m): 0.0 for m in group}
        steps = (n + bs - 1) // bs
        bar.epoch_start(epoch, steps)
        alive = list(group)
        for m in alive:
            m.model.train()
        for s in range(steps):
            xs, ys = [], []
            for m in alive:
                idx = perms[id(m)][s * bs:(s + 1) * bs]
                x, y = m.batches.get(idx)
                x, y = augment_batch(x, y, m.aug_gen, paper_quirks=r.paper_quirks, run_angle=m.run_angle)
                xs.append(x)
                ys.append(y)
            grads, losses = self.step.gradients([m.model for m in alive], torch.stack(xs), torch.stack(ys))
            values = losses.detach().cpu().tolist()
            keep = []
            for j, (m, value) in enumerate(zip(alive, values)):
                problem = None
                if value != value or value in (float("inf"), float("-inf")):
                    problem = f"non-finite training loss ({value}) at epoch {epoch}, step {s + 1}/{steps}"
                elif value > r.max_loss:
                    problem = (f"diverged: training loss {value:.4g} > max_loss {r.max_loss:.4g} at epoch "
                               f"{epoch}, step {s + 1}/{steps}")
                if problem:
                    self.results[m.chash] = m._fail(problem)
                    continue
                self.step.apply(j, m.model, m.optimizer, grads)
                totals[id(m)] += value * len(perms[id(m)][s * bs:(s + 1) * bs])
                keep.append(m)
            alive = keep
            if not alive:
                break
            bar.step(sum(values) / len(values))
        for m in alive:
            for p in m.model.parameters():
                p.grad = None  # the views into this step's stacked gradients
        return alive, [totals[id(m)] / n for m in alive]

    def run(self) -> None:
        active = [m for m in self.members if len(m.history) < m.recipe.epochs]
        first = self.members[0]
        seeds = ",".join(str(m.cfg.seed) for m in self.members)
        label = f"{first.cfg.model} {first.cfg.dataset} s{seeds} (packed {len(self.members)})"
        with EpochProgress(self.progress, label, first.recipe.epochs) as bar:
            bar.start(min((len(m.history) for m in active), default=first.recipe.epochs))
            while active:
                done_epochs = min(len(m.history) for m in active)
                group = [m for m in active if len(m.history) == done_epochs]
                epoch = done_epochs + 1
                lrs = {id(m): float(m.optimizer.param_groups[0]["lr"]) for m in group}
                t0 = time.perf_counter()
                try:
                    alive, losses = self._train_epoch(group, epoch, bar)
                except torch.OutOfMemoryError as e:
                    reason = f"out of memory: {str(e).splitlines()[0] if str(e) else ''}"
                    for m in group:
                        self.results[m.chash] = m._fail(reason)
                    alive, losses = [], []
                share = (time.perf_counter() - t0) / max(1, len(group))
                for m, loss in zip(alive, losses):
                    try:
                        m._end_epoch(epoch, bar, loss, lrs[id(m)], share)
                    except RunFailed as e:
                        self.results[m.chash] = m._fail(str(e))
                active = [m for m in active if m.chash not in self.results]
                for m in [m for m in active if len(m.history) >= m.recipe.epochs]:
                    try:
                        self.results[m.chash] = m._finish()
                    except RunFailed as e:
                        self.results[m.chash] = m._fail(str(e))
                    active.remove(m)


def run_packed(cfgs: list[RunConfig], results_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
               device: str | torch.device = "cpu", threads: int | None = None, progress: Any = None,
               cache_dir: str | os.PathLike | None = None, eval_batch_size: int = 16,
               deterministic: bool | None = None, profile: bool = True, restart: bool = False,
               code_version: dict[str, Any] | None = None) -> list[RunResult]:
    """Train ``cfgs`` (runs that differ only in their seed) as one pack; one :class:`RunResult` per config,
    in order. Finished records are returned as they are; unfinished packed ones resume; keyword arguments
    as :func:`engine.train.run_training` (the fast view is never used: the pack runs the plain model).
    Raises ``ValueError`` (:func:`pack_problem`) or :class:`ResumeRefused` before anything is written."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    cfgs = [_resolve_data(c, data_root, cache_dir) for c in cfgs]
    problem = pack_problem(cfgs, dev)
    if problem:
        raise ValueError(f"cannot pack these runs: {problem}")
    results: dict[str, RunResult] = {}
    todo: list[RunConfig] = []
    for cfg in cfgs:
        chash = cfg.config_hash()
        rdir = record_dir_for(results_dir, chash)
        status = read_status(rdir)
        if status is not None:
            results[chash] = RunResult(status["status"], rdir, read_metrics(rdir),
                                       status.get("reason"), chash, reused=True)
            continue
        if rdir.exists() and not restart:
            conflict = resume_conflict(cfg, results_dir, device=dev, fast=False, packed=True)
            if conflict:
                raise ResumeRefused(conflict)
        todo.append(cfg)
    if todo:
        for cfg in todo:
            rdir = record_dir_for(results_dir, cfg.config_hash())
            if restart and rdir.exists():
                shutil.rmtree(rdir)
        det = (dev.type == "cpu") if deterministic is None else bool(deterministic)
        with runtime(threads, det):
            members = [_Run(c, record_dir_for(results_dir, c.config_hash()), c.config_hash(), data_root=data_root,
                            cache_dir=cache_dir, device=dev, threads=threads, progress=progress,
                            eval_batch_size=eval_batch_size, profile=profile, fast=False, code_version=code_version)
                       for c in todo]
            for i, m in enumerate(members):
                m._check_external()
                m.rdir.mkdir(parents=True, exist_ok=True)
                m.ckpt_dir.mkdir(exist_ok=True)
                for folder in (m.rdir, m.ckpt_dir):
                    for tmp in folder.glob(".*.tmp"):
                        tmp.unlink(missing_ok=True)
                m._write_config()
                if i == 0:
                    m._load_data()
                else:  # same dataset, protocol and size: one copy of the images (and batches) for the pack
                    m.train_data, m.val_data, m.n_train = members[0].train_data, members[0].val_data, \
                        members[0].n_train
                    m.batches = members[0].batches
                m._build()
                m.packed = True
                m._write_env(m._resume())
            pack = _Pack(members, progress)
            pack.run()
            results.update(pack.results)
    return [results[c.config_hash()] for c in cfgs]
