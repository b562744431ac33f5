"""``python -m studies.profile``: complexity table of registered models (params, MACs, size, speed).

    python -m studies.profile [--models egeunet unet32 ... | all] [--size 256] [--device cpu]
                              [--threads N] [--no-latency] [--csv PATH]

One row per model (see :func:`engine.profile.profile_model`): parameters, MACs by three counters
(FlopCounterMode/2 = primary; legacy thop = the papers' "GFLOPs" column; fvcore total), weight size
in KiB at fp32/fp16, latency at batch 1 (median and IQR) and throughput at batch 16. The CSV
(default ``results/profile/profile.csv``) is written atomically. Unknown model names exit 2 with
one line listing the valid names; a model that fails to profile is reported and exits 1.
Models come only from the registry (``zoo.registry``; baselines register on import).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from rich.table import Table

from studies._cli import CHECK_FAILED, UnknownModels, console, fail, resolve_models, write_csv_atomic

PROG = "studies.profile"
DEFAULT_CSV = "results/profile/profile.csv"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="registered model names, glob patterns or 'all' (default: egeunet)")
    p.add_argument("--size", type=int, nargs="+", default=[256], metavar="S",
                   help="input side (or H W) for every counter and timing (default 256)")
    p.add_argument("--device", default="cpu", help="device for latency/throughput (counting is on CPU)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's default)")
    p.add_argument("--no-latency", action="store_true", help="skip latency and throughput")
    p.add_argument("--batch-latency", type=int, default=1, help="batch for latency (default 1)")
    p.add_argument("--batch-throughput", type=int, default=16, help="batch for throughput, 0 = skip (default 16)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up iterations (default 10)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds timed per measurement (default 1)")
    p.add_argument("--csv", default=DEFAULT_CSV, help=f"output CSV (default {DEFAULT_CSV})")
    return p


def _int(v: Any) -> str:
    return "—" if v is None else f"{int(v):,}"


def _m(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:,.3f}"


def _f(v: Any, fmt: str = ",.1f") -> str:
    return "—" if v is None else format(v, fmt)


def render(rows: Sequence[dict[str, Any]]) -> Table:
    first = rows[0] if rows else {}
    table = Table(title=f"Model complexity at {first.get('input', '?')} (MACs counted at batch 1)")
    for col, just in (("model", "left"), ("params", "right"), ("MMACs\nFlopCounter/2", "right"),
                      ("MMACs\nthop (legacy)", "right"), ("M fvcore", "right"), ("KiB\nfp32", "right"),
                      ("KiB\nfp16", "right"), ("latency ms\nmedian (IQR)", "right"), ("img/s", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        if r.get("error"):
            table.add_row(f"[red]{r['model']}[/red]", f"[red]error: {r['error']}[/red]", *[""] * 7)
            continue
        lat = "—" if r.get("latency_ms_median") is None else \
            f"{r['latency_ms_median']:.1f} ({r['latency_ms_iqr']:.1f}) b{r['latency_batch']}"
        thr = "—" if r.get("throughput_img_s") is None else f"{r['throughput_img_s']:.1f} b{r['throughput_batch']}"
        table.add_row(r["model"], _int(r["params"]), _m(r["macs"]), _m(r["thop_macs"]), _m(r["fvcore_flops"]),
                      _f(r["size_fp32_kib"]), _f(r["size_fp16_kib"]), lat, thr)
    return table


def notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Counter names/versions and the measurement setup, printed under the table."""
    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return []
    r = ok[0]
    return [
        f"MACs: {r['macs_counter']} ({r['macs_counter_version']}) | legacy thop {r['thop_version']} "
        f"(= the papers' 'GFLOPs'; equals FlopCounter/2 for EGE-UNet, over-counts transposed convs) | "
        f"fvcore {r['fvcore_version']} (also counts norms and up-sampling)",
        "KiB = parameter bytes / 1,024 (fp32: 4 B, fp16: 2 B per parameter)",
        f"timing: device {r['device']} ({r['device_name']}), {r['threads']} threads, torch {r['torch_version']}, "
        f"{r['timer'] or 'not measured'}" + (f", {r['warmup']} warm-up iterations" if r['timer'] else ""),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.size) not in (1, 2):
        fail(PROG, "--size takes one side or H W")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    try:
        names = resolve_models(args.models)
    except UnknownModels as exc:
        fail(PROG, str(exc))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(PROG, f"--device {args.device}: CUDA is not available on this machine")

    from engine.profile import PROFILE_KEYS, profile_model

    out = console()
    err = console(stderr=True)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in names:
        err.print(f"[dim]profiling {name} ...[/dim]")
        try:
            row = profile_model(name, size=size, device=args.device, threads=args.threads,
                                latency=not args.no_latency, batch_latency=args.batch_latency,
                                batch_throughput=args.batch_throughput, warmup=args.warmup,
                                min_run_time=args.min_run_time)
            row["error"] = ""
            if row["counter_errors"]:
                err.print(f"[yellow]{name}: counter errors: {row['counter_errors']}[/yellow]")
        except Exception as exc:  # report the model, keep profiling the others
            msg = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            row = {"model": name, "error": msg}
            failed.append(name)
        rows.append(row)
    out.print(render(rows))
    for line in notes(rows):
        out.print(f"[dim]{line}[/dim]", highlight=False)
    path = write_csv_atomic(rows, args.csv, columns=(*PROFILE_KEYS, "error"))
    out.print(f"wrote {path}")
    if failed:
        fail(PROG, f"could not profile {', '.join(failed)} (see the table)", CHECK_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
