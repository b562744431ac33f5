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

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from studies import _cli
from studies._cli import CHECK_FAILED, UnknownModels, console, fail, resolve_models, write_csv_atomic

PROG = "python -m studies.profile"
DEFAULT_CSV = "results/profile/profile.csv"  # git-ignored: a local measurement, not a committed result
EPILOG = f"""\
examples:
  python -m studies.profile                        # EGE-UNet at 256 x 256
  python -m studies.profile --models all --no-latency
  python -m studies.profile --models 'egeunet*' --format csv > sizes.csv

The CSV (--csv, default {DEFAULT_CSV}, git-ignored) holds
every column.
{_cli.EXIT_LINE}
"""


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, __doc__.split("\n\n")[0].replace("``python -m studies.profile``: ", ""), epilog=EPILOG)
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
    _cli.add_format(p)
    return p


def _int(v: Any) -> str:
    return "—" if v is None else f"{int(v):,}"


def _m(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:,.3f}"


def _f(v: Any, fmt: str = ",.1f") -> str:
    return "—" if v is None else format(v, fmt)


def render(rows: Sequence[dict[str, Any]]) -> Group:
    """The complexity table (and the speed table when latency was measured), laid out for 80 columns."""
    first = rows[0] if rows else {}
    table = Table(title=f"Model complexity at {first.get('input', '?')} (MACs counted at batch 1)",
                  box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("model", overflow="fold")
    for col in ("params", "MMACs\nFlopCtr/2", "MMACs\nthop", "M\nfvcore", "KiB\nfp32"):
        table.add_column(col, justify="right", no_wrap=True)
    speed = Table(title="Speed", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    speed.add_column("model", overflow="fold")
    for col in ("latency ms\nmedian", "IQR", "batch", "img/s", "batch "):
        speed.add_column(col, justify="right", no_wrap=True)
    timed = False
    for r in rows:
        if r.get("error"):
            table.add_row(f"[red]{r['model']}[/red]", "[red]error[/red]", "", "", "", "")
            continue
        table.add_row(r["model"], _int(r["params"]), _m(r["macs"]), _m(r["thop_macs"]), _m(r["fvcore_flops"]),
                      _f(r["size_fp32_kib"]))
        if r.get("latency_ms_median") is not None or r.get("throughput_img_s") is not None:
            timed = True
            lat = r.get("latency_ms_median")
            thr = r.get("throughput_img_s")
            speed.add_row(r["model"], _f(lat), _f(r.get("latency_ms_iqr")) if lat is not None else "—",
                          str(r.get("latency_batch") or "—"), _f(thr), str(r.get("throughput_batch") or "—"))
    errors = [Text(f"{r['model']}: {r['error']}", style="red") for r in rows if r.get("error")]
    return Group(table, *([speed] if timed else []), *errors)


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
        "KiB = parameter bytes / 1,024 (fp32: 4 B per parameter; fp16 is half, in the CSV)",
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

    try:
        csv_path = _cli.check_output_file(args.csv, "--csv")
    except _cli.CLIError as exc:
        fail(PROG, str(exc))

    from engine.profile import PROFILE_KEYS, profile_model

    out = console(stderr=args.format != "table")
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
    _cli.emit(rows, (*PROFILE_KEYS, "error"), args.format, out, lambda: render(rows))
    for line in notes(rows):
        out.print(f"[dim]{line}[/dim]", highlight=False)
    path = write_csv_atomic(rows, csv_path, columns=(*PROFILE_KEYS, "error"))
    out.print(f"wrote {path}")
    if failed:
        fail(PROG, f"could not profile {', '.join(failed)} (see the table)", CHECK_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
