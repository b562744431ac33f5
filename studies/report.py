"""Report of a study suite: LaTeX / Markdown tables, figures and statistics
from its results table.

    python -m studies.report --suite ablation_gab                 # results/ablation_gab -> reports/ablation_gab
    python -m studies.report --all --results results --out reports
    python -m studies.report --suite smoke --no-qualitative       # skip the checkpoint predictions

Writes ``<out>/<suite>/report.md``, ``tables.tex`` (standalone; ``pdflatex tables.tex`` compiles it),
``tables/*.tex``, ``figures/*.{png,pdf}``, ``summary.csv`` and ``stats.csv``. A missing results folder or an
empty table is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from studies.reporting.load import ReportError, discover_suites, load_results

PROG = "python -m studies.report"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", action="append", metavar="NAME",
                       help="suite to report (repeatable); reads <results>/<NAME>/results.csv")
    which.add_argument("--all", action="store_true", help="every suite with a results table under --results")
    p.add_argument("--results", default="results", type=Path, help="results folder (default: results/)")
    p.add_argument("--out", default="reports", type=Path, help="output folder (default: reports/)")
    p.add_argument("--n-boot", type=int, default=2000, metavar="B",
                   help="replicates of the hierarchical bootstrap against EGE-UNet (default 2000)")
    p.add_argument("--no-reported", action="store_true",
                   help="leave out the rows with the numbers reported for EGE-UNet")
    p.add_argument("--no-html", action="store_true", help="skip index.html (and the per-image overlays)")
    p.add_argument("--no-qualitative", action="store_true",
                   help="skip the qualitative grid (no checkpoint loading, no data loading)")
    p.add_argument("--qual-variants", type=int, default=0, metavar="N",
                   help="at most N models in the qualitative grid, EGE-UNet first (default 0: every variant)")
    p.add_argument("--qual-ids", nargs="+", metavar="ID", help="test image ids of the qualitative grid")
    return p


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n_boot < 100:
        return _error("--n-boot must be at least 100")
    if args.qual_variants < 0:
        return _error("--qual-variants must be 0 (all) or more")
    try:
        suites = discover_suites(args.results) if args.all else list(dict.fromkeys(args.suite))
        for suite in suites:  # check every input before the slow imports and before writing anything
            load_results(args.results, suite)
        from studies.reporting.build import Options, build_suite_report

        options = Options(n_boot=args.n_boot, reported=not args.no_reported, html=not args.no_html,
                          qualitative=not args.no_qualitative,
                          max_qual_variants=args.qual_variants, qual_ids=args.qual_ids)
        for suite in suites:
            t0 = time.perf_counter()
            rep = build_suite_report(args.results, suite, args.out, options)
            made = sum(1 for fs in rep.figures.values() for f in fs if f.made)
            print(f"{suite}: {len(rep.tables)} table(s), {made} figure(s) -> {rep.out_dir / 'report.md'} "
                  f"({time.perf_counter() - t0:.1f} s)")
            for line in rep.skipped:
                print(f"  skipped {line}")
    except ReportError as exc:
        return _error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
