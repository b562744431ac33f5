"""``python -m studies.bench``: the reference EGE-UNet against the default fast path, interleaved.

Measures in ONE process, alternating the candidates round by round (the order flips every round),
so that load from other processes hits both alike; ratios are the median of per-round ratios:

* inference images/s at batch 1 and batch 16 (256x256);
* training step images/s at batch 8: forward + deep-supervised BceDice loss (``engine.losses``) +
  backward + AdamW step;
* a full training epoch on ISIC2018 ``train`` at 256x256 including the per-batch data path
  (``engine.data.normalise`` + ``augment_batch``); ``--quick`` or no data: a subset / synthetic data.

Candidates: (a) ``reference`` = :class:`egeunet.reference.ReferenceEGEUNet`, plain eager;
(b) ``fast`` = :func:`engine.fast.make_fast` over :class:`egeunet.model.EGEUNet` with the same
weights, trained with :func:`engine.fast.adamw` (fused AdamW on the CPU) and the fused BceDice kernel
(``fused=True``) as ``engine.train`` does on the fast path; the reference keeps ATen's loss and AdamW.
``--extra`` adds diagnostic variants (``fast_w2``: the fast path with two single-threaded worker threads;
``compiled``: ``torch.compile`` of the fast path, compile time reported; on CUDA ``amp``).
Accuracy: max |output - reference| in float32 on a fixed batch (and the relative parameter-gradient
difference for training), next to the float32 noise floor (reference in float32 vs float64).

OpenMP: unless ``--omp-default`` is given or ``OMP_WAIT_POLICY`` is already set, the bench sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads: with the default (spinning) policy a 2-thread
process on a shared 2-core machine stalls at every barrier while another process holds a core
(measured: the reference's training step 50x slower), which would measure the machine, not the
model. The setting applies to both candidates and is recorded.

Usage::

    python -m studies.bench [--device cpu|cuda] [--quick] [--csv results/bench/bench.csv]
                            [--rounds N] [--threads N] [--workers N] [--extra fast_w2,compiled]
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--omp-default" not in sys.argv and "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede loading libgomp (import torch)

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

PROG = "studies.bench"
DEFAULT_CSV = Path("results/bench/bench.csv")


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
    from engine.fast import adamw, make_fast

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
    for name, c in cands.items():  # the plain reference keeps the plain loss (engine.train: fused=use_fast)
        c.fused_loss = name != "reference"
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
    """Forward (autocast for the amp candidate) + loss + backward + AdamW step, as engine.train does."""
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
    """One full training epoch per unit, as engine.train does it: normalise + augment + step."""
    from engine.data import augment_batch, normalise

    n = len(data.ids)

    def unit(c: Candidate) -> Callable[[], int]:
        w = tuple(c.train.loss_weights)

        def f() -> int:
            gen = torch.Generator().manual_seed(7)  # same order and augmentation for every candidate
            aug = torch.Generator().manual_seed(8)
            perm = torch.randperm(n, generator=gen).numpy()
            for s in range(0, n, batch):
                idx = perm[s:s + batch]
                x = normalise(data.images[idx], device=device)
                y = torch.from_numpy(data.masks[idx]).to(device).unsqueeze(1).float()
                x, y = augment_batch(x, y, aug)
                _train_step(c, device, x, y, w, loss_fn)
            return n
        return f

    return interleaved({n_: unit(c) for n_, c in cands.items()}, rounds, device, warmup=0)


# ------------------------------------------------------------------------------------- main
def environment(device: torch.device, workers: int) -> dict[str, Any]:
    """Machine, versions and threads; ``workers``: the fast path's worker threads as it resolved them."""
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
    try:
        env["loadavg_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return env


def summarise(case: str, batch: int, rates: dict[str, list[float]], acc: dict[str, dict[str, float]],
              env: dict[str, Any], setup: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    base = rates["reference"]
    for name, rs in rates.items():
        ratios = [r / b for r, b in zip(rs, base)]
        a = acc.get(name, {})
        rows.append({
            "case": case, "batch": batch, "candidate": name, "img_per_s": round(_median(rs), 2),
            "img_per_s_all": [round(r, 2) for r in rs], "ratio_vs_reference": round(_median(ratios), 2),
            "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2), "rounds": len(rs),
            "max_abs_diff": a.get("max_abs_diff"), "max_rel_grad_diff": a.get("max_rel_grad_diff"),
            "max_abs_err_vs_fp64": a.get("max_abs_err_vs_fp64"),
            "setup_s": round(setup.get(name, 0.0), 1), **env,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    from studies._cli import console, fail, write_csv_atomic

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="fewer rounds, a 64-image epoch")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--workers", type=int, default=None, help="fast-path worker threads (default: threads)")
    p.add_argument("--extra", default="", help="comma list: fast_w2, compiled, amp (cuda)")
    p.add_argument("--cases", default="infer1,infer16,train8,epoch", help="comma list of cases to run")
    p.add_argument("--epoch-rounds", type=int, default=1)
    p.add_argument("--omp-default", action="store_true", help="leave OMP_WAIT_POLICY unset (see module doc)")
    p.add_argument("--tf32", action="store_true",
                   help="cuda: let cuDNN / cuBLAS use TF32 for float32 (off by default: TF32 rounds inputs to a "
                        "10-bit mantissa, ~1e-2 relative, so fp32 outputs would no longer match the reference)")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        fail(PROG, "--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    rounds = args.rounds or (3 if args.quick else 5)
    extra = [e for e in args.extra.split(",") if e]
    cases = [c for c in args.cases.split(",") if c]
    con = console()
    from rich.markup import escape
    loss_fn = _loss_fn()
    cands, ref = build_candidates(device, extra, args.workers)
    # the batch is split over worker threads on the CPU only (FastModel._chunks)
    env = environment(device, cands["fast"].train.workers if device.type == "cpu" else 1)
    con.print(f"[bold]EGE-UNet bench[/bold]: {escape(str(env))}")
    setup: dict[str, float] = {}
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
    epoch_note = ""
    if "epoch" in cases:
        data, epoch_note = load_epoch_data(args.quick, 64)
        progress(f"training epoch: {epoch_note}; {args.epoch_rounds} round(s)")
        rows += summarise("epoch", 8, bench_epoch(cands, device, data, 8, args.epoch_rounds, loss_fn), acc, env,
                          setup)
        for r in rows:
            if r["case"] == "epoch":
                r["epoch_data"] = epoch_note

    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"EGE-UNet: reference vs fast path ({env['device']}, threads {env['threads']}, "
                        f"fast workers {env['fast_workers']}, OMP_WAIT_POLICY {env['omp_wait_policy']})")
    for col in ("case", "batch", "candidate", "img/s (median)", escape("ratio vs ref (median [min-max])"),
                "max |diff| vs ref", "grad rel diff", "max |err| vs fp64"):
        table.add_column(col, justify="right" if col not in ("case", "candidate") else "left")
    for r in rows:
        ratio = "1.00" if r["candidate"] == "reference" else \
            escape(f"{r['ratio_vs_reference']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]")
        table.add_row(r["case"], str(r["batch"]), r["candidate"], f"{r['img_per_s']:.1f}", ratio,
                      "-" if r["candidate"] == "reference" else f"{r['max_abs_diff']:.1e}",
                      "-" if r["candidate"] == "reference" else f"{r['max_rel_grad_diff']:.1e}",
                      f"{r['max_abs_err_vs_fp64']:.1e}")
    con.print(table)
    if epoch_note:
        con.print(f"epoch data: {epoch_note}; rounds per case: {rounds}, epoch rounds: {args.epoch_rounds}")
    for name, c in cands.items():
        con.print(f"  {name}: {c.note}")
    try:
        env_end = round(os.getloadavg()[0], 2)
        con.print(f"load average at start {env.get('loadavg_start')}, at end {env_end} (2 cores shared)")
    except OSError:
        pass
    for r in rows:
        r["fp32_floor_out"] = floor["fp32_floor_out"]
        r["max_abs_logit"] = floor["max_abs_logit"]
    path = write_csv_atomic(rows, args.csv)
    con.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
