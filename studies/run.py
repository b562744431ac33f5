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
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from studies import _cli, store
from studies.reporting.names import display_name
from studies.suites import (
    BUDGETS,
    DATASETS,
    DEFAULT_SUITE,
    PROTOCOLS,
    SUITES,
    RunSpec,
    Suite,
    SuiteError,
    check_models_registered,
    expand,
    get_suite,
    split_variants,
)

EPILOG = """\
examples:
  python -m studies.run                       # smoke suite, synthetic data
  python -m studies.run --list                # one line per suite
  python -m studies.run --list ablation_ghpa  # that suite's variants
  python -m studies.run --suite ablation_ghpa --dry-run
  python -m studies.run --suite ablation_ghpa --budget smoke
  python -m studies.run --suite compare --budget cpu --seeds 3 --workers 2
  python -m studies.run --suite ablation_gab --seed-list 0,3,7 \\
      --results /data/results

Results: <results>/runs/<config_hash>/ (one record per run, shared by all
suites) and <results>/<suite>/results.csv|.parquet (one row per run, rebuilt
from the records). --results defaults to results/, except at the smoke budget:
smoke runs go to a scratch folder ($EGEUNET_SCRATCH, else <tmp>/egeunet-smoke),
so trying the suite never changes the committed results.
Data: --data-root, else $EGEUNET_DATA, else ../shared/data beside the
checkout. When a suite's default dataset is missing the suite runs on
SYNTHETIC data instead, and says so (--strict-data: exit 2 instead).
exit status: 0 all runs done; 1 a run failed (the others still ran);
2 bad name, argument, results folder or data (one line on stderr).
"""


PROG = "python -m studies.run"
SMOKE_SCRATCH = "egeunet-smoke"


class UsageError(_cli.CLIError):
    """Bad command line: one line, exit 2."""


def default_results(budget: str) -> str:
    """The results folder when --results is not given: results/, or a scratch folder at the smoke budget."""
    if budget != "smoke":
        return "results"
    scratch = os.environ.get("EGEUNET_SCRATCH")
    return scratch or str(Path(tempfile.gettempdir()) / SMOKE_SCRATCH)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser(
        PROG,
        "Run an EGE-UNet study suite (variants x datasets x seeds); finished runs are skipped.",
        epilog=EPILOG,
    )
    p.add_argument("--suite", default=DEFAULT_SUITE, metavar="NAME",
                   help=f"suite to run: {', '.join(SUITES)}, or a suite file PATH.toml (see README, "
                        f"'Benchmark your own model') (default: {DEFAULT_SUITE})")
    p.add_argument("--list", nargs="?", const="", default=None, metavar="SUITE",
                   help="list the suites, one line each (or SUITE's variants), then exit")
    p.add_argument("--dry-run", action="store_true", help="show the runs and which are already done; train nothing")
    p.add_argument("--budget", metavar="B", help=f"training budget: {', '.join(BUDGETS)} (default: the suite's)")
    p.add_argument("--dataset", action="append", metavar="D",
                   help=f"dataset(s), repeatable or comma-separated: {', '.join(DATASETS)} (default: the suite's)")
    p.add_argument("--protocol", default="clean", metavar="P",
                   help="clean (train/val/test, selection on val) or paper (official code path) (default: clean)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the suite's; 1 at smoke)")
    seeds.add_argument("--seed-list", metavar="S,S,...", help="explicit seeds, e.g. 0,3,7")
    p.add_argument("--variants", metavar="M,M,...",
                   help="run only these variants of the suite (names or labels); a model from outside the "
                        "package joins any suite: package.module:callable, with keyword arguments as "
                        "'package.module:callable(width=8)', or an egeunet.models entry-point name")
    p.add_argument("--restart", action="store_true",
                   help="start the selected unfinished runs over, discarding their partial state (needed when "
                        "a run cannot resume here: other device, precision, numerics version or a bad checkpoint)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the runs that failed in an earlier invocation (default: report them as failed)")
    p.add_argument("--data-root", metavar="PATH", help="data folder (default: $EGEUNET_DATA or ../shared/data)")
    p.add_argument("--strict-data", action="store_true",
                   help="fail (exit 2) instead of falling back to synthetic data when a dataset is missing")
    p.add_argument("--workers", default="auto", metavar="N|auto",
                   help="parallel worker processes; torch threads are split among them (default: auto, the "
                        "layout measured fastest for the suite's models on this many cores, "
                        "results/bench/layout_cpu.csv; 1 where nothing was measured, at the smoke budget, on "
                        "a GPU, with --pack or Ray)")
    p.add_argument("--pack", type=int, default=1, metavar="K",
                   help="train the seeds of each variant K at a time in lockstep, one vmapped step for K runs "
                        "(engine.packed; for GPUs, see docs/gpu.md; models with BatchNorm run alone; local "
                        "executor, one worker; default: 1, no packing)")
    p.add_argument("--threads", type=int, metavar="T",
                   help="total torch threads, split among the workers (default: all usable cores; "
                        "1 per worker at the smoke budget, where 64-px models gain nothing from threads)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                   help="measure each model's CPU latency (batch 1, 256x256, --threads or 1 thread, once per "
                        "model and results folder) for the latency_ms column (default: on, off at the smoke budget)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="results folder (default: results/; at the smoke budget a scratch folder, "
                        "$EGEUNET_SCRATCH or <tmp>/egeunet-smoke)")
    _cli.add_format(p, "the --list, --dry-run or summary table")
    p.add_argument("--executor", default="local", metavar="E", help="where runs execute: local, ray (default: local)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="train and evaluate through the model's registered fast view (EGE-UNet: egeunet.fast; "
                        "the baselines: channels-last, zoo.views), the same numbers to float32 round-off, "
                        "measured in docs/performance.md; not part of the run's hash (default: on on the CPU "
                        "for every model that declares a view, off elsewhere)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each training step's forward, loss and backward from one captured CUDA graph, "
                        "the optimizer (and AMP's scaler) eagerly (engine.graphs; CUDA, plain model; the run's "
                        "path is 'graph' and it resumes only so; see docs/gpu.md)")
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
    explicit = [d if d.startswith("folder:") else d.lower() for d in _split(args.dataset) or []] or None
    for d in explicit or []:
        if not d.startswith("folder:"):
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


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds for people: ``seed 0``, ``seeds 0-4 (5)``, ``seeds 0,3,7 (3)`` - never a bare ``0``."""
    seeds = sorted(dict.fromkeys(int(x) for x in seeds))
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)})"
    return f"seeds {','.join(map(str, seeds))} ({len(seeds)})"


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")


LIST_COLUMNS = ("suite", "n_variants", "datasets", "seeds", "budget", "runs", "description", "variants")
VARIANT_COLUMNS = ("suite", "variant", "label", "display", "budgets")


def list_rows() -> list[dict[str, Any]]:
    """One row per suite (what ``--list`` prints)."""
    rows = []
    for s in SUITES.values():
        runs = str(len(expand(s)))
        if s.extra_at_budget:
            runs += "".join(f" ({len(expand(s, budget=b))} at {b})" for b in s.extra_at_budget)
        rows.append({"suite": s.name, "n_variants": len(s.variants), "datasets": list(s.datasets),
                     "seeds": s.default_seed_count(s.budget), "budget": s.budget, "runs": runs,
                     "description": s.description, "variants": list(s.all_variants())})
    return rows


def variant_rows(name: str) -> list[dict[str, Any]]:
    """One row per variant of suite ``name`` (what ``--list NAME`` prints)."""
    s = get_suite(name)
    def row(m: str, budgets: str) -> dict[str, Any]:
        return {"suite": s.name, "variant": m, "label": s.label(m),
                "display": display_name(s.label(m), s.model_of(m)), "budgets": budgets}

    rows = [row(m, "all") for m in s.variants]
    for m in s.all_variants()[len(s.variants):]:
        rows.append(row(m, ", ".join(b for b, vs in s.extra_at_budget.items() if m in vs)))
    return rows


def cmd_list(console: Console, name: str = "", fmt: str = "table") -> int:
    if name:
        rows = variant_rows(name)
        s = get_suite(name)

        def render() -> Group:
            runs = "; ".join(f"{len(expand(s, budget=b))} runs at {b}" for b in dict.fromkeys((s.budget,
                                                                                              *s.extra_at_budget)))
            ref = f"; reference {s.label(s.reference)}" if s.reference else ""
            head = Text(f"{s.name}: {s.description}\n{s.seeds_text()}, budget {s.budget}, datasets "
                        f"{', '.join(s.datasets)}; {runs}{ref}")
            t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
            t.add_column("variant", overflow="fold")
            t.add_column("shown in tables as", overflow="fold")
            t.add_column("runs at", overflow="fold")
            for r in rows:
                t.add_row(r["variant"], r["display"], r["budgets"] if r["budgets"] == "all" else
                          f"{r['budgets']} only")
            return Group(head, t)

        _cli.emit(rows, VARIANT_COLUMNS, fmt, console, render)
        return 0
    rows = list_rows()

    def render() -> Text:
        head = ("suite", "var", "datasets", "seeds", "budget", "runs", "description")
        cells = [(r["suite"], str(r["n_variants"]), ",".join(r["datasets"]), str(r["seeds"]), r["budget"],
                  r["runs"].split(" ")[0], r["description"]) for r in rows]
        widths = [max(len(head[i]), *(len(c[i]) for c in cells)) for i in range(len(head) - 1)]
        room = max(12, console.width - sum(widths) - 2 * len(widths))

        def line(c: Sequence[str]) -> str:
            left = "  ".join(v.rjust(w) if i in (1, 3, 5) else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths)))
            d = c[-1] if len(c[-1]) <= room else c[-1][:room - 1] + "…"
            return f"{left}  {d}".rstrip()

        return Text("\n".join([line(head), *(line(c) for c in cells)]))

    _cli.emit(rows, LIST_COLUMNS, fmt, console, render)
    if fmt == "table":
        console.print("a suite's variants and full description: python -m studies.run --list SUITE")
    return 0


DRY_COLUMNS = ("suite", "variant", "model", "dataset", "protocol", "budget", "seed", "config_hash", "state")


def _dry_run(console: Console, suite_name: str, specs: list[RunSpec], hashes: list[str], results: str,
             retry_failed: bool, fmt: str = "table") -> int:
    states = Counter()
    rows = []
    for spec, h in zip(specs, hashes):
        st = store.run_state(results, h)
        states[st] += 1
        rows.append({"suite": suite_name, "variant": spec.variant, "model": spec.model, "dataset": spec.dataset,
                     "protocol": spec.protocol, "budget": spec.budget, "seed": spec.seed, "config_hash": h,
                     "state": st})
    style = {"done": "green", "failed": "red", "running": "cyan", "partial": "yellow", "todo": ""}

    def render() -> Table:
        both = {(s.protocol, s.budget) for s in specs}
        where = ", ".join(f"protocol {p}, budget {b}" for p, b in sorted(both))
        t = _table(f"{suite_name}: {len(specs)} runs ({where}) under {results}/runs")
        show_model = any(r["variant"] != r["model"] for r in rows)
        t.add_column("variant", overflow="fold")
        if show_model:
            t.add_column("model", overflow="fold")
        t.add_column("dataset", overflow="fold")
        t.add_column("seed", justify="right")
        t.add_column("run id", no_wrap=True, min_width=12)
        t.add_column("state", no_wrap=True)
        for r in rows:
            st = r["state"]
            cells = [r["variant"], *([r["model"]] if show_model else []), r["dataset"], str(r["seed"]),
                     r["config_hash"], f"[{style[st]}]{st}[/]" if style[st] else st]
            t.add_row(*cells)
        return t

    _cli.emit(rows, DRY_COLUMNS, fmt, console, render)
    todo = states["todo"] + states["partial"] + (states["failed"] if retry_failed else 0)
    (console if fmt == "table" else _cli.console(stderr=True)).print(
        f"dry run: {states['done']} done (would be skipped), {todo} would run "
        f"({states['partial']} resumed), {states['failed']} failed before "
        f"({'retried' if retry_failed else 'reported, not retried without --retry-failed'}), "
        f"{states['running']} running in another runner"
    )
    return 0


SUMMARY_COLUMNS = ("variant", "model", "dataset", "seed", "config_hash", "status", "wall_s", "reason")


def _summary(console: Console, outcomes: list[Any], specs_by_hash: dict[str, RunSpec],
             fmt: str = "table") -> Counter:
    counts = Counter(o.status for o in outcomes)
    rows = []
    for o in outcomes:
        sp = specs_by_hash[o.config_hash]
        rows.append({"variant": sp.variant, "model": sp.model, "dataset": sp.dataset, "seed": sp.seed,
                     "config_hash": o.config_hash, "status": o.status, "wall_s": round(o.wall_s, 1),
                     "reason": (o.reason or "") if o.status != "done" else ""})
    style = {"done": "green", "skipped": "dim", "failed": "bold red"}
    seeds = sorted({r["seed"] for r in rows})

    def render() -> Table:
        t = _table(f"summary ({seeds_text(seeds)})" if seeds else "summary")
        t.add_column("variant", overflow="fold")
        t.add_column("dataset", overflow="fold")
        t.add_column("seed", justify="right")
        t.add_column("run id", no_wrap=True, min_width=12)
        t.add_column("status", no_wrap=True)
        t.add_column("wall", justify="right", no_wrap=True)
        t.add_column("reason", overflow="fold", ratio=1)
        for r in rows:
            st = r["status"]
            t.add_row(r["variant"], r["dataset"], str(r["seed"]), r["config_hash"],
                      f"[{style.get(st, '')}]{st}[/]", f"{r['wall_s']:.1f}s" if st != "skipped" else "",
                      r["reason"])
        return t

    _cli.emit(rows, SUMMARY_COLUMNS, fmt, console, render)
    console.print(
        f"[green]{counts['done']} done[/], {counts['skipped']} skipped (already done), "
        + (f"[bold red]{counts['failed']} failed[/]" if counts["failed"] else "0 failed")
    )
    return counts


# ------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # with --format json|csv stdout carries only the data; everything else goes to stderr
    console = _cli.console(stderr=args.format != "table")

    def body() -> int:
        if args.list is not None:
            return cmd_list(_cli.console() if args.format == "table" else console, args.list, args.format)
        return _run(args, console)

    from studies.executors import ExecutorError

    return _cli.guard(PROG, body, SuiteError, ExecutorError)


def _error(e: BaseException) -> int:
    print(_cli.error_line(PROG, e), file=sys.stderr, flush=True)
    return 2


DATA_ERROR = "DataError: "


def _data_failures(outcomes: list[Any]) -> list[Any]:
    """Failed runs whose reason is bad data (the engine raised ``DataError``): the suite exits 2."""
    return [o for o in outcomes if o.status == "failed" and DATA_ERROR in (o.reason or "")]


@dataclass
class _Plan:
    """What an invocation will run: the suite's run specs at the chosen budget, their configs and hashes."""

    suite: Suite
    budget: str
    results: str
    datasets: list[str]
    data_root: str | None
    missing_data: list[str]  # datasets replaced by synthetic data
    specs: list[RunSpec]
    configs: list[Any]
    hashes: list[str]

    @property
    def specs_by_hash(self) -> dict[str, RunSpec]:
        return dict(zip(self.hashes, self.specs))

    @property
    def synthetic(self) -> bool:
        return any(s.dataset == "synthetic" for s in self.specs)

    @cached_property
    def done_before(self) -> list[bool]:
        """Per run: finished before this invocation trained anything (read once from the store)."""
        return [store.is_done(store.run_dir(self.results, h)) for h in self.hashes]


def _run(args: argparse.Namespace, console: Console) -> int:
    session_start = time.time()
    plan = _plan(args)
    if plan.synthetic:
        _synthetic_banner(console, plan.missing_data)
    if args.dry_run:
        return _dry_run(console if args.format != "table" else _cli.console(), plan.suite.name, plan.specs,
                        plan.hashes, plan.results, args.retry_failed, args.format)
    if args.cuda_graph:
        _refuse_graph(plan.configs, args)
    if not args.restart:
        _refuse_conflicts(plan.configs, plan.results, args)
    layout_note = _resolve_workers(args, plan)
    executor = _make_executor(args, plan.budget)
    _prepare_results(console, plan)
    tasks = _make_tasks(args, plan, session_start)
    _announce(console, args, plan, tasks)
    if layout_note:
        console.print(f"  workers: {layout_note}")
    outcomes = _execute(console, executor, tasks, plan)
    if outcomes is None:
        return 130
    return _summarise(console, args, plan, outcomes)


def _check_args(args: argparse.Namespace, budget: str) -> None:
    """Exit 2 on a budget, protocol, executor, worker or thread count that cannot be."""
    _check_choice("budget", budget, BUDGETS)
    _check_choice("protocol", args.protocol, PROTOCOLS)
    from studies.executors import EXECUTORS

    _check_choice("executor", args.executor, list(EXECUTORS))
    if args.workers != "auto":
        try:
            args.workers = int(args.workers)
        except ValueError:
            raise UsageError(f"--workers must be a number or auto, got {args.workers!r}") from None
        if args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.pack < 1:
        raise UsageError(f"--pack must be >= 1, got {args.pack}")
    if args.pack > 1 and (args.executor != "local" or args.workers not in (1, "auto")):
        raise UsageError("--pack trains its packs in this process: use it with the local executor and one worker")
    if args.cuda_graph and args.pack > 1:
        raise UsageError("--cuda-graph and --pack are two ways to train on a GPU: choose one")


def _plan(args: argparse.Namespace) -> _Plan:
    """Validate the command line and expand the suite into run specs, configs and config hashes (nothing is
    written; bad names, arguments, data or models exit 2 here)."""
    suite = get_suite(args.suite)
    budget = args.budget or suite.budget
    _check_args(args, budget)
    results = str(_cli.check_output_dir(args.results or default_results(budget), "--results"))
    seeds = _seed_list(args)
    variants = split_variants(args.variants) if args.variants else None
    if variants:  # unknown names fail before the data is looked at
        expand(suite, budget=budget, seeds=[0], protocol=args.protocol, variants=variants)
    datasets, root, notes = _resolve_datasets(args, suite.datasets)
    specs = expand(suite, budget=budget, datasets=datasets, seeds=seeds, protocol=args.protocol,
                   variants=variants)
    check_models_registered(specs)  # outside models: imported, built and checked against the contract
    if not args.dry_run and args.executor != "ray":  # a Ray driver need not have the workers' GPUs
        _check_device(args.device)
    fingerprints: dict[tuple[str, str], str] = {}
    configs = [store.make_config(s, root, fingerprints) for s in specs]
    return _Plan(suite=suite, budget=budget, results=results, datasets=datasets, data_root=root,
                 missing_data=notes, specs=specs, configs=configs, hashes=[store.config_hash(c) for c in configs])


def _resolve_workers(args: argparse.Namespace, plan: _Plan) -> str | None:
    """Turn ``--workers auto`` into a number (and the threads per worker) by :func:`studies.placement.choose_layout`
    over the runs still to train; returns the line that says what was chosen and why (None: given by hand)."""
    if args.workers != "auto":
        return None
    args.workers = 1
    if args.executor != "local" or args.device != "cpu" or args.pack > 1 or plan.budget == "smoke":
        return None  # nothing measured applies: one worker, as before the rule
    from studies.executors.local import default_threads
    from studies.placement import choose_layout

    cores = args.threads or default_threads()
    todo = [s.model for s, done in zip(plan.specs, plan.done_before) if not done]
    choice = choose_layout(todo, cores)
    args.workers = choice.layout.workers  # the executor gives each worker cores // workers threads
    return f"auto, {choice.layout.workers} x {choice.layout.threads} thread(s): {choice.reason}"


def _make_executor(args: argparse.Namespace, budget: str) -> Any:
    """The executor named by ``--executor``; its own refusals (e.g. Ray not installed) exit 2."""
    from studies.executors import ExecutorError, get_executor

    threads = args.threads or (args.workers if budget == "smoke" else None)
    try:
        if args.executor == "ray":
            return get_executor("ray", workers=args.workers, threads=args.threads, address=args.ray_address,
                                cpus_per_run=args.ray_cpus_per_run, gpus_per_run=args.ray_gpus_per_run,
                                max_retries=args.ray_max_retries, shared_dir=args.ray_shared_dir,
                                ship_code=args.ray_ship_code)
        return get_executor(args.executor, workers=args.workers, threads=threads, pack=args.pack)
    except (ExecutorError, ValueError) as e:
        raise UsageError(str(e)) from None


def _prepare_results(console: Console, plan: _Plan) -> None:
    """Create the results folder, remove killed writers' temporaries and add the runs to the suite's manifest."""
    try:
        Path(plan.results).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--results {plan.results}: cannot create the folder ({e.strerror or e})") from None
    _clean_stale(console, plan.results)
    store.add_to_manifest(plan.results, plan.suite.name, [
        store.ManifestEntry(h, s.model, s.dataset, s.protocol, s.budget, s.seed, s.overrides)
        for s, h in zip(plan.specs, plan.hashes)
    ])


def _make_tasks(args: argparse.Namespace, plan: _Plan, session_start: float) -> list[Any]:
    from studies.executors import RunTask

    return [
        RunTask(config=c, config_hash=h, results_dir=str(plan.results), label=_label(s), data_root=plan.data_root,
                device=args.device, session_start=session_start, retry_failed=args.retry_failed, fast=args.fast,
                restart=args.restart, cuda_graph=args.cuda_graph)
        for s, c, h in zip(plan.specs, plan.configs, plan.hashes)
    ]


def _announce(console: Console, args: argparse.Namespace, plan: _Plan, tasks: list[Any]) -> None:
    """One line: what runs, how many are done already, and where the results go."""
    suite = plan.suite
    already = sum(plan.done_before)
    console.print(
        f"suite [bold]{suite.name}[/]: {len(tasks)} runs ({already} already done), budget {plan.budget}, "
        f"protocol {args.protocol}, datasets {', '.join(plan.datasets)}, "
        f"{seeds_text([s.seed for s in plan.specs])}, "
        f"executor {args.executor} x{args.workers}, results in {plan.results}/"
        + (f", reference {suite.label(suite.reference)}" if suite.reference else "")
    )


def _execute(console: Console, executor: Any, tasks: list[Any], plan: _Plan) -> list[Any] | None:
    """Run the tasks under a progress bar, one line per finished run, the table rewritten at most every 15 s;
    the outcomes, or None when interrupted (Ctrl-C: the table is written, finished runs are kept)."""
    results, suite = plan.results, plan.suite
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
                                   f"[dim]{out.config_hash}[/] {out.wall_s:.1f}s{extra}")
            if out.status != "skipped":
                refresh_table()

        try:
            executor.run(tasks, on_start=on_start, on_done=on_done, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            store.write_table(results, suite)
            console.print("[bold red]interrupted[/]: finished runs are kept; run the same command to continue")
            return None
    return outcomes


def _summarise(console: Console, args: argparse.Namespace, plan: _Plan, outcomes: list[Any]) -> int:
    """Latencies (unless off), the suite's table, the summary table; the exit status: 0 all done, 1 a run
    failed, 2 a run failed for bad data."""
    specs_by_hash = plan.specs_by_hash
    if args.latency if args.latency is not None else plan.budget != "smoke":
        try:
            _measure_latencies(console, plan.results, outcomes, specs_by_hash, args.threads or 1)
        except KeyboardInterrupt:
            console.print("[yellow]latency measurement interrupted[/]")
    df, path = store.write_table(plan.results, plan.suite)
    counts = _summary(console if args.format != "table" else _cli.console(), outcomes, specs_by_hash, args.format)
    console.print(f"table: {path} ({len(df)} rows) and {path.with_suffix('.parquet')}")
    if plan.synthetic:
        console.print("[bold yellow on red] NOTE: SYNTHETIC DATA in this suite's runs: not skin-lesion results [/]")
    bad_data = _data_failures(outcomes)
    if bad_data:
        reason = bad_data[0].reason or ""
        more = f" (and {len(bad_data) - 1} more run(s))" if len(bad_data) > 1 else ""
        why = re.sub(r" at [\w.]+\.py:\d+$", "", reason[reason.index(DATA_ERROR) + len(DATA_ERROR):])
        return _error(f"bad data in run {bad_data[0].label} ({bad_data[0].config_hash}){more}: {why}")
    return 1 if counts["failed"] else 0


def _clean_stale(console: Console, results: str) -> None:
    """Remove what writers killed by SIGKILL left behind (table, record and cache temporaries)."""
    from engine.data import cache as dcache

    removed = _cli.clean_stale_temps(results) + dcache.clean_stale()
    if removed:
        console.print(f"removed {len(removed)} temporary file(s) left by killed writers "
                      f"(e.g. {removed[0]})")


def _refuse_graph(configs: list[Any], args: argparse.Namespace) -> None:
    """Exit 2 before anything runs when ``--cuda-graph`` cannot train a run here (no CUDA device, fast path)."""
    from engine.fastview import uses_fast_path
    from engine.graphs import graph_refusal

    for cfg in configs:
        problem = graph_refusal(args.device, fast=uses_fast_path(cfg.model, args.device, args.fast))
        if problem:
            raise UsageError(f"--cuda-graph ({cfg.model}): {problem}")


def _refuse_conflicts(configs: list[Any], results: str, args: argparse.Namespace) -> None:
    """Exit 2 before anything runs when an unfinished run cannot resume on this device / precision / numerics."""
    from engine.packed import pack_problem
    from engine.train import resume_conflict

    for cfg in configs:
        packed = args.pack > 1 and pack_problem([cfg], args.device) is None
        problem = resume_conflict(cfg, results, device=args.device, fast=args.fast, packed=packed,
                                  graph=args.cuda_graph)
        if problem:
            raise UsageError(problem)


def _measure_latencies(console: Console, results: str, outcomes: list[Any], specs_by_hash: dict[str, RunSpec],
                       threads: int) -> None:
    """CPU latency of every model with a finished run, measured once per results folder (cached)."""
    import math

    # the cache is per model name, built without keyword arguments: variants with arguments are not measured
    measurable = [specs_by_hash[o.config_hash] for o in outcomes if o.status in ("done", "skipped")]
    models = [m for m in dict.fromkeys(sp.model for sp in measurable if not sp.overrides)
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
