"""Report of a study suite: LaTeX / Markdown tables, figures and statistics
from its results table.

    python -m studies.report --suite ablation_gab  # -> reports/ablation_gab/
    python -m studies.report --all --results results --out reports
    python -m studies.report --suite smoke --no-qualitative  # no checkpoints read
    python -m studies.report --suite my.toml  # a suite file: its name, reference

Each variant is compared with the suite's declared ``reference`` (suite files; ``--reference`` overrides
it), EGE-UNet when the suite declares none.

Writes ``<out>/<suite>/report.md``, ``tables.tex`` (standalone; ``pdflatex tables.tex`` compiles it),
``tables/*.tex``, ``figures/*.{png,pdf}``, ``summary.csv`` and ``stats.csv``. A missing results folder or an
empty table is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from studies import _cli
from studies.reporting.load import ReportError, discover_suites, load_results

PROG = "python -m studies.report"


def parser() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, " ".join(__doc__.split("\n\n")[0].split()),
                    epilog="examples:\n" + "\n".join("  " + ln.strip() for ln in __doc__.splitlines() if "python -m" in ln)
                           + "\n\n" + _cli.EXIT_LINE)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", action="append", metavar="NAME",
                       help="suite to report (repeatable): a built-in name or a suite file (.toml); reads "
                            "<results>/<NAME>/results.csv")
    which.add_argument("--all", action="store_true", help="every suite with a results table under --results")
    p.add_argument("--results", default="results", type=Path, help="results folder (default: results/)")
    p.add_argument("--out", default="reports", type=Path, help="output folder (default: reports/)")
    p.add_argument("--reference", metavar="VARIANT",
                   help="the variant every other one is compared with (default: the suite's declared "
                        "reference, else EGE-UNet)")
    p.add_argument("--n-boot", type=int, default=2000, metavar="B",
                   help="replicates of the hierarchical bootstrap against the reference (default 2000)")
    p.add_argument("--no-reported", action="store_true",
                   help="leave out the rows with the numbers reported for EGE-UNet")
    p.add_argument("--no-html", action="store_true", help="skip index.html (and the per-image overlays)")
    p.add_argument("--no-qualitative", action="store_true",
                   help="skip the qualitative grid (no checkpoint loading, no data loading)")
    p.add_argument("--qual-variants", type=int, default=0, metavar="N",
                   help="at most N models in the qualitative grid, EGE-UNet first (default 0: every variant)")
    p.add_argument("--qual-ids", nargs="+", metavar="ID", help="test image ids of the qualitative grid")
    p.add_argument("--browser-images", type=int, default=12, metavar="N",
                   help="test images whose overlays the per-image browser of index.html pre-renders, spread "
                        "from worst to best (default 12; 0: every test image, which copies the whole test set's "
                        "images into the report folder: do that for a local report, not for one you commit)")
    return p


def _error(message: str) -> int:
    print(_cli.error_line(PROG, message), file=sys.stderr, flush=True)
    return _cli.USAGE_ERROR


def declared_reference(suite: str) -> tuple[str, str | None]:
    """``(results folder name, declared reference)`` of ``--suite`` ``suite``: a suite file gives its ``name``
    and ``reference``; a built-in suite its own; any other name (a results folder only) no reference."""
    from studies.suites import SUITES, SuiteError, get_suite, is_suite_file

    if is_suite_file(suite):
        try:
            s = get_suite(suite)
        except (SuiteError, OSError) as e:
            raise ReportError(str(e)) from None
        return s.name, s.reference
    return suite, SUITES[suite].reference if suite in SUITES else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n_boot < 100:
        return _error("--n-boot must be at least 100")
    if args.qual_variants < 0:
        return _error("--qual-variants must be 0 (all) or more")
    if args.browser_images < 0:
        return _error("--browser-images must be 0 (every test image) or more")
    try:
        names = discover_suites(args.results) if args.all else list(dict.fromkeys(args.suite))
        suites = dict(declared_reference(n) for n in names)  # results folder -> declared reference
        for suite in suites:  # check every input before the slow imports and before writing anything
            load_results(args.results, suite)
        _cli.check_output_dir(args.out, "--out")
        from studies.reporting.build import Options, build_suite_report

        for suite, declared in suites.items():
            options = Options(n_boot=args.n_boot, reported=not args.no_reported, html=not args.no_html,
                              qualitative=not args.no_qualitative, max_qual_variants=args.qual_variants,
                              qual_ids=args.qual_ids, browser_images=args.browser_images,
                              reference=args.reference or declared)
            t0 = time.perf_counter()
            rep = build_suite_report(args.results, suite, args.out, options)
            made = sum(1 for fs in rep.figures.values() for f in fs if f.made)
            print(f"{suite}: {len(rep.tables)} table(s), {made} figure(s) -> {rep.out_dir / 'report.md'} "
                  f"({time.perf_counter() - t0:.1f} s)")
            for line in rep.skipped:
                print(f"  skipped {line}")
    except (ReportError, _cli.CLIError) as exc:
        return _error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
