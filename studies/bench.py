"""``python -m studies.bench``: the reference EGE-UNet against the default fast path, interleaved.

Measures in ONE process, alternating the candidates round by round (the order flips every round),
so that load from other processes hits both alike; ratios are the median of per-round ratios:

* inference images/s at batch 1 and batch 16 (256x256);
* training step images/s at batch 8: forward + deep-supervised BceDice loss (``engine.losses``) +
  backward + AdamW step;
* a full training epoch on ISIC2018 ``train`` at 256x256 including the per-batch data path
  (``engine.data.normalise`` + ``augment_batch``); ``--quick`` or no data: a subset / synthetic data;
* ``paths`` (``--models``, ``--paths``): each registered model's training step on the channels-last view
  (:mod:`zoo.views`) and/or ``torch.compile`` against its plain eager step; the registry's ``fast`` entries
  follow what it measures (``results/bench/paths_cpu.csv``, checked by tests/test_paths.py);
* ``pack8`` (default on CUDA): ``--pack K`` runs trained in lockstep (:mod:`engine.packed`), the aggregate
  training images/s of the K runs against one reference run's step at batch 8.

Candidates: (a) ``reference`` = :class:`egeunet.reference.ReferenceEGEUNet`, plain eager;
(b) ``fast`` = :func:`egeunet.fast.make_fast` over :class:`egeunet.model.EGEUNet` with the same
weights, trained with :func:`engine.optim.adamw` (fused AdamW on the CPU) and the fused BceDice kernel
(``fused=True``) as ``engine.train`` does on the fast path; the reference keeps ATen's loss and AdamW.
``--extra`` adds diagnostic variants (``fast_w2``: the fast path with two single-threaded worker threads;
``compiled``: ``torch.compile`` of the fast path, compile time reported; on CUDA ``amp``).
Accuracy: max |output - reference| in float32 on a fixed batch (and the relative parameter-gradient
difference for training), next to the float32 noise floor (reference in float32 vs float64).

How much to trust it: every row carries the 95 % interval of its ratio, a percentile bootstrap over
the paired rounds (round i of a candidate with round i of the reference; the statistic is the
MEDIAN OF THE PAIRED PER-ROUND RATIOS, the same statistic as the reported ratio), the 1-minute load
average before and after the bench (``os.getloadavg``) and a ``warnings`` column. A ``WARNING`` line
is printed when the machine was busy (load average before > 0.5 x cores, or after > cores + 0.5) or
an interval is wide (half-width > 10 % of the ratio) or rests on fewer than 5 rounds.

The numbers themselves live in the CSVs (``results/bench/*.csv``) and in ``docs/performance.md``,
which the bench regenerates from the committed CSVs after a run into ``results/bench/`` (or on its
own: ``--write-docs``, no measuring); none are quoted in code or help text.

OpenMP: unless ``--omp-default`` is given or ``OMP_WAIT_POLICY`` is already set, the bench sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads: with the default (spinning) policy a 2-thread
process on a shared 2-core machine stalls at every barrier while another process holds a core
(the reference's training step slows by more than an order of magnitude), which would measure the
machine, not the model. The setting applies to both candidates and is recorded.

Usage::

    python -m studies.bench [--device cpu|cuda] [--quick] [--csv results/bench/bench.csv]
                            [--rounds N] [--epoch-rounds N] [--threads N] [--workers N]
                            [--extra fast_w2,compiled] [--no-docs]
    python -m studies.bench --write-docs [--bench-dir results/bench] [--docs docs/performance.md]
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--omp-default" not in sys.argv and "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede loading libgomp (import torch)

import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

PROG = "python -m studies.bench"
DEFAULT_CSV = Path("results/bench/bench.csv")
DEFAULT_ROUNDS = 15  # interleaved rounds per case: enough for a bootstrap interval of the median ratio
QUICK_ROUNDS = 9
DEFAULT_EPOCH_ROUNDS = 5  # full ISIC 2018 epochs per candidate (each costs minutes on 2 cores)


# ------------------------------------------------------------------------------------- helpers
def _loss_fn() -> Callable[[Any, Tensor, tuple[float, ...]], Tensor]:
    try:
        from engine.losses import model_loss
        return model_loss
    except ImportError:  # the engine's losses are not there: the same GT-BceDice, locally
        from zoo.contract import as_seg_output

        def model_loss(out: Any, y: Tensor, weights: tuple[float, ...], fused: bool = False) -> Tensor:
            o = as_seg_output(out)
            total = None
            for w, m in zip(weights, (o.logits, *o.aux)):
                bce = F.binary_cross_entropy_with_logits(m, y)
                p, t = torch.sigmoid(m).flatten(1), y.flatten(1)
                dice = 1 - ((2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
                term = w * (bce + dice)
                total = term if total is None else total + term
            return total
        return model_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Candidate:
    name: str
    infer: nn.Module | None = None  # model for inference
    train: nn.Module | None = None  # model for training
    opt: torch.optim.Optimizer | None = None
    autocast: bool = False
    note: str = ""
    setup_s: float = 0.0  # e.g. compile time (first call), excluded from the rates
    fused_loss: bool = False  # the loss's fused CPU kernel: the fast path's candidates only, as in engine.train
    extra: dict[str, Any] = field(default_factory=dict)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def interleaved(units: dict[str, Callable[[], int]], rounds: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Images/s of each unit per round; the order of the units alternates every round."""
    names = list(units)
    for _ in range(warmup):
        for n in names:
            units[n]()
    _sync(device)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t = time.perf_counter()
            imgs = units[n]()
            _sync(device)
            rates[n].append(imgs / (time.perf_counter() - t))
    return rates


# -------------------------------------------------------------------------------- candidates
def build_candidates(device: torch.device, extra: list[str], workers: int | None, seed: int = 0
                     ) -> tuple[dict[str, Candidate], nn.Module]:
    from egeunet.model import EGEUNet
    from egeunet.reference import ReferenceEGEUNet
    from egeunet.fast import make_fast
    from engine.optim import adamw

    torch.manual_seed(seed)
    ref = ReferenceEGEUNet().to(device)
    state = ref.state_dict()

    def egeunet() -> EGEUNet:
        m = EGEUNet().to(device)
        m.load_state_dict(state)
        return m

    cands: dict[str, Candidate] = {}
    ref_train = copy.deepcopy(ref)
    cands["reference"] = Candidate("reference", ref, ref_train, torch.optim.AdamW(ref_train.parameters(), lr=1e-3),
                                   note="ReferenceEGEUNet, eager")
    m_inf, m_tr = egeunet(), egeunet()
    f_tr = make_fast(m_tr, "train", workers=workers)
    cands["fast"] = Candidate("fast", make_fast(m_inf, "infer", workers=workers), f_tr,
                              adamw(f_tr.parameters(), lr=1e-3),
                              note=f"make_fast (workers={f_tr.workers})")
    if "fast_w2" in extra:
        m1, m2 = egeunet(), egeunet()
        t1 = make_fast(m2, "train", workers=2)
        cands["fast_w2"] = Candidate("fast_w2", make_fast(m1, "infer", workers=2), t1,
                                     adamw(t1.parameters(), lr=1e-3),
                                     note="make_fast, workers=2 (two single-threaded worker threads)")
    if "compiled" in extra:
        m1, m2 = egeunet(), egeunet()
        t1 = make_fast(m2, "train", compile=True)
        cands["compiled"] = Candidate("compiled", make_fast(m1, "infer", compile=True), t1,
                                      torch.optim.AdamW(t1.parameters(), lr=1e-3), note="torch.compile(fast path)")
    if "amp" in extra and device.type == "cuda":
        m1, m2 = egeunet(), egeunet()
        t1 = make_fast(m2, "train")
        cands["amp"] = Candidate("amp", make_fast(m1, "infer"), t1, torch.optim.AdamW(t1.parameters(), lr=1e-3),
                                 autocast=True, note="fast path + autocast fp16")
    if "graph" in extra and device.type == "cuda":  # the reference's step captured (engine.graphs), train step only
        from engine.graphs import GraphStep
        from engine.losses import model_loss

        m1 = copy.deepcopy(ref)
        w = tuple(m1.loss_weights)
        g = torch.Generator().manual_seed(2)  # the training case's batch shape (bench_train)
        xg = torch.randn(8, 3, 256, 256, generator=g).to(device)
        yg = (torch.rand(8, 1, 256, 256, generator=g) > 0.5).float().to(device)
        t = time.perf_counter()
        opt = torch.optim.AdamW(m1.parameters(), lr=1e-3)
        no_amp = torch.amp.GradScaler("cuda", enabled=False)
        step = GraphStep(m1, lambda net, x, y: model_loss(net(x), y, w), opt, no_amp, xg, yg)
        cands["graph"] = Candidate("graph", copy.deepcopy(ref), m1, opt, setup_s=time.perf_counter() - t,
                                   note="ReferenceEGEUNet, forward+loss+backward CUDA-graph-captured, AdamW eager "
                                        "(engine.graphs)",
                                   extra={"graph_step": step})
    for name, c in cands.items():  # the plain reference keeps the plain loss (engine.train: fused=use_fast)
        c.fused_loss = name not in ("reference", "graph")
    return cands, ref


def _amp(c: Candidate, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=c.autocast)


# ------------------------------------------------------------------------------------ checks
def accuracy(cands: dict[str, Candidate], ref: nn.Module, device: torch.device, loss_fn: Callable,
             size: int = 256, batch: int = 2) -> dict[str, dict[str, float]]:
    """max |output - reference| (infer: final logits; train: every map) and max relative grad difference."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float().to(device)
    ref64 = copy.deepcopy(ref).double()

    def run(model: nn.Module, xx: Tensor, yy: Tensor, amp_c: Candidate | None = None) -> tuple[Any, list[Tensor]]:
        model.zero_grad(set_to_none=True)
        with _amp(amp_c, device) if amp_c else torch.autocast(device.type, enabled=False):
            out = model(xx)
        loss = loss_fn(out, yy, tuple(model.loss_weights), fused=amp_c is not None and amp_c.fused_loss)
        loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out, grads

    o64, g64 = run(ref64, x.double(), y.double())
    o32, g32 = run(ref, x, y)
    with torch.no_grad():
        ref_logits = ref(x).logits

    def diffs(o: Any, gr: list[Tensor], base_o: Any, base_g: list[Tensor]) -> tuple[float, float]:
        maps = tuple(t.detach() for t in (o.logits, *o.aux))
        bmaps = tuple(t.detach() for t in (base_o.logits, *base_o.aux))
        d = max(float((a.double() - b.double()).abs().max()) for a, b in zip(maps, bmaps))
        gd = max(float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
                 for a, b in zip(gr, base_g))
        return d, gd

    res: dict[str, dict[str, float]] = {}
    floor_o, floor_g = diffs(o32, g32, o64, g64)
    res["reference"] = {"max_abs_diff": 0.0, "max_rel_grad_diff": 0.0, "max_abs_err_vs_fp64": floor_o,
                        "fp32_floor_out": floor_o,
                        "fp32_floor_grad": floor_g, "max_abs_logit": float(o64.logits.detach().abs().max())}
    for name, c in cands.items():
        if name == "reference":
            continue
        model = c.train
        ot, gt = run(model, x, y, c)
        d_train, gd = diffs(ot, gt, o32, g32)
        with torch.no_grad(), _amp(c, device):
            lo = c.infer(x).logits
        e64, _ = diffs(ot, gt, o64, g64)
        res[name] = {"max_abs_diff": max(d_train, float((lo.double() - ref_logits.double()).abs().max())),
                     "max_rel_grad_diff": gd, "max_abs_err_vs_fp64": e64}
    return res


# ----------------------------------------------------------------------------------- measures
def bench_infer(cands: dict[str, Candidate], device: torch.device, batch: int, rounds: int, reps: int
                ) -> dict[str, list[float]]:
    x = torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device)

    def unit(c: Candidate) -> Callable[[], int]:
        def f() -> int:
            with torch.no_grad(), _amp(c, device):
                for _ in range(reps):
                    c.infer(x)
            return batch * reps
        return f

    return interleaved({n: unit(c) for n, c in cands.items()}, rounds, device)


def _train_step(c: Candidate, device: torch.device, x: torch.Tensor, y: torch.Tensor, weights: tuple,
                loss_fn: Callable) -> None:
    """Forward (autocast for the amp candidate) + loss + backward + AdamW step, as engine.train does (the graph
    candidate: one replay of the captured step)."""
    if "graph_step" in c.extra:
        c.extra["graph_step"](x, y)
        return
    with _amp(c, device):
        out = c.train(x)
    loss = loss_fn(out, y, weights, fused=c.fused_loss)
    c.opt.zero_grad(set_to_none=True)
    loss.backward()
    c.opt.step()


def bench_train(cands: dict[str, Candidate], device: torch.device, batch: int, rounds: int, reps: int,
                loss_fn: Callable) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, 256, 256, generator=g).to(device)
    y = (torch.rand(batch, 1, 256, 256, generator=g) > 0.5).float().to(device)

    def unit(c: Candidate) -> Callable[[], int]:
        w = tuple(c.train.loss_weights)

        def f() -> int:
            for _ in range(reps):
                _train_step(c, device, x, y, w, loss_fn)
            return batch * reps
        return f

    return interleaved({n: unit(c) for n, c in cands.items()}, rounds, device)


def bench_pack(ref: Candidate, device: torch.device, batch: int, k: int, rounds: int, reps: int,
               loss_fn: Callable) -> dict[str, list[float]]:
    """Aggregate training images/s of ``k`` runs in lockstep (:class:`engine.packed.PackedStep`: one
    vmapped step over ``k`` EGE-UNets, each on its own batch, then ``k`` AdamW steps), against one
    reference run's step at the same batch; the ratio is what packing buys for the whole suite."""
    from egeunet.model import EGEUNet
    from engine.packed import PackedStep

    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(EGEUNet().to(device))
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    step = PackedStep(models[0], tuple(models[0].loss_weights))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(k, batch, 3, 256, 256, generator=g).to(device)
    y = (torch.rand(k, batch, 1, 256, 256, generator=g) > 0.5).float().to(device)
    w = tuple(ref.train.loss_weights)

    def reference() -> int:
        for _ in range(reps):
            _train_step(ref, device, x[0], y[0], w, loss_fn)
        return batch * reps

    def packed() -> int:
        for _ in range(reps):
            grads, _ = step.gradients(models, x, y)
            for j, (m, o) in enumerate(zip(models, opts)):
                step.apply(j, m, o, grads)
        return batch * k * reps

    return interleaved({"reference": reference, f"packed_{k}": packed}, rounds, device)


PATH_CANDIDATES = ("channels_last", "compiled")
PATH_MODELS = ("unet32", "unext_s", "unext", "malunet", "transfuse_lite")  # the compare suite's baselines


def bench_paths(model: str, device: torch.device, batch: int, size: int, rounds: int, reps: int,
                loss_fn: Callable, candidates: tuple[str, ...] = ("channels_last",)
                ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Training-step images/s of registered ``model`` on each path, interleaved with its plain eager step
    (``reference``): ``channels_last`` (:func:`zoo.views.channels_last`), ``compiled`` (``torch.compile``,
    inductor; the first call's compile time is returned, not timed). Same weights and batch for all.
    Returns the rates, the setup seconds and each path's max |logit diff| vs the reference."""
    from zoo.contract import as_seg_output
    from zoo.registry import create_model
    from zoo.views import channels_last, compiled

    def build() -> nn.Module:
        torch.manual_seed(0)
        return create_model(model).to(device)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float().to(device)
    plain = build()
    nets: dict[str, nn.Module] = {"reference": plain}
    for c in candidates:
        if c == "channels_last":
            nets[c] = channels_last(build(), "train")
        elif c == "compiled":  # the view the trainer takes where compiling pays (zoo.paths)
            nets[c] = compiled(build(), "train")
        else:
            raise ValueError(f"unknown path {c!r}; known: {', '.join(PATH_CANDIDATES)}")
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in nets.items()}
    weights = tuple(plain.loss_weights)
    diffs: dict[str, float] = {}
    with torch.no_grad():  # same weights, eval mode (no dropout): every path's logits against the plain model's
        for m in nets.values():
            m.eval()
        ref_logits = as_seg_output(plain(x)).logits
        for k, m in nets.items():
            diffs[k] = float((as_seg_output(m(x)).logits.double() - ref_logits.double()).abs().max())
        for m in nets.values():
            m.train()

    def unit(k: str, n: int = reps) -> Callable[[], int]:
        def f() -> int:
            for _ in range(n):
                loss = loss_fn(nets[k](x), y, weights)
                opts[k].zero_grad(set_to_none=True)
                loss.backward()
                opts[k].step()
            return batch * n
        return f

    setup: dict[str, float] = {}
    for k in nets:  # the first training step: compilation of forward and backward for ``compiled``
        t = time.perf_counter()
        unit(k, 1)()
        _sync(device)
        setup[k] = time.perf_counter() - t
    rates = interleaved({k: unit(k) for k in nets}, rounds, device, warmup=0)
    return rates, setup, diffs


def load_epoch_data(quick: bool, n_quick: int) -> tuple[Any, str]:
    from engine.data import dataset_available, load_split

    t = time.perf_counter()
    if dataset_available("isic2018"):
        data = load_split("isic2018", "train", size=256, n=n_quick if quick else None)
        src = f"isic2018 train ({len(data.ids)} images{', subset' if quick else ''})"
    else:
        data = load_split("synthetic", "train", size=256, n=n_quick if quick else 512)
        src = f"synthetic train ({len(data.ids)} images; ISIC2018 not found)"
    return data, f"{src}, load_split {time.perf_counter() - t:.1f} s"


def bench_epoch(cands: dict[str, Candidate], device: torch.device, data: Any, batch: int, rounds: int,
                loss_fn: Callable) -> dict[str, list[float]]:
    """One full training epoch per unit, as engine.train does it: the batch gathered and normalised
    (``TrainBatches``) and augmented, then the step; the fast candidates prepare the next batch while one trains
    where the trainer's fast path does (``engine.train.prefetches``), the reference in the plain loop."""
    from engine.data import augment_batch
    from engine.data.prefetch import prefetched
    from engine.train import TrainBatches, prefetches

    n = len(data.ids)
    batches = TrainBatches(data.images, data.masks, n, device)

    def unit(c: Candidate) -> Callable[[], int]:
        w = tuple(c.train.loss_weights)
        ahead = prefetches(c.name != "reference", device)

        def f() -> int:
            gen = torch.Generator().manual_seed(7)  # same order and augmentation for every candidate
            aug = torch.Generator().manual_seed(8)
            perm = torch.randperm(n, generator=gen).numpy()

            def prepare(k: int) -> tuple[Tensor, Tensor]:
                return augment_batch(*batches.get(perm[k * batch:(k + 1) * batch]), aug)

            for x, y in prefetched(prepare, (n + batch - 1) // batch, ahead=ahead):
                _train_step(c, device, x, y, w, loss_fn)
            return n
        return f

    return interleaved({n_: unit(c) for n_, c in cands.items()}, rounds, device, warmup=0)


# ------------------------------------------------------------------------------------ trust
CI_LEVEL = 0.95
CI_RESAMPLES = 2000
CI_METHOD = "median of paired per-round ratios; percentile bootstrap over rounds"
MIN_CI_ROUNDS = 5  # fewer paired rounds: the interval is printed but flagged (few_rounds)
BUSY_START_PER_CORE = 0.5  # load average before the bench > this x cores: busy_before
BUSY_END_MARGIN = 0.5  # load average after > cores + this (the bench itself adds ~threads): busy_after
WIDE_REL_HALFWIDTH = 0.10  # (hi - lo) / 2 / ratio above this: wide_interval


def paired_ratios(cand: list[float], ref: list[float]) -> list[float]:
    """Per-round ratios candidate / reference, round i with round i (the rounds are interleaved)."""
    if len(cand) != len(ref):
        raise ValueError(f"unpaired rounds: {len(cand)} vs {len(ref)}")
    return [c / r for c, r in zip(cand, ref)]


def bootstrap_ci(ratios: list[float], level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval of the MEDIAN of paired per-round ratios.

    Resamples whole rounds (each a (candidate, reference) pair, so round-to-round load that hits both
    cancels in the ratio) with replacement, ``resamples`` times with a fixed seed (reproducible), and
    returns the (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled medians. Fewer than two
    rounds: (nan, nan).
    """
    import numpy as np

    r = np.asarray(ratios, dtype=float)
    if r.size < 2 or not np.isfinite(r).all():
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, r.size, size=(resamples, r.size))
    meds = np.median(r[idx], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def rel_halfwidth(ratio: float, lo: float, hi: float) -> float:
    """Half the interval's width relative to the ratio (nan when unknown)."""
    if not all(math.isfinite(v) for v in (ratio, lo, hi)) or ratio == 0:
        return float("nan")
    return (hi - lo) / 2 / abs(ratio)


def machine_flags(loadavg_start: float | None, loadavg_end: float | None, cores: int | None) -> list[str]:
    """``busy_before`` / ``busy_after`` when the 1-minute load average says other work shared the cores."""
    flags: list[str] = []
    if not cores:
        return flags
    if loadavg_start is not None and loadavg_start > BUSY_START_PER_CORE * cores:
        flags.append("busy_before")
    if loadavg_end is not None and loadavg_end > cores + BUSY_END_MARGIN:
        flags.append("busy_after")
    return flags


def row_flags(rounds: int, halfwidth: float) -> list[str]:
    """``few_rounds`` (< MIN_CI_ROUNDS paired rounds), ``wide_interval`` (half-width > WIDE_REL_HALFWIDTH;
    an unknown interval counts as wide)."""
    flags: list[str] = []
    if rounds < MIN_CI_ROUNDS:
        flags.append("few_rounds")
    if not math.isfinite(halfwidth) or halfwidth > WIDE_REL_HALFWIDTH:
        flags.append("wide_interval")
    return flags


def trust_warnings(rows: list[dict[str, Any]], loadavg_start: float | None, loadavg_end: float | None,
                   cores: int | None) -> list[str]:
    """The ``WARNING: ...`` lines for a bench run (empty when it can be trusted)."""
    out: list[str] = []
    m = machine_flags(loadavg_start, loadavg_end, cores)
    if m:
        out.append(f"WARNING: the machine was busy (1-min load average {loadavg_start} before, {loadavg_end} "
                   f"after, {cores} cores; limits {BUSY_START_PER_CORE:g} x cores before, cores + "
                   f"{BUSY_END_MARGIN:g} after): the rates measure the machine as much as the code; "
                   f"rerun on an idle machine before quoting them")
    for r in rows:
        if r.get("candidate") == "reference":
            continue
        f = row_flags(int(r["rounds"]), float(r["ratio_ci_rel_halfwidth"]))
        what = f"{r['case']} b{r['batch']} {r['candidate']}"
        if "wide_interval" in f:
            hw = float(r["ratio_ci_rel_halfwidth"])
            width = "unknown" if not math.isfinite(hw) else f"{100 * hw:.0f}%"
            out.append(f"WARNING: {what}: the 95% interval of the ratio is wide (half-width {width} of the "
                       f"ratio, limit {100 * WIDE_REL_HALFWIDTH:.0f}%): more rounds (--rounds / --epoch-rounds) "
                       f"or a quieter machine")
        if "few_rounds" in f:
            out.append(f"WARNING: {what}: {r['rounds']} round(s) < {MIN_CI_ROUNDS}: the interval is not reliable")
    return out


# ------------------------------------------------------------------------------------- docs
DEFAULT_BENCH_DIR = Path("results/bench")
DEFAULT_DOCS = Path("docs/performance.md")
NOTES_MARKER = "<!-- studies.bench: hand-written notes below this line are kept when the file is regenerated -->"
NA = "n/a"


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(v: Any, spec: str = ".2f") -> str:
    x = _num(v)
    return NA if x is None else format(x, spec)


def _committed_date(path: Path) -> str | None:
    """Date of the last commit that touched ``path`` (None when not in git)."""
    import subprocess

    try:
        res = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _same(rows: list[dict[str, str]], key: str) -> str:
    vals = {r.get(key) or "" for r in rows}
    vals.discard("")
    if not vals:
        return NA
    return vals.pop() if len(vals) == 1 else "varies"


def _ci_cell(r: dict[str, str]) -> str:
    lo, hi = _num(r.get("ratio_ci_low")), _num(r.get("ratio_ci_high"))
    return NA if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def _trust(rows: list[dict[str, str]]) -> str:
    """The union of the rows' warning flags; ``none``; n/a for a CSV without the column."""
    if not rows or "warnings" not in rows[0]:
        return NA
    flags = sorted({f for r in rows for f in (r.get("warnings") or "").split(";") if f})
    return ", ".join(f"`{f}`" for f in flags) if flags else "none"


def _meta(path: Path, rows: list[dict[str, str]], shown: str) -> list[str]:
    commit = _same(rows, "git_commit")
    dirty = _same(rows, "git_dirty")
    if commit not in (NA, "varies"):
        commit = f"`{commit[:12]}`" + (" (uncommitted changes)" if dirty == "True" else
                                      " (clean)" if dirty == "False" else "")
    date = _same(rows, "date")
    if date == NA:
        cd = _committed_date(path)
        date = f"{NA} (CSV committed {cd})" if cd else NA
    hw = _same(rows, "gpu")
    machine = f"{_same(rows, 'cpu')}, {_same(rows, 'cores')} cores" + (f"; GPU {hw}" if hw != NA else "")
    load = f"{_same(rows, 'loadavg_start')} before, {_same(rows, 'loadavg_end')} after"
    trust = _trust(rows)
    if trust == NA:
        trust = f"{NA} (CSV written before the bench checked itself)"
    epoch = _same(rows, "epoch_data")
    lines = [
        f"## `{shown}`", "",
        f"- device `{_same(rows, 'device')}`; machine: {machine}; torch {_same(rows, 'torch')}, "
        f"threads {_same(rows, 'threads')}, fast workers {_same(rows, 'fast_workers')}, "
        f"OMP_WAIT_POLICY {_same(rows, 'omp_wait_policy')}" + (f", TF32 {_same(rows, 'tf32')}"
                                                               if _same(rows, 'tf32') != NA else ""),
        f"- commit: {commit}; date: {date}",
        f"- 1-minute load average: {load}",
        f"- warnings: {trust}",
    ]
    if epoch != NA:
        lines.append(f"- epoch data: {epoch}")
    return lines + [""]


def _candidate(r: dict[str, Any]) -> str:
    """A row's candidate as shown: a layout row names its layout (``reference 1x2``: one worker, 2 threads)."""
    c = str(r.get("candidate", NA))
    return f"reference {r['layout']}" if r.get("layout") and c == "reference" else c


def _table(rows: list[dict[str, str]]) -> list[str]:
    head = ["case", "batch", "candidate", "img/s (median)", "ratio vs reference (median)", "95% interval",
            "range [min, max]", "rounds", "max \\|diff\\| vs reference"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        ref = r.get("candidate") == "reference"
        out.append("| " + " | ".join([
            f"{r.get('case', NA)} {r['model']}" if r.get("model") else r.get("case", NA), r.get("batch", NA),
            _candidate(r), _fmt(r.get("img_per_s"), ".1f"),
            "1 (baseline)" if ref else _fmt(r.get("ratio_vs_reference")),
            "-" if ref else _ci_cell(r),
            "-" if ref else f"[{_fmt(r.get('ratio_min'))}, {_fmt(r.get('ratio_max'))}]",
            r.get("rounds") or NA,
            "-" if ref else _fmt(r.get("max_abs_diff"), ".1e"),
        ]) + " |")
    return out + [""]


def _summary(sets: list[tuple[str, list[dict[str, str]]]]) -> list[str]:
    cases = [("train_step", "8", "train step b8"), ("epoch", "8", "epoch"), ("infer", "1", "inference b1"),
             ("infer", "16", "inference b16")]
    out = ["| CSV | device | " + " | ".join(c[2] for c in cases) + " | load avg before / after | warnings |",
           "|---|---|" + "|".join(["---:"] * len(cases)) + "|---:|---|"]
    for shown, rows in sets:
        cells = []
        for case, batch, _ in cases:
            r = next((x for x in rows if x.get("case") == case and x.get("batch") == batch
                      and x.get("candidate") == "fast"), None)
            cells.append("-" if r is None else f"{_fmt(r.get('ratio_vs_reference'))} {_ci_cell(r)}")
        out.append(f"| `{shown}` | {_same(rows, 'device')} | " + " | ".join(cells)
                   + f" | {_same(rows, 'loadavg_start')} / {_same(rows, 'loadavg_end')} | {_trust(rows)} |")
    return out + [""]


def _paths_choice(path: Path) -> list[str]:
    """What the trainer makes of ``paths_cpu.csv``: per model, where ``torch.compile`` starts to pay
    (:mod:`zoo.paths`)."""
    from zoo.paths import COMPILE_SETUP_FACTOR, break_even_images, measurements
    from zoo.registry import get_entry

    rows = measurements(path)
    if not rows:
        return []
    out = ["## Training path per model (`zoo.paths`, from `paths_cpu.csv`)", "",
           "A fast-path CPU run trains through `torch.compile` instead of the declared view when the compiled "
           "step beats the view outright (its 95% interval above the view's) and the run is long enough to win "
           f"back {COMPILE_SETUP_FACTOR:g} x the measured compile time; otherwise through the view. A resumed run "
           "keeps the path it started on. A model that declares no view (channels-last measured no clear gain) "
           "trains plain: compiling is weighed only against a declared view.", "",
           "| model | declared view | channels_last | compiled | compile s | compiling pays after (images at 224 px) |",
           "|---|---|---:|---:|---:|---:|"]
    for name, m in sorted(rows.items()):
        declared = get_entry(name).fast
        n = break_even_images(m, 224) if declared else math.inf
        out.append(f"| {name} | {declared.rpartition(':')[2] if declared else 'none (plain)'} | "
                   f"{m.view_ratio:.2f} [{m.view_ci[0]:.2f}, {m.view_ci[1]:.2f}] | "
                   f"{m.compiled_ratio:.2f} [{m.compiled_ci[0]:.2f}, {m.compiled_ci[1]:.2f}] | {m.compile_s:.1f} | "
                   + ("never" if math.isinf(n) else f"{math.ceil(n):,}") + " |")
    return out + [""]


def render_docs(bench_dir: Path, notes: str = "") -> str:
    """``docs/performance.md`` from every ``*.csv`` in ``bench_dir`` (no measuring)."""
    sets, profiles = [], []
    for path in sorted(Path(bench_dir).glob("*.csv")):
        rows = _read_csv(path)
        shown = f"{Path(bench_dir).as_posix().rstrip('/')}/{path.name}"
        if rows and "candidate" in rows[0] and "case" in rows[0]:
            sets.append((shown, path, rows))
        elif rows and "op" in rows[0] and "family" in rows[0]:  # python -m studies.opprofile
            profiles.append((shown, rows))
    lines = [
        "# Performance",
        "",
        "<!-- generated by `python -m studies.bench --write-docs`; edit the CSVs or studies/bench.py, "
        "not this file (only the notes after the marker at the end are hand-written) -->",
        f"*Generated by `python -m studies.bench --write-docs` from `{Path(bench_dir).as_posix()}/*.csv` "
        "(and after every bench run that writes there). Do not edit by hand: the tables are rewritten "
        "from the committed CSVs; only the notes after the marker at the end are kept as written.*",
        "",
        "What the bench measures: the plain eager reference EGE-UNet (`egeunet.reference`) against the "
        "fast path (`egeunet.fast`) with the same weights, in one process, the candidates interleaved "
        "round by round (the order flips every round). A ratio is the **median of the paired per-round "
        "ratios** (round *i* of a candidate over round *i* of the reference); its "
        f"{100 * CI_LEVEL:.0f}% interval is a percentile bootstrap of that median over the paired rounds "
        f"({CI_RESAMPLES} resamples, fixed seed). The range is the smallest and largest per-round ratio. "
        "The load average is the 1-minute `os.getloadavg()` before and after the bench.",
        "",
        f"Warnings: `busy_before` (load average before > {BUSY_START_PER_CORE:g} x cores), `busy_after` "
        f"(after > cores + {BUSY_END_MARGIN:g}), `wide_interval` (interval half-width > "
        f"{100 * WIDE_REL_HALFWIDTH:.0f}% of the ratio), `few_rounds` (< {MIN_CI_ROUNDS} rounds). "
        f"`{NA}`: the CSV was written before the bench recorded that column.",
        "",
        "Reproduce: `python -m studies.bench [--quick] --csv results/bench/<name>.csv` "
        "(CUDA: `--device cuda`, see docs/gpu.md).",
        "",
    ]
    if sets:
        lines += ["## Summary: fast path vs reference (median ratio [95% interval])", ""]
        lines += _summary([(s, r) for s, _, r in sets])
    else:
        lines += [f"No bench CSV in `{Path(bench_dir).as_posix()}`.", ""]
    for shown, path, rows in sets:
        lines += _meta(path, rows, shown)
        lines += _table(rows)
    paths_csv = Path(bench_dir) / "paths_cpu.csv"
    if paths_csv.is_file():
        lines += _paths_choice(paths_csv)
    if profiles:
        from studies.opprofile import render_docs_section

        for shown, rows in profiles:
            lines += render_docs_section(shown, rows)
    lines += [NOTES_MARKER, ""]
    text = "\n".join(lines)
    return text + (notes.lstrip("\n") if notes.strip() else "")


def write_docs(bench_dir: Path = DEFAULT_BENCH_DIR, docs: Path = DEFAULT_DOCS) -> Path:
    """(Re)write ``docs`` from ``bench_dir``'s CSVs, keeping the hand-written notes after the marker."""
    from engine.record import atomic_write

    docs = Path(docs)
    notes = ""
    if docs.is_file():
        old = docs.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    text = render_docs(Path(bench_dir), notes)
    docs.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(docs, lambda fh: fh.write(text))
    return docs


# ------------------------------------------------------------------------------------- main
def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def environment(device: torch.device, workers: int, loadavg_start: float | None = None) -> dict[str, Any]:
    """Machine, versions and threads; ``workers``: the fast path's worker threads as it resolved them;
    ``loadavg_start``: the load average taken before the bench began (else now)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "fast_workers": workers,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "cpu": cpu,
        "cores": os.cpu_count(), "python": platform.python_version(),
    }
    from engine.env import git_info

    git = git_info()  # the code measured (dirty: uncommitted or untracked files in the checkout)
    env["git_commit"], env["git_dirty"] = git["commit"], git["dirty"]
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32"] = bool(torch.backends.cudnn.allow_tf32)
    env["loadavg_start"] = loadavg_start if loadavg_start is not None else loadavg()
    return env


def summarise(case: str, batch: int, rates: dict[str, list[float]], acc: dict[str, dict[str, float]],
              env: dict[str, Any], setup: dict[str, float]) -> list[dict[str, Any]]:
    """One CSV row per candidate: median rate, median paired ratio with its bootstrap interval, accuracy,
    environment. The columns of earlier CSVs come first, in their order; the trust columns follow
    (``loadavg_end`` and ``warnings`` are filled in by :func:`finish_rows` at the end of the bench)."""
    rows = []
    base = rates["reference"]
    for name, rs in rates.items():
        ratios = paired_ratios(rs, base)
        med = _median(ratios)
        lo, hi = (1.0, 1.0) if name == "reference" else bootstrap_ci(ratios)
        a = acc.get(name, {})
        rows.append({
            "case": case, "batch": batch, "candidate": name, "img_per_s": round(_median(rs), 2),
            # the ratio to the same 3 decimals as its interval, so the rounded ratio never falls outside it
            "img_per_s_all": [round(r, 2) for r in rs], "ratio_vs_reference": round(med, 3),
            "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2), "rounds": len(rs),
            "max_abs_diff": a.get("max_abs_diff"), "max_rel_grad_diff": a.get("max_rel_grad_diff"),
            "max_abs_err_vs_fp64": a.get("max_abs_err_vs_fp64"),
            "setup_s": round(setup.get(name, 0.0), 1), **env,
            "ratio_ci_low": round(lo, 3), "ratio_ci_high": round(hi, 3),
            "ratio_ci_rel_halfwidth": round(rel_halfwidth(med, lo, hi), 4),
            "ci_level": CI_LEVEL, "ci_method": CI_METHOD,
        })
    return rows


def finish_rows(rows: list[dict[str, Any]], loadavg_end: float | None, date: str) -> list[str]:
    """Add the end-of-bench columns (``loadavg_end``, ``date``, ``warnings``: ``;``-joined flags of
    :func:`machine_flags` and :func:`row_flags`) to every row; returns the WARNING lines."""
    for r in rows:
        flags = machine_flags(r.get("loadavg_start"), loadavg_end, r.get("cores"))
        if r["candidate"] != "reference":
            flags += row_flags(int(r["rounds"]), float(r["ratio_ci_rel_halfwidth"]))
        r["loadavg_end"] = loadavg_end
        r["date"] = date
        r["warnings"] = ";".join(flags)
    return trust_warnings(rows, rows[0].get("loadavg_start") if rows else None, loadavg_end,
                          rows[0].get("cores") if rows else None)


EXAMPLES = """examples:
  python -m studies.bench                     # the default cases, 15 rounds
  python -m studies.bench --quick             # fewer rounds: wider intervals
  python -m studies.bench --cases paths --paths channels_last,compiled
  python -m studies.bench --cases layout --rounds 6  # layout_cpu.csv
  python -m studies.bench --device cuda --quick  # results/bench/cuda_<gpu>.csv
  python -m studies.bench --write-docs        # regenerate docs/performance.md"""


def build_parser() -> argparse.ArgumentParser:
    from studies._cli import EXIT_LINE, parser

    p = parser(PROG, "The reference EGE-UNet against the default fast path (and other models on their "
                     "paths), interleaved round by round in one process; ratios with a 95% bootstrap interval, "
                     "the load average and a warning when the machine was busy. Writes a CSV.",
               epilog=f"{EXAMPLES}\n\n{EXIT_LINE}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to measure (default cpu)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and calls per round, a 64-image epoch")
    p.add_argument("--csv", type=Path, default=None,
                   help=f"where to write the rows (default {DEFAULT_CSV}; cuda: results/bench/cuda_<gpu>.csv)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds per case (default {DEFAULT_ROUNDS}, quick {QUICK_ROUNDS}); the 95%% "
                        f"interval needs at least {MIN_CI_ROUNDS}")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--workers", type=int, default=None, help="fast-path worker threads (default: threads)")
    p.add_argument("--extra", default="", help="comma list: fast_w2, compiled, amp (cuda), graph (cuda: the "
                                               "CUDA-graph-captured training step)")
    p.add_argument("--cases", default=None,
                   help="comma list of cases to run: infer1, infer16, train8, epoch, pack8, paths, layout "
                        "(default: the first four; cuda: infer1, infer16, train8, pack8; layout: worker "
                        "processes x threads per model, for studies.run --workers auto)")
    p.add_argument("--models", default=None,
                   help=f"paths, layout: registered models to measure (default: {','.join(PATH_MODELS)}; "
                        f"layout: egeunet too)")
    p.add_argument("--paths", default="channels_last",
                   help=f"paths: comma list of {', '.join(PATH_CANDIDATES)} measured against each model's plain "
                        "eager step (compiled: torch.compile, compile time in setup_s)")
    p.add_argument("--path-size", type=int, default=224, metavar="PX",
                   help="paths, layout: input side (default 224, the cpu budget's)")
    p.add_argument("--pack", type=int, default=4, metavar="K",
                   help="pack8: runs trained in lockstep (engine.packed), aggregate images/s vs one reference run")
    p.add_argument("--epoch-rounds", type=int, default=None,
                   help=f"interleaved epochs per candidate (default {DEFAULT_EPOCH_ROUNDS}; quick: as --rounds, "
                        f"the epoch being a 64-image subset)")
    p.add_argument("--omp-default", action="store_true", help="leave OMP_WAIT_POLICY unset (see module doc)")
    p.add_argument("--tf32", action="store_true",
                   help="cuda: let cuDNN / cuBLAS use TF32 for float32 (off by default: TF32 rounds inputs to a "
                        "10-bit mantissa, so fp32 outputs would no longer match the reference)")
    from studies._cli import add_format

    add_format(p, "the measured rows (every CSV column)")
    docs = p.add_argument_group("docs/performance.md")
    docs.add_argument("--write-docs", action="store_true",
                      help="measure nothing: regenerate --docs from the CSVs in --bench-dir and exit")
    docs.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR,
                      help=f"the committed bench CSVs (default {DEFAULT_BENCH_DIR})")
    docs.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help=f"the generated page (default {DEFAULT_DOCS})")
    docs.add_argument("--no-docs", action="store_true",
                      help="after a run, do not regenerate --docs (it is regenerated only when --csv lies in "
                           "--bench-dir)")
    return p


def default_csv(env: dict[str, Any], cases: Sequence[str] = ()) -> Path:
    """Where a run without ``--csv`` writes: ``results/bench/bench.csv`` on the CPU (``layout_cpu.csv`` when
    only the layout case ran: the file ``studies.run --workers auto`` reads),
    ``results/bench/cuda_<gpu>.csv`` on a GPU (``NVIDIA H200`` -> ``cuda_h200.csv``)."""
    gpu = env.get("gpu")
    if not gpu and list(cases) == ["layout"]:
        from studies.placement import LAYOUT_CSV

        return DEFAULT_CSV.with_name(LAYOUT_CSV.name)
    if not gpu:
        return DEFAULT_CSV
    words = [w for w in re.split(r"[^a-z0-9]+", str(gpu).lower()) if w and w not in ("nvidia", "tesla", "geforce")]
    return DEFAULT_CSV.with_name(f"cuda_{'_'.join(words) or 'gpu'}.csv")


def _in_dir(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().parent == folder.resolve()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    from studies._cli import console, emit, fail, write_csv_atomic

    args = build_parser().parse_args(argv)
    con = console(stderr=args.format != "table")  # with --format json|csv stdout carries only the rows
    if args.write_docs:
        if not args.bench_dir.is_dir():
            fail(PROG, f"--bench-dir {args.bench_dir}: not a folder")
        path = write_docs(args.bench_dir, args.docs)
        con.print(f"wrote {path} (from {args.bench_dir}/*.csv)")
        return 0
    for opt in ("rounds", "epoch_rounds"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            fail(PROG, f"--{opt.replace('_', '-')} {v}: give at least 1")

    load_start = loadavg()  # before anything is built or measured
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(PROG, "--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    epoch_rounds = args.epoch_rounds or (rounds if args.quick else DEFAULT_EPOCH_ROUNDS)
    extra = [e for e in args.extra.split(",") if e]
    if args.cases is None:
        args.cases = "infer1,infer16,train8,pack8" if args.device == "cuda" else "infer1,infer16,train8,epoch"
    cases = [c for c in args.cases.split(",") if c]
    if args.pack < 1:
        fail(PROG, f"--pack {args.pack}: give at least 1")
    from rich.markup import escape
    loss_fn = _loss_fn()
    cands, ref = build_candidates(device, extra, args.workers)
    # the batch is split over worker threads on the CPU only (FastModel._chunks)
    env = environment(device, cands["fast"].train.workers if device.type == "cpu" else 1, load_start)
    con.print(f"[bold]EGE-UNet bench[/bold]: {escape(str(env))}")
    setup: dict[str, float] = {n: c.setup_s for n, c in cands.items() if c.setup_s}  # e.g. graph capture
    if "compiled" in cands:  # compile outside the timed rounds; report the time
        c = cands["compiled"]
        xb = torch.randn(8, 3, 256, 256, device=device)
        t = time.perf_counter()
        out = c.train(xb)
        loss_fn(out, torch.zeros(8, 1, 256, 256, device=device), tuple(c.train.loss_weights),
                fused=c.fused_loss).backward()
        with torch.no_grad():
            c.infer(xb[:1])
            c.infer(torch.randn(16, 3, 256, 256, device=device))
        setup["compiled"] = time.perf_counter() - t
        con.print(f"compiled: first calls (compile) {setup['compiled']:.0f} s")

    acc = accuracy(cands, ref, device, loss_fn)
    floor = acc["reference"]
    con.print(f"accuracy (fixed 2x3x256x256 batch, random init, max |logit| {floor['max_abs_logit']:.1f}): "
              f"float32 noise floor of the reference itself vs float64: outputs {floor['fp32_floor_out']:.1e}, "
              f"grads (rel) {floor['fp32_floor_grad']:.1e}")

    rows: list[dict[str, Any]] = []
    reps1 = 5 if args.quick else 10

    def progress(msg: str) -> None:
        con.print(f"[dim]{time.strftime('%H:%M:%S')} {msg}[/dim]")

    if "infer1" in cases:
        progress(f"inference, batch 1: {rounds} rounds x {reps1} calls")
        rows += summarise("infer", 1, bench_infer(cands, device, 1, rounds, reps1), acc, env, setup)
    if "infer16" in cases:
        progress(f"inference, batch 16: {rounds} rounds")
        rows += summarise("infer", 16, bench_infer(cands, device, 16, rounds, 1 if args.quick else 2), acc, env,
                          setup)
    if "train8" in cases:
        progress(f"training step, batch 8: {rounds} rounds")
        rows += summarise("train_step", 8, bench_train(cands, device, 8, rounds, 1 if args.quick else 2, loss_fn),
                          acc, env, setup)
    if "pack8" in cases:
        progress(f"{args.pack} runs packed, batch 8 each: {rounds} rounds")
        rows += summarise("pack", 8, bench_pack(cands["reference"], device, 8, args.pack, rounds,
                                                1 if args.quick else 2, loss_fn), acc, env, setup)
    if "paths" in cases:
        for name in [m for m in (args.models or ",".join(PATH_MODELS)).split(",") if m]:
            progress(f"{name}: training step on each path, batch 8, {args.path_size} px, {rounds} rounds")
            rates, psetup, diffs = bench_paths(name, device, 8, args.path_size, rounds, 1, loss_fn,
                                               tuple(c for c in args.paths.split(",") if c))
            prow = summarise("path", 8, rates, {k: {"max_abs_diff": v} for k, v in diffs.items()}, env, psetup)
            for r in prow:
                r["model"], r["size"] = name, args.path_size
            rows += prow
    if "layout" in cases:
        from studies.executors.local import default_threads
        from studies.placement import layouts_for, measure_layouts

        cores = args.threads or default_threads()
        ref_layout = layouts_for(cores)[0]
        for name in [m for m in (args.models or ",".join(("egeunet",) + PATH_MODELS)).split(",") if m]:
            progress(f"{name}: training step in each layout of {cores} cores "
                     f"({', '.join(lay.label for lay in layouts_for(cores))}), batch 8, {args.path_size} px, "
                     f"{rounds} rounds")
            rates = measure_layouts(name, cores, rounds=rounds, size=args.path_size,
                                    unit_seconds=2.0 if args.quick else 4.0)
            named = {("reference" if lay == ref_layout else lay.label): v for lay, v in rates.items()}
            lrows = summarise("layout", 8, named, {}, env, {})
            for r in lrows:
                r["model"], r["size"] = name, args.path_size
                r["layout"] = ref_layout.label if r["candidate"] == "reference" else r["candidate"]
                r["cores"] = cores
            rows += lrows
    epoch_note = ""
    if "epoch" in cases:
        data, epoch_note = load_epoch_data(args.quick, 64)
        progress(f"training epoch: {epoch_note}; {epoch_rounds} round(s)")
        rows += summarise("epoch", 8, bench_epoch(cands, device, data, 8, epoch_rounds, loss_fn), acc, env,
                          setup)
        for r in rows:
            if r["case"] == "epoch":
                r["epoch_data"] = epoch_note
    if not rows:
        fail(PROG, f"--cases {args.cases}: none of infer1, infer16, train8, epoch, pack8, paths, layout")
    for r in rows:
        r["fp32_floor_out"] = floor["fp32_floor_out"]
        r["max_abs_logit"] = floor["max_abs_logit"]
    load_end = loadavg()
    warnings = finish_rows(rows, load_end, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    from rich import box
    from rich.table import Table

    table = Table(title=f"EGE-UNet: reference vs fast path ({env['device']}, threads {env['threads']}, "
                        f"fast workers {env['fast_workers']}, OMP_WAIT_POLICY {env['omp_wait_policy']})",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("case", "b", "candidate", "img/s", "ratio", f"{100 * CI_LEVEL:.0f}% CI", "range", "n"):
        left = col in ("case", "candidate")  # names are never cut: numbers fit at 80 columns
        table.add_column(col, justify="left" if left else "right", no_wrap=True,
                         min_width=9 if col in ("range", f"{100 * CI_LEVEL:.0f}% CI") else None)
    for r in rows:
        is_ref = r["candidate"] == "reference"
        ci = "-" if is_ref else ("n/a" if not math.isfinite(r["ratio_ci_low"]) else
                                 f"{r['ratio_ci_low']:.2f}-{r['ratio_ci_high']:.2f}")
        case = f"{r['case']} {r['model']}" if r.get("model") else r["case"]
        table.add_row(case, str(r["batch"]), _candidate(r), f"{r['img_per_s']:.1f}",
                      "1.00" if is_ref else f"{r['ratio_vs_reference']:.2f}", ci,
                      "-" if is_ref else f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}", str(r["rounds"]))
    if args.format == "table":
        con.print(table)
    else:
        emit(rows, list(dict.fromkeys(k for r in rows for k in r)), args.format)
    con.print(f"b: batch; img/s: median over rounds; ratio: median of the paired per-round ratios vs the "
              f"reference; n: rounds; interval: {100 * CI_LEVEL:.0f}% percentile bootstrap over the paired rounds "
              f"({CI_RESAMPLES} resamples); range: min-max of the per-round ratios")
    for name, c in cands.items():
        a = acc.get(name, {})
        acc_txt = "" if name == "reference" else \
            (f"; max |diff| vs reference {a['max_abs_diff']:.1e}, grad rel diff {a['max_rel_grad_diff']:.1e}, "
             f"max |err| vs fp64 {a['max_abs_err_vs_fp64']:.1e}")
        con.print(f"  {name}: {escape(c.note)}{acc_txt}")
    if epoch_note:
        con.print(f"epoch data: {epoch_note}; rounds per case: {rounds}, epoch rounds: {epoch_rounds}")
    con.print(f"load average (1 min): before {load_start}, after {load_end} ({env['cores']} cores)")
    for w in warnings:
        con.print(f"[bold red]{escape(w)}[/bold red]")
    if not warnings:
        con.print("trust: machine idle enough and every interval within "
                  f"{100 * WIDE_REL_HALFWIDTH:.0f}% of its ratio")
    path = write_csv_atomic(rows, args.csv or default_csv(env, cases))
    con.print(f"wrote {path}")
    if not args.no_docs and _in_dir(Path(path), args.bench_dir):
        con.print(f"wrote {write_docs(args.bench_dir, args.docs)} (from {args.bench_dir}/*.csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
