"""Run a study suite: ``python -m studies.run --suite ablation_ghpa``.

Every run of a suite is one content-addressed run record under ``<results>/runs/<config_hash>/``,
shared by all suites: finished runs are never repeated, a killed suite continues where it stopped
when the same command is started again, and several runners on one results folder train each run
exactly once. At the end the suite's table ``<results>/<suite>/results.csv`` (and ``.parquet``) is
rebuilt from the run records: one row per run.

Exit status: 0 all runs done, 1 some run failed (after all others finished), 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from studies import store
from studies.suites import (
    BUDGETS,
    DATASETS,
    DEFAULT_SUITE,
    PROTOCOLS,
    SUITES,
    RunSpec,
    SuiteError,
    check_models_registered,
    expand,
    get_suite,
)

EPILOG = """\
examples:
  python -m studies.run                                  # the smoke suite on synthetic data (seconds)
  python -m studies.run --list                           # suites, their variants and run counts
  python -m studies.run --suite ablation_ghpa --dry-run  # what would run, what is already done
  python -m studies.run --suite ablation_ghpa --budget smoke
  python -m studies.run --suite compare --budget cpu --seeds 3 --workers 2
  python -m studies.run --suite ablation_gab --seed-list 0,3,7 --results /data/results

Results: <results>/runs/<config_hash>/ (one record per run, shared by all suites) and
<results>/<suite>/results.csv|.parquet (one row per run, rebuilt from the records).
Data: --data-root, else $EGEUNET_DATA, else ../shared/data beside the checkout. When a suite's
default dataset is missing the suite runs on SYNTHETIC data instead, and says so.
exit status: 0 all runs done; 1 a run failed (the others still ran); 2 bad name, argument or data.
"""


PROG = "python -m studies.run"


class UsageError(Exception):
    """Bad command line: one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run an EGE-UNet study suite (variants x datasets x seeds); finished runs are skipped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", default=DEFAULT_SUITE, metavar="NAME",
                   help=f"suite to run: {', '.join(SUITES)} (default: {DEFAULT_SUITE})")
    p.add_argument("--list", action="store_true", help="list the suites with their variants and run counts, then exit")
    p.add_argument("--dry-run", action="store_true", help="show the runs and which are already done; train nothing")
    p.add_argument("--budget", metavar="B", help=f"training budget: {', '.join(BUDGETS)} (default: the suite's)")
    p.add_argument("--dataset", action="append", metavar="D",
                   help=f"dataset(s), repeatable or comma-separated: {', '.join(DATASETS)} (default: the suite's)")
    p.add_argument("--protocol", default="clean", metavar="P",
                   help="clean (train/val/test, selection on val) or paper (official code path) (default: clean)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the suite's; 1 at smoke)")
    seeds.add_argument("--seed-list", metavar="S,S,...", help="explicit seeds, e.g. 0,3,7")
    p.add_argument("--variants", metavar="M,M,...", help="run only these variants of the suite (model names)")
    p.add_argument("--restart", action="store_true",
                   help="start the selected unfinished runs over, discarding their partial state (needed when "
                        "a run cannot resume here: other device, precision, numerics version or a bad checkpoint)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the runs that failed in an earlier invocation (default: report them as failed)")
    p.add_argument("--data-root", metavar="PATH", help="data folder (default: $EGEUNET_DATA or ../shared/data)")
    p.add_argument("--strict-data", action="store_true",
                   help="fail (exit 2) instead of falling back to synthetic data when a dataset is missing")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel worker processes; torch threads are split among them (default: 1)")
    p.add_argument("--threads", type=int, metavar="T",
                   help="total torch threads, split among the workers (default: all usable cores; "
                        "1 per worker at the smoke budget, where 64-px models gain nothing from threads)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                   help="measure each model's CPU latency (batch 1, 256x256, --threads or 1 thread, once per "
                        "model and results folder) for the latency_ms column (default: on, off at the smoke budget)")
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--executor", default="local", metavar="E", help="where runs execute: local, ray (default: local)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="train and evaluate through the fast path (engine.fast: same numbers to float32 round-off, "
                        "faster on the CPU, measured in docs/performance.md; not part of the run's "
                        "hash) (default: on for EGE-UNet models on the CPU, off elsewhere)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cpu, cuda, cuda:1 (default: cpu)")
    ray = p.add_argument_group("ray executor (--executor ray; needs pip install -e \".[ray]\"; see docs/ray.md)")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="a running Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: $RAY_ADDRESS, "
                          "else a local cluster with --threads CPUs, default all cores, for this invocation)")
    ray.add_argument("--ray-cpus-per-run", type=float, default=1.0, metavar="C",
                     help="CPUs Ray reserves per run, fractions allowed; also the run's torch threads, rounded "
                          "up (default: 1)")
    ray.add_argument("--ray-gpus-per-run", default="auto", metavar="G|RULE",
                     help="GPUs per run with --device cuda: a number (0.25 packs 4 runs per GPU) or a rule on "
                          "the model's parameter count, e.g. 1M:0.25,5M:0.5,*:1 (auto = that rule)")
    ray.add_argument("--ray-max-retries", type=int, default=3, metavar="N",
                     help="times Ray reruns a run whose worker or node died; it resumes from its checkpoint "
                          "(default: 3)")
    ray.add_argument("--ray-shared-dir", metavar="DIR",
                     help="folder at the same path on every node (NFS, Lustre) where workers keep their "
                          "checkpoints, so a retry on another node resumes (default: each node's temp dir)")
    ray.add_argument("--ray-ship-code", action=argparse.BooleanOptionalAction, default=None,
                     help="send this checkout's packages to the cluster's workers (default: on with an "
                          "address, off for a local cluster)")
    return p


# ------------------------------------------------------------------------------------------ helpers


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def _check_choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def _seed_list(args: argparse.Namespace) -> list[int] | None:
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
        return list(range(args.seeds))
    if args.seed_list:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seed-list takes integers separated by commas, got {args.seed_list!r}") from None
        if not seeds or any(s < 0 for s in seeds):
            raise UsageError(f"--seed-list takes non-negative integers, got {args.seed_list!r}")
        return list(dict.fromkeys(seeds))
    return None


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:0") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available here; use --device cpu")


def _resolve_datasets(args: argparse.Namespace, suite_datasets: Sequence[str]
                      ) -> tuple[list[str], str | None, list[str]]:
    """The datasets to run, the data root, and notes on datasets replaced by synthetic data."""
    explicit = [d.lower() for d in _split(args.dataset) or []] or None
    for d in explicit or []:
        _check_choice("dataset", d, DATASETS)
    from engine.data import data_root, dataset_available

    if args.data_root and not Path(args.data_root).expanduser().is_dir():
        raise UsageError(f"--data-root {args.data_root!r} is not a folder")
    root = data_root(args.data_root)
    wanted = explicit or list(suite_datasets)
    out: list[str] = []
    notes: list[str] = []
    for d in wanted:
        if dataset_available(d, args.data_root):
            out.append(d)
        elif explicit or args.strict_data:
            where = root or "the data folder ($EGEUNET_DATA unset, no ../shared/data)"
            raise UsageError(f"dataset {d!r} not found under {where}; pass --data-root PATH or set EGEUNET_DATA")
        else:
            notes.append(f"{d} not found under {root or 'any data folder ($EGEUNET_DATA unset)'}")
            if "synthetic" not in out:
                out.append("synthetic")
    return list(dict.fromkeys(out)), args.data_root, notes


def _synthetic_banner(console: Console, notes: list[str]) -> None:
    lines = ["[bold]These runs use the SYNTHETIC dataset[/bold] (generated blobs, not skin lesions):",
             "their numbers say nothing about EGE-UNet on ISIC and must not be reported."]
    if notes:
        lines.append("Missing real data: " + "; ".join(notes) + ".")
        lines.append("Set EGEUNET_DATA or pass --data-root PATH (or --strict-data to fail instead).")
    console.print(Panel("\n".join(lines), title="SYNTHETIC DATA", style="bold yellow", border_style="red"))


def _label(spec: RunSpec) -> str:
    return f"{spec.variant} {spec.dataset} s{spec.seed}"


# ------------------------------------------------------------------------------------------ commands


def cmd_list(console: Console) -> int:
    t = Table(title="suites (runs at the default budget; seeds: default, 1 at smoke)")
    for col in ("suite", "variants", "datasets", "seeds", "budget", "runs", "description"):
        t.add_column(col, overflow="fold")
    for s in SUITES.values():
        variants = ", ".join(s.label(m) if s.label(m) == m else f"{m} ({s.label(m)})" for m in s.variants)
        for b, extra in s.extra_at_budget.items():
            variants += f"; +{', '.join(extra)} at {b}"
        n = len(expand(s))
        runs = str(n)
        if s.extra_at_budget:
            runs += "".join(f" ({len(expand(s, budget=b))} at {b})" for b in s.extra_at_budget)
        t.add_row(s.name, variants, ", ".join(s.datasets), str(s.seeds), s.budget, runs, s.description)
    console.print(t)
    return 0


def _dry_run(console: Console, suite_name: str, specs: list[RunSpec], hashes: list[str], results: str,
             retry_failed: bool) -> int:
    t = Table(title=f"{suite_name}: {len(specs)} runs under {results}/runs")
    for col in ("variant", "model", "dataset", "protocol", "budget", "seed", "config_hash", "state"):
        t.add_column(col)
    states = Counter()
    style = {"done": "green", "failed": "red", "running": "cyan", "partial": "yellow", "todo": ""}
    for spec, h in zip(specs, hashes):
        st = store.run_state(results, h)
        states[st] += 1
        t.add_row(spec.variant, spec.model, spec.dataset, spec.protocol, spec.budget, str(spec.seed), h,
                  f"[{style[st]}]{st}[/]" if style[st] else st)
    console.print(t)
    todo = states["todo"] + states["partial"] + (states["failed"] if retry_failed else 0)
    console.print(
        f"dry run: {states['done']} done (would be skipped), {todo} would run "
        f"({states['partial']} resumed), {states['failed']} failed before "
        f"({'retried' if retry_failed else 'reported, not retried without --retry-failed'}), "
        f"{states['running']} running in another runner"
    )
    return 0


def _summary(console: Console, outcomes: list[Any], specs_by_hash: dict[str, RunSpec]) -> Counter:
    counts = Counter(o.status for o in outcomes)
    t = Table(title="summary")
    for col in ("variant", "dataset", "seed", "status", "wall", "reason"):
        t.add_column(col, overflow="fold")
    style = {"done": "green", "skipped": "dim", "failed": "bold red"}
    for o in outcomes:
        sp = specs_by_hash[o.config_hash]
        reason = o.reason or ""
        t.add_row(sp.variant, sp.dataset, str(sp.seed), f"[{style.get(o.status, '')}]{o.status}[/]",
                  f"{o.wall_s:.1f}s" if o.status != "skipped" else "", reason if o.status != "done" else "")
    console.print(t)
    console.print(
        f"[green]{counts['done']} done[/], {counts['skipped']} skipped (already done), "
        + (f"[bold red]{counts['failed']} failed[/]" if counts["failed"] else "0 failed")
    )
    return counts


# ------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    from studies._cli import console as make_console

    args = build_parser().parse_args(argv)
    console = make_console()
    try:
        if args.list:
            return cmd_list(console)
        return _run(args, console)
    except (UsageError, SuiteError) as e:
        return _error(e)
    except Exception as e:
        from engine.data import DataError
        from studies.executors import ExecutorError

        if isinstance(e, (DataError, ExecutorError)):  # e.g. a Ray cluster that cannot be reached
            return _error(e)
        raise


def _error(e: BaseException) -> int:
    msg = " ".join(str(e).split())
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
    return 2


def _run(args: argparse.Namespace, console: Console) -> int:
    from studies.executors import ExecutorError, RunTask, get_executor

    session_start = time.time()
    suite = get_suite(args.suite)
    budget = args.budget or suite.budget
    _check_choice("budget", budget, BUDGETS)
    _check_choice("protocol", args.protocol, PROTOCOLS)
    from studies.executors import EXECUTORS

    _check_choice("executor", args.executor, list(EXECUTORS))
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    seeds = _seed_list(args)
    variants = _split([args.variants] if args.variants else None)
    if variants:
        check_models_registered(variants)
    datasets, root, notes = _resolve_datasets(args, suite.datasets)
    specs = expand(suite, budget=budget, datasets=datasets, seeds=seeds, protocol=args.protocol,
                   variants=variants)
    check_models_registered(dict.fromkeys(s.model for s in specs))
    if not args.dry_run and args.executor != "ray":  # a Ray driver need not have the workers' GPUs
        _check_device(args.device)

    fingerprints: dict[tuple[str, str], str] = {}
    configs = [store.make_config(s, root, fingerprints) for s in specs]
    hashes = [store.config_hash(c) for c in configs]
    specs_by_hash = dict(zip(hashes, specs))
    synthetic = any(s.dataset == "synthetic" for s in specs)
    if synthetic:
        _synthetic_banner(console, notes)

    results = args.results
    if args.dry_run:
        return _dry_run(console, suite.name, specs, hashes, results, args.retry_failed)

    if not args.restart:
        _refuse_conflicts(configs, results, args)
    threads = args.threads or (args.workers if budget == "smoke" else None)
    try:
        if args.executor == "ray":
            executor = get_executor("ray", workers=args.workers, threads=args.threads, address=args.ray_address,
                                    cpus_per_run=args.ray_cpus_per_run, gpus_per_run=args.ray_gpus_per_run,
                                    max_retries=args.ray_max_retries, shared_dir=args.ray_shared_dir,
                                    ship_code=args.ray_ship_code)
        else:
            executor = get_executor(args.executor, workers=args.workers, threads=threads)
    except (ExecutorError, ValueError) as e:
        raise UsageError(str(e)) from None

    Path(results).mkdir(parents=True, exist_ok=True)
    store.add_to_manifest(results, suite.name, [
        store.ManifestEntry(h, s.model, s.dataset, s.protocol, s.budget, s.seed) for s, h in zip(specs, hashes)
    ])
    tasks = [
        RunTask(config=c, config_hash=h, results_dir=str(results), label=_label(s), data_root=root,
                device=args.device, session_start=session_start, retry_failed=args.retry_failed, fast=args.fast,
                restart=args.restart)
        for s, c, h in zip(specs, configs, hashes)
    ]
    already = sum(store.is_done(store.run_dir(results, h)) for h in hashes)
    console.print(
        f"suite [bold]{suite.name}[/]: {len(tasks)} runs ({already} already done), budget {budget}, "
        f"protocol {args.protocol}, datasets {', '.join(datasets)}, executor {args.executor} "
        f"x{args.workers}, results in {results}/"
    )

    last_write = [time.monotonic()]

    def refresh_table(force: bool = False) -> None:
        if force or time.monotonic() - last_write[0] > 15:
            store.write_table(results, suite)
            last_write[0] = time.monotonic()

    outcomes: list[Any] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"{suite.name}", total=len(tasks), current="")

        def on_start(task: Any) -> None:
            progress.update(bar, current=task.label)

        def on_progress(task: Any, *a: Any, **k: Any) -> None:
            progress.update(bar, current=f"{task.label} {_progress_text(*a, **k)}")

        def on_done(out: Any) -> None:
            outcomes.append(out)
            progress.advance(bar)
            mark = {"done": "[green]done[/]", "skipped": "[dim]skipped[/]", "failed": "[red]FAILED[/]"}
            extra = f" ({out.reason})" if out.status == "failed" and out.reason else ""
            progress.console.print(f"  {mark.get(out.status, out.status)} {out.label} "
                                   f"[dim]{out.config_hash}[/] {out.wall_s:.1f}s{extra}", soft_wrap=True)
            if out.status != "skipped":
                refresh_table()

        try:
            executor.run(tasks, on_start=on_start, on_done=on_done, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            store.write_table(results, suite)
            console.print("[bold red]interrupted[/]: finished runs are kept; run the same command to continue")
            return 130

    if args.latency if args.latency is not None else budget != "smoke":
        try:
            _measure_latencies(console, results, outcomes, specs_by_hash, args.threads or 1)
        except KeyboardInterrupt:
            console.print("[yellow]latency measurement interrupted[/]")
    df, path = store.write_table(results, suite)
    counts = _summary(console, outcomes, specs_by_hash)
    console.print(f"table: {path} ({len(df)} rows) and {path.with_suffix('.parquet')}")
    if synthetic:
        console.print("[bold yellow on red] NOTE: SYNTHETIC DATA in this suite's runs: not skin-lesion results [/]")
    return 1 if counts["failed"] else 0


def _refuse_conflicts(configs: list[Any], results: str, args: argparse.Namespace) -> None:
    """Exit 2 before anything runs when an unfinished run cannot resume on this device / precision / numerics."""
    from engine.train import resume_conflict

    for cfg in configs:
        problem = resume_conflict(cfg, results, device=args.device, fast=args.fast)
        if problem:
            raise UsageError(problem)


def _measure_latencies(console: Console, results: str, outcomes: list[Any], specs_by_hash: dict[str, RunSpec],
                       threads: int) -> None:
    """CPU latency of every model with a finished run, measured once per results folder (cached)."""
    import math

    models = [m for m in dict.fromkeys(specs_by_hash[o.config_hash].model for o in outcomes
                                       if o.status in ("done", "skipped"))
              if math.isnan(store.read_latency_ms(results, m))]
    if not models:
        return
    console.print(f"latency: measuring {len(models)} model(s) at batch 1, {store.LATENCY_SIZE}x{store.LATENCY_SIZE}, "
                  f"{threads} thread(s) on cpu (cached under {results}/profiles/)")
    for m in models:
        try:
            ms = store.measure_latency(results, m, threads=threads)
        except Exception as e:  # noqa: BLE001 - a latency is never worth failing the suite
            console.print(f"  [yellow]latency of {m} not measured[/]: {type(e).__name__}: {e}", soft_wrap=True)
            continue
        if ms is not None:
            console.print(f"  {m}: {ms:.1f} ms")


def _progress_text(*a: Any, **k: Any) -> str:
    """A short text for the engine's progress callback, whatever it passes (epoch counters, dicts)."""
    info: dict[str, Any] = {}
    for x in a:
        if isinstance(x, dict):
            info.update(x)
    info.update(k)
    if "epoch" in info:
        tot = info.get("epochs") or info.get("total")
        s = f"epoch {info['epoch']}" + (f"/{tot}" if tot else "")
        for key in ("loss", "train_loss", "val_loss"):
            if isinstance(info.get(key), (int, float)):
                s += f" {key} {info[key]:.3f}"
        return s
    return " ".join(str(x) for x in a if not isinstance(x, dict))[:60]


if __name__ == "__main__":
    sys.exit(main())
