"""``python -m studies.fastcheck``: does EGE-UNet train the same through the fast path as through the plain model?

Trains EGE-UNet from the same seeds twice -- once through the plain model (``fast=False``), once
through :func:`egeunet.fast.make_fast` (``fast=True``) -- on real data, and compares the validation
DSC epoch by epoch. The two paths differ only by float32 round-off, which training amplifies; the
question is whether the difference stays inside the seed-to-seed noise. So every seed runs both
ways, and the report puts the same-seed path difference next to the difference between seeds of
the plain path.

The runs are ordinary engine run records (``<results>/plain/runs/<hash>`` and
``<results>/fast/runs/<hash>``; the fast path is not part of a run's hash, hence two folders), so a
finished check is reused, not repeated. Defaults are sized for a 2-core CPU (minutes, not hours):
128 x 128 inputs, 10 epochs with the official cosine compressed to them, the first 600 training
images, the full validation and test splits.

Usage::

    python -m studies.fastcheck [--dataset isic2018] [--seeds 0,1] [--size 128] [--epochs 10]
                                [--train-images 600] [--results results/fastcheck]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from studies import _cli
from studies._cli import console, fail, write_csv_atomic

PROG = "python -m studies.fastcheck"
PATHS = ("plain", "fast")
COLUMNS = ("seed", "path", "epoch", "train_loss", "val_loss", "val_pooled_dsc", "val_per_image_dsc_mean",
           "seconds", "config_hash", "fast_path")


EPILOG = f"""\
examples:
  python -m studies.fastcheck                         # ISIC 2018, seeds 0,1
  python -m studies.fastcheck --dataset synthetic --size 32 --epochs 2 \\
      --results /tmp/fastcheck

{_cli.EXIT_LINE}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _cli.parser(PROG, __doc__.split("\n\n")[1], epilog=EPILOG)
    p.add_argument("--dataset", default="isic2018", help="dataset to train on (default: isic2018)")
    p.add_argument("--data-root", default=None, help="data folder (default: $EGEUNET_DATA or ../shared/data)")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds; each runs both paths (default: 0,1)")
    p.add_argument("--size", type=int, default=128, help="input size (default: 128)")
    p.add_argument("--epochs", type=int, default=10, help="epochs, also the cosine T_max (default: 10)")
    p.add_argument("--train-images", type=int, default=600,
                   help="first N training images per epoch; 0 = all (default: 600)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--results", type=Path, default=Path("results/fastcheck"),
                   help="where the run records and fastcheck.csv go (default: results/fastcheck)")
    _cli.add_format(p, "the per-epoch rows (fastcheck.csv's columns)")
    return p.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(PROG, f"--seeds must be a comma list of integers, got {text!r}")
    if len(seeds) < 2:
        fail(PROG, "--seeds needs at least two seeds (the seed-to-seed noise is the yardstick)")
    return seeds


def _config(args: argparse.Namespace, seed: int) -> Any:
    from engine.train import RunConfig

    recipe: dict[str, Any] = {"size": args.size, "epochs": args.epochs, "t_max": args.epochs}
    if args.train_images:
        recipe["max_train_images"] = args.train_images
    return RunConfig(model="egeunet", dataset=args.dataset, protocol="clean", budget="cpu", seed=seed, recipe=recipe)


def _val_dsc(rows: list[dict[str, Any]]) -> dict[tuple[int, str, int], float]:
    """(seed, path, epoch) -> validation pooled DSC."""
    return {(r["seed"], r["path"], r["epoch"]): r["val_pooled_dsc"] for r in rows}


def summarise(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, float]:
    """Largest per-epoch |val DSC| differences: same seed across paths, and across seeds per path."""
    dsc = _val_dsc(rows)
    epochs = sorted({r["epoch"] for r in rows})
    same = [abs(dsc[(s, "fast", e)] - dsc[(s, "plain", e)]) for s in seeds for e in epochs]
    across = [abs(dsc[(a, p, e)] - dsc[(b, p, e)])
              for p in PATHS for i, a in enumerate(seeds) for b in seeds[i + 1:] for e in epochs]
    last = epochs[-1]
    return {
        "max_same_seed_diff": max(same), "mean_same_seed_diff": sum(same) / len(same),
        "max_seed_to_seed_diff": max(across), "mean_seed_to_seed_diff": sum(across) / len(across),
        "final_same_seed_diff": max(abs(dsc[(s, "fast", last)] - dsc[(s, "plain", last)]) for s in seeds),
        "final_seed_to_seed_diff": max(abs(dsc[(a, p, last)] - dsc[(b, p, last)])
                                       for p in PATHS for i, a in enumerate(seeds) for b in seeds[i + 1:]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = _seeds(args.seeds)
    if args.size < 32 or args.epochs < 1 or args.train_images < 0 or args.threads < 1:
        fail(PROG, "--size must be >= 32, --epochs and --threads >= 1, --train-images >= 0")
    try:
        _cli.check_output_dir(args.results, "--results")
    except _cli.CLIError as e:
        fail(PROG, str(e))
    from engine.data import dataset_available
    from engine.record import load_record
    from engine.train import run_training

    con = console(stderr=args.format != "table")  # json|csv: stdout carries only the rows
    root = args.data_root
    if not dataset_available(args.dataset, root):
        fail(PROG, f"dataset {args.dataset!r} not found (looked under --data-root / $EGEUNET_DATA / ../shared/data); "
                   f"use --dataset synthetic for a pipeline check", code=2)
    rows: list[dict[str, Any]] = []
    finals: list[dict[str, Any]] = []
    for seed in seeds:
        cfg = _config(args, seed)
        for path in PATHS:
            t0 = time.time()
            con.print(f"seed {seed} {path}: {cfg.config_hash()} ...")
            try:
                res = run_training(cfg, args.results / path, data_root=root, threads=args.threads,
                                   fast=(path == "fast"), progress=sys.stdout.isatty(), profile=False)
            except KeyboardInterrupt:
                con.print("[yellow]interrupted: finished runs are kept; run the same command to continue[/]")
                return 130
            if res.status != "done":
                fail(PROG, f"seed {seed} {path} failed: {res.reason}", code=1)
            rec = load_record(res.record_dir)
            for h in rec.history:
                rows.append({"seed": seed, "path": path, "epoch": int(h["epoch"]), "train_loss": h["train_loss"],
                             "val_loss": h["val_loss"], "val_pooled_dsc": h["val_pooled_dsc"],
                             "val_per_image_dsc_mean": h["val_per_image_dsc_mean"], "seconds": h["seconds"],
                             "config_hash": res.config_hash, "fast_path": rec.env.get("fast_path")})
            finals.append({"seed": seed, "path": path, "test_pooled_dsc": rec.metrics["test"]["pooled_dsc"],
                           "best_epoch": rec.metrics["best_epoch"],
                           "train_s": sum(h["seconds"] for h in rec.history),
                           "reused": res.reused, "wall_s": round(time.time() - t0, 1)})
    out = write_csv_atomic(rows, args.results / "fastcheck.csv", COLUMNS)
    _cli.emit(rows, COLUMNS, args.format)
    _print(con, rows, finals, seeds, summarise(rows, seeds), out, per_epoch=args.format == "table")
    return 0


def _print(con: Any, rows: list[dict[str, Any]], finals: list[dict[str, Any]], seeds: list[int],
           summary: dict[str, float], out: Path, per_epoch: bool = True) -> None:
    from rich.table import Table

    t = Table(title="validation pooled DSC per epoch (plain model vs fast path, same seeds)")
    t.add_column("epoch", justify="right")
    for s in seeds:
        for p in PATHS:
            t.add_column(f"s{s} {p}", justify="right")
        t.add_column(f"s{s} |diff|", justify="right")
    dsc = _val_dsc(rows)
    for e in sorted({r["epoch"] for r in rows}):
        cells = [str(e)]
        for s in seeds:
            a, b = dsc[(s, "plain", e)], dsc[(s, "fast", e)]
            cells += [f"{a:.4f}", f"{b:.4f}", f"{abs(a - b):.4f}"]
        t.add_row(*cells)
    if per_epoch:
        con.print(t)
    f = Table(title="selected checkpoint on the test split")
    for c in ("seed", "path", "best epoch", "test pooled DSC", "train s"):
        f.add_column(c, justify="right")
    for r in finals:
        f.add_row(str(r["seed"]), r["path"], str(r["best_epoch"]), f"{r['test_pooled_dsc']:.4f}",
                  f"{r['train_s']:.0f}" + (" (reused)" if r["reused"] else ""))
    con.print(f)
    speed = {p: sum(r["train_s"] for r in finals if r["path"] == p) for p in PATHS}
    if all(v > 0 for v in speed.values()):
        con.print(f"training time plain / fast: {speed['plain'] / speed['fast']:.2f}x (summed over seeds)")
    con.print(f"val DSC |fast - plain| same seed: max {summary['max_same_seed_diff']:.4f}, "
              f"mean {summary['mean_same_seed_diff']:.4f}, final epoch {summary['final_same_seed_diff']:.4f}")
    con.print(f"val DSC |seed a - seed b| same path: max {summary['max_seed_to_seed_diff']:.4f}, "
              f"mean {summary['mean_seed_to_seed_diff']:.4f}, final epoch {summary['final_seed_to_seed_diff']:.4f}")
    within = summary["mean_same_seed_diff"] <= summary["mean_seed_to_seed_diff"] and math.isfinite(
        summary["mean_same_seed_diff"])
    con.print("verdict: the fast path trains " + ("within" if within else "[red]OUTSIDE[/]")
              + " the seed-to-seed noise (mean per-epoch difference)")
    con.print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
