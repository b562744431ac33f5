"""Where a training step spends its time: ``python -m studies.opprofile`` (torch.profiler, CPU).

Trains a registered model on its path (the fast view where it has one, as ``engine.train`` does: the same
optimizer rule and loss) on a fixed synthetic batch, profiles a few warm steps and writes one CSV row per
operator (``results/bench/ops_cpu.csv``): self CPU milliseconds per step, its share of the step's wall time,
calls per step, and the operator's family (dense conv, GEMM, depth-wise conv, norms, activation, loss, ...).
The row ``(untracked)`` is the wall time no operator accounts for: Python, the autograd engine, the
profiler itself. ``docs/performance.md`` shows the families (``python -m studies.bench --write-docs``).

The fast path's own C++ kernels are called inside its autograd functions, so their time is the self time
of those functions (``_LayerNormMulti``, ``_DepthwiseConvBackward``, ...). With one thread (the default)
the fast path runs in the calling thread, so every operator is seen.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

PROG = "python -m studies.opprofile"
DEFAULT_CSV = Path("results/bench/ops_cpu.csv")
UNTRACKED = "(untracked)"

#: operator name pattern -> family, first match wins
FAMILIES: tuple[tuple[str, str], ...] = (
    (r"LayerNorm|layer_norm", "LayerNorm"),
    (r"GroupNorm|group_norm|native_group_norm", "GroupNorm (+ max-pool)"),
    (r"Depthwise|_dw_", "depth-wise conv"),
    (r"convolution|conv2d|mkldnn_conv", "dense conv (oneDNN)"),
    (r"aten::(mm|addmm|bmm|matmul|linear)$", "GEMM (1x1 convs, resizes)"),
    (r"gelu|relu|sigmoid$|aten::sigmoid_backward", "activation"),
    (r"BceDice|softplus|binary_cross_entropy", "loss"),
    (r"UpBilinear|upsample|interp", "bilinear resize"),
    (r"max_pool|MaxPool", "max-pool"),
    (r"Optimizer|adamw|_foreach|fused_adam", "optimizer"),
    (r"aten::(copy_|cat|split|split_with_sizes|_to_copy|contiguous|clone)$|SplitChannels|CatChannels|GroupInputs",
     "copies / concat"),
    (r"aten::(empty|empty_like|empty_strided|zeros|zeros_like|fill_|zero_|resize_)$", "allocation / fill"),
    (r"autograd::engine|AccumulateGrad", "autograd nodes"),
    (r"aten::(sum|mul|mul_|add|add_|sub|div|neg|addcmul_?|repeat_interleave|where|mean)$", "small elementwise / sums"),
    (r"aten::(view|as_strided|permute|unsqueeze|squeeze|t|reshape|transpose|expand|slice|select|to|"
     r"alias|detach|unflatten|flatten|chunk|narrow|lift_fresh)$", "views"),
)

COLUMNS = ("model", "path", "batch", "size", "threads", "op", "family", "self_ms_per_step", "share_of_step",
           "calls_per_step", "step_ms", "steps", "torch", "cpu", "git_commit", "git_dirty", "loadavg_start",
           "loadavg_end", "date")


def family_of(op: str) -> str:
    """The family an operator's time is reported under (``other`` when no pattern matches)."""
    if op == UNTRACKED:
        return "Python / autograd (untracked)"
    for pattern, fam in FAMILIES:
        if re.search(pattern, op):
            return fam
    return "other"


@dataclass
class StepProfile:
    """Per-operator self CPU time of ``steps`` profiled training steps."""

    step_ms: float  # wall time per step (profiled)
    steps: int
    ops: dict[str, tuple[float, float]]  # op -> (self ms per step, calls per step)

    def rows(self) -> list[dict[str, Any]]:
        tracked = sum(ms for ms, _ in self.ops.values())
        ops = dict(self.ops)
        ops[UNTRACKED] = (max(0.0, self.step_ms - tracked), 0.0)
        out = [{"op": op, "family": family_of(op), "self_ms_per_step": round(ms, 3),
                "share_of_step": round(ms / self.step_ms, 4) if self.step_ms > 0 else 0.0,
                "calls_per_step": round(calls, 1), "step_ms": round(self.step_ms, 2), "steps": self.steps}
               for op, (ms, calls) in ops.items()]
        return sorted(out, key=lambda r: -r["self_ms_per_step"])


def profile_step(model: str = "egeunet", *, batch: int = 8, size: int = 256, steps: int = 5, warmup: int = 3,
                 fast: bool | None = None, threads: int = 1, seed: int = 0) -> tuple[StepProfile, str]:
    """Profile ``steps`` training steps of ``model`` (after ``warmup``) with ``threads`` torch threads (set for
    the call); returns the profile and the path name."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _profile_step(model, batch, size, steps, warmup, fast, seed)
    finally:
        torch.set_num_threads(saved)


def _profile_step(model: str, batch: int, size: int, steps: int, warmup: int, fast: bool | None,
                  seed: int) -> tuple[StepProfile, str]:
    from torch.profiler import ProfilerActivity, profile

    from engine.fastview import fast_views, uses_fast_path
    from engine.losses import model_loss
    from engine.numerics import training_path
    from engine.optim import make_adamw
    from zoo.registry import create_model

    torch.manual_seed(seed)
    net = create_model(model)
    use_fast = uses_fast_path(model, "cpu", fast)
    train, _ = fast_views(model, net, use_fast)
    opt = make_adamw(net.parameters(), use_fast, lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    weights = tuple(getattr(net, "loss_weights", (1.0,)))

    def step() -> None:
        loss = model_loss(train(x), y, weights, fused=use_fast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    ops: dict[str, tuple[float, float]] = {}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1000.0 / steps
        if ms > 0:
            ops[ev.key] = (ms, ev.count / steps)
    return StepProfile(step_ms=1000.0 * wall / steps, steps=steps, ops=ops), training_path(fast=use_fast)


def families(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """``(family, ms per step, share)`` summed over ``rows``, largest first."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        a = acc.setdefault(str(r["family"]), [0.0, 0.0])
        a[0] += float(r["self_ms_per_step"])
        a[1] += float(r["share_of_step"])
    return sorted(((f, ms, sh) for f, (ms, sh) in acc.items()), key=lambda t: -t[1])


def render_docs_section(shown: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown lines of one ops CSV for docs/performance.md: what was profiled, then the families."""
    if not rows:
        return []
    r0 = rows[0]
    lines = [f"## `{shown}`: where the training step spends its time", "",
             f"- `python -m studies.opprofile`: {r0['model']} on its {r0['path']} path, batch {r0['batch']}, "
             f"{r0['size']} px, {r0['threads']} thread(s), {r0['steps']} profiled steps of "
             f"{float(r0['step_ms']):.1f} ms (with the profiler on)",
             f"- torch {r0['torch']}; {r0['cpu']}; commit `{str(r0['git_commit'])[:12]}`"
             f"{' (uncommitted changes)' if str(r0['git_dirty']) == 'True' else ''}; {r0['date']}; "
             f"load average {r0['loadavg_start']} before, {r0['loadavg_end']} after",
             "", "| family | ms per step | share of the step | largest operator |", "|---|---:|---:|---|"]
    for fam, ms, share in families(rows):
        top = max((r for r in rows if r["family"] == fam), key=lambda r: float(r["self_ms_per_step"]))
        lines.append(f"| {fam} | {ms:.1f} | {100 * share:.1f}% | `{top['op']}` |")
    return lines + [""]


def build_parser() -> argparse.ArgumentParser:
    from studies import _cli

    p = _cli.parser(PROG, "Profile a training step with torch.profiler: self CPU time per operator and per "
                          "family (dense conv, GEMM, norms, ...), printed and written as CSV.",
                    epilog="examples:\n  python -m studies.opprofile            # egeunet, fast path, 1 thread\n"
                           "  python -m studies.opprofile --model unext_s --threads 2\n\n" + _cli.EXIT_LINE)
    p.add_argument("--model", default="egeunet", help="registered model (default: egeunet)")
    p.add_argument("--batch", type=int, default=8, help="training batch (default 8, the recipe's)")
    p.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps, after 3 warm-up steps (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: what each run of a --workers 2 campaign gets; with more, the "
                        "fast path runs its chunks in worker threads, profiled as one _ParallelChunks operator)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the model's fast view (default: as a CPU run trains it)")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"output CSV (default {DEFAULT_CSV})")
    _cli.add_format(p, "the per-family table")
    return p


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    from studies import _cli
    from studies.bench import environment, loadavg

    args = build_parser().parse_args(argv)
    for opt in ("batch", "size", "steps", "threads"):
        if getattr(args, opt) < 1:
            _cli.fail(PROG, f"--{opt} {getattr(args, opt)}: give at least 1")
    from zoo.registry import list_models

    if args.model not in list_models():
        _cli.fail(PROG, f"--model {args.model}: not a registered model (see python -m studies.profile --models all)")
    csv_path = _cli.check_output_file(args.csv, "--csv")
    load_start = loadavg()
    prof, path = profile_step(args.model, batch=args.batch, size=args.size, steps=args.steps, fast=args.fast,
                              threads=args.threads)
    env = environment(torch.device("cpu"), 1, load_start)
    meta = {"model": args.model, "path": path, "batch": args.batch, "size": args.size, "threads": args.threads,
            "torch": env["torch"], "cpu": env["cpu"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
            "loadavg_start": load_start, "loadavg_end": loadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
    rows = [{**meta, **r} for r in prof.rows()]
    _cli.write_csv_atomic(rows, csv_path, COLUMNS)
    fams = [{"family": f, "ms_per_step": round(ms, 2), "share": round(sh, 4)} for f, ms, sh in families(rows)]

    def table() -> Table:
        t = Table(title=f"{args.model} ({path}) training step, b{args.batch}, {args.size} px, {args.threads} "
                        f"thread(s): {prof.step_ms:.1f} ms", title_justify="left")
        for c, j in (("family", "left"), ("ms/step", "right"), ("share", "right")):
            t.add_column(c, justify=j)
        for f in fams:
            t.add_row(f["family"], f"{f['ms_per_step']:.1f}", f"{100 * f['share']:.1f}%")
        return t

    con = _cli.console(stderr=args.format != "table")
    _cli.emit(fams, ("family", "ms_per_step", "share"), args.format, con, table)
    con.print(f"wrote {csv_path} ({len(rows)} operators); load average {load_start} before, {meta['loadavg_end']} "
              f"after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
