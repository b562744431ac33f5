"""Audit committed results: ``python -m studies.audit [--results DIR] [--strict]``.

Checks every run record under ``<results>/runs/`` and every suite table ``<results>/<suite>/results.csv``:

* **complete**: a finished record holds config, env, history (all epochs of its recipe), metrics, per-image
  counts, complexity and ``status.json`` = done;
* **recompute**: the test metrics in ``metrics.json`` equal those recomputed from the stored per-image counts
  (``engine.metrics.summarize``), and each per-image DSC / IoU equals its counts;
* **one device**: no run resumed on another device type, precision mode, numerics version or path;
* **clean**: every session of every run was launched from a clean checkout of a named commit;
* **one numerics** per table: a single device type, precision mode and numerics version in each table;
* **traceable**: every table row names a record, and the row's numbers equal the record's;
* **seeds**: the seeds of each table cell against the suite's declared count (a warning; an error with
  ``--strict``);
* **checkpoint** (the 2 MB rule of :mod:`studies.evaluate`): a finished run's ``best.pt`` of at most 2 MB is
  there, and git does not ignore it (it is committed with the run); a larger one is absent or ignored by git,
  never committed, and its record stores its size and SHA-256, so that a recreated one can be checked; a
  ``best.pt`` that is there must match the SHA-256 its record stores (records before schema 2 store none).
  Without git around the results folder a ``best.pt`` over 2 MB that is there counts as committed.
  ``--stamp-checkpoints`` first stores size and SHA-256 in the finished records before schema 2 whose ``best.pt``
  is still there and names its run (:func:`engine.checkpoint.stamp_best_checkpoint`).

Exit status: 0 no violation, 1 a violation (or a seed shortfall under ``--strict``), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from studies import _cli

PROG = "python -m studies.audit"
_RTOL = 1e-9
_SUMMARY = ("pooled_miou", "pooled_dsc", "pooled_acc", "pooled_sen", "pooled_spe", "per_image_dsc_mean",
            "per_image_dsc_std", "per_image_iou_mean", "per_image_iou_std", "isic_tjaccard")
_REQUIRED = ("config.json", "env.json", "history.csv", "metrics.json", "per_image.csv", "complexity.json",
             "status.json")
_RESUME_KEYS = ("device_type", "precision", "numerics_version", "path")


@dataclass
class Finding:
    """One audit finding: ``where`` (a record or table), ``check`` name, message; warnings do not fail."""

    where: str
    check: str
    message: str
    warning: bool = False


@dataclass
class RunFacts:
    """What the table-level checks need from one record."""

    config_hash: str
    device_type: str | None
    precision: str | None
    numerics_version: Any
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class GitView:
    """What git says about the results folder's ``best.pt`` files: none of it outside a git work tree."""

    top: Path | None = None  # the work tree holding the results folder
    committed: dict[Path, int] = field(default_factory=dict)  # best.pt in git's index -> size of its blob
    resume_states: set[Path] = field(default_factory=set)  # latest.pt in git's index (an unfinished run carried)

    def is_ignored(self, path: Path) -> bool:
        if self.top is None:
            return False
        res = subprocess.run(["git", "-C", str(self.top), "check-ignore", "-q", str(path.resolve())],
                             capture_output=True)
        return res.returncode == 0


def _git(top: Path, *args: str, stdin: str | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(top), *args], input=stdin, capture_output=True, text=True)
    except OSError:  # no git on this machine
        return None
    return res.stdout if res.returncode == 0 else None


def git_view(results: Path) -> GitView:
    """The ``best.pt`` files of ``<results>/runs/`` that git's index holds (what a commit stores), with sizes."""
    top = _git(results, "rev-parse", "--show-toplevel")
    if top is None:
        return GitView()
    view = GitView(Path(top.strip()).resolve())
    try:
        rel = (results.resolve() / "runs").relative_to(view.top).as_posix()
    except ValueError:
        return view
    latest = _git(view.top, "ls-files", "-z", "--", f"{rel}/*/checkpoints/latest.pt") or ""
    view.resume_states = {view.top / p for p in latest.split("\0") if p}
    listed = _git(view.top, "ls-files", "-s", "-z", "--", f"{rel}/*/checkpoints/best.pt") or ""
    entries = [(e.split("\t", 1)[0].split()[1], e.split("\t", 1)[1]) for e in listed.split("\0") if "\t" in e]
    if entries:
        sizes = (_git(view.top, "cat-file", "--batch-check=%(objectsize)", stdin="".join(f"{b}\n" for b, _ in entries))
                 or "").split()
        for (_blob, path), size in zip(entries, sizes):
            view.committed[view.top / path] = int(size)
    return view


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def checkpoint_findings(r: Any, git: GitView | None = None) -> list[Finding]:
    """The 2 MB rule for the ``best.pt`` of one finished run (``r``: its :class:`engine.record.RunRecord`)."""
    from engine.checkpoint import file_sha256
    from studies.evaluate import COMMIT_LIMIT_BYTES

    git = git or GitView()
    name = f"runs/{r.config_hash}"
    path = r.best_checkpoint
    limit = _mb(COMMIT_LIMIT_BYTES)
    sha, size = r.best_checkpoint_sha256, r.best_checkpoint_bytes
    out: list[Finding] = []

    def bad(message: str) -> None:
        out.append(Finding(name, "checkpoint", message))

    committed = git.committed.get(path.resolve())
    if committed is not None and committed > COMMIT_LIMIT_BYTES:
        bad(f"best.pt of {_mb(committed)} is committed, over the {limit} limit: `git rm --cached {path}` and add it "
            "to .gitignore (the record keeps its SHA-256)")
    if not path.is_file():
        if sha is None:
            bad("best.pt is missing and the record stores no SHA-256: a recreated checkpoint cannot be checked")
        elif size is None or size <= COMMIT_LIMIT_BYTES:
            bad(f"best.pt is missing, yet {'its size is not recorded' if size is None else _mb(size)}: a best.pt "
                f"of at most {limit} is committed with its run")
        return out
    actual = path.stat().st_size
    if actual > COMMIT_LIMIT_BYTES:
        if committed is None and not git.is_ignored(path):
            bad(f"best.pt of {_mb(actual)} is over the {limit} committed with a run and git does not ignore it: "
                "add it to .gitignore")
        if sha is None:
            bad(f"best.pt of {_mb(actual)} stays out of git, but the record stores no SHA-256 to check a recreated "
                "one against")
    elif committed is None and git.is_ignored(path):
        bad(f"best.pt of {_mb(actual)} is ignored by git: a best.pt of at most {limit} is committed with its run")
    if sha is not None and file_sha256(path) != sha:
        bad(f"best.pt differs from the SHA-256 its record stores ({sha[:12]}...)")
    return out


def _close(a: Any, b: Any) -> bool:
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return False
    if math.isnan(fa) and math.isnan(fb):
        return True
    return abs(fa - fb) <= _RTOL * max(1.0, abs(fa), abs(fb))


def audit_record(rec: Path, git: GitView | None = None) -> tuple[list[Finding], RunFacts | None]:
    """Findings for one run record, and its facts when it is a finished, readable run (``git``: what git says
    about the checkpoints; none: the results folder is taken as outside git)."""
    from engine.metrics import per_image_metrics, summarize
    from engine.record import RecordError, load_record

    name = f"runs/{rec.name}"
    out: list[Finding] = []
    missing = [f for f in _REQUIRED if not (rec / f).is_file()]
    if not (rec / "status.json").is_file():
        return [Finding(name, "complete", "unfinished (running or interrupted): no table reads it until it is done",
                        warning=True)], None
    try:
        r = load_record(rec)
    except RecordError as e:
        return [Finding(name, "complete", str(e))], None
    if r.status is None or r.status.get("status") != "done":
        reason = (r.status or {}).get("reason")
        return [Finding(name, "complete", f"run status is {(r.status or {}).get('status')!r} ({reason})")], None
    out += checkpoint_findings(r, git)
    latest = rec.resolve() / "checkpoints" / "latest.pt"
    if git is not None and latest in git.resume_states:
        out.append(Finding(name, "checkpoint", "latest.pt (resume state) is still committed with a finished run: "
                                               f"`git rm --cached {latest.relative_to(git.top)}`", warning=True))
    if missing:
        out.append(Finding(name, "complete", f"missing {', '.join(missing)}"))
        return out, None
    cfg, metrics = r.config or {}, r.metrics or {}
    epochs = (cfg.get("recipe") or {}).get("epochs")
    if epochs is not None and len(r.history) != int(epochs):
        out.append(Finding(name, "complete", f"history has {len(r.history)} epochs, the recipe {epochs}"))

    test_rows = [row for row in r.per_image if row.get("split") == "test" and row.get("dataset") == cfg.get("dataset")]
    test = metrics.get("test") or {}
    if not test_rows:
        out.append(Finding(name, "recompute", "per_image.csv holds no test rows"))
    else:
        counts = np.array([[int(row[k]) for k in ("tn", "fp", "fn", "tp")] for row in test_rows], dtype=np.int64)
        again = summarize(counts)
        bad = [k for k in _SUMMARY if not _close(again[k], test.get(k))]
        if bad:
            k = bad[0]
            out.append(Finding(name, "recompute", f"{len(bad)} test metric(s) differ from the per-image counts "
                                                  f"(first: {k} stored {test.get(k)} vs recomputed {again[k]})"))
        per = per_image_metrics(counts)
        stored_dsc = np.array([float(row["dsc"]) for row in test_rows])
        stored_iou = np.array([float(row["iou"]) for row in test_rows])
        n_bad = int((~np.isclose(stored_dsc, per["dsc"], rtol=1e-9, atol=1e-12)).sum()
                    + (~np.isclose(stored_iou, per["iou"], rtol=1e-9, atol=1e-12)).sum())
        if n_bad:
            out.append(Finding(name, "recompute", f"{n_bad} per-image dsc/iou value(s) differ from their counts"))

    sessions = r.sessions
    if not sessions:
        out.append(Finding(name, "one device", "env.json lists no sessions"))
    for key in _RESUME_KEYS:
        values = [getattr(s, key) for s in sessions]
        if any(v is None for v in values):
            out.append(Finding(name, "one device", f"a session does not record {key} (record predates it)"))
        elif len(set(map(str, values))) > 1:
            out.append(Finding(name, "one device", f"resumed across {key}: {' -> '.join(map(str, values))}"))
    for i, s in enumerate(sessions):
        if not s.git_commit:
            out.append(Finding(name, "clean", f"session {i} names no commit"))
        elif s.git_dirty is not False:
            out.append(Finding(name, "clean", f"session {i} ran on uncommitted code ({s.git_commit[:10]}, "
                                              f"git_dirty {s.git_dirty})"))
    first = sessions[0] if sessions else None
    facts = RunFacts(rec.name, first and first.device_type, first and first.precision,
                     first and first.numerics_version,
                     {k: float(test[k]) for k in _SUMMARY if isinstance(test.get(k), (int, float))})
    return out, facts


def audit_table(results: Path, csv_path: Path, facts: dict[str, RunFacts], strict: bool
                ) -> tuple[list[Finding], dict[str, Any]]:
    """Findings for one suite table, and a summary line for the report."""
    from studies.suites import SUITES

    suite = csv_path.parent.name
    where = f"{suite}/results.csv"
    out: list[Finding] = []
    try:
        df = pd.read_csv(csv_path, dtype={"config_hash": str})
    except (OSError, ValueError) as e:
        return [Finding(where, "traceable", f"cannot read the table: {e}")], {"suite": suite}
    rows = [r for _, r in df.iterrows()]
    used: list[RunFacts] = []
    for r in rows:
        h = str(r.get("config_hash"))
        f = facts.get(h)
        if f is None:
            state = "missing" if not (results / "runs" / h).exists() else "not a finished, complete record"
            out.append(Finding(where, "traceable", f"row {r.get('variant')} seed {r.get('seed')}: record {h} {state}"))
            continue
        used.append(f)
        bad = [k for k in _SUMMARY if k in r and k in f.metrics and not _close(r[k], f.metrics[k])]
        if bad:
            out.append(Finding(where, "traceable", f"row {h}: {bad[0]} {r[bad[0]]} differs from its record "
                                                   f"({f.metrics[bad[0]]})"))
    for key in ("device_type", "precision", "numerics_version"):
        values = sorted({str(getattr(f, key)) for f in used})
        if len(values) > 1:
            out.append(Finding(where, "one numerics", f"table mixes {key}: {', '.join(values)}"))
    cells = df.groupby(["budget", "variant", "dataset"])["seed"].nunique() if len(df) else pd.Series(dtype=int)
    declared = None
    if suite in SUITES and len(cells):
        want = pd.Series([SUITES[suite].default_seed_count(str(b)) for b, _, _ in cells.index], index=cells.index)
        declared = "/".join(str(n) for n in dict.fromkeys(want))
        short = cells[cells < want]
        if len(short):
            out.append(Finding(where, "seeds", f"{len(short)} of {len(cells)} cell(s) have fewer than the declared "
                                               f"{declared} seeds (min {int(cells.min())})", warning=not strict))
    summary = {
        "suite": suite, "rows": len(df),
        "seeds": "-" if not len(cells) else (f"{int(cells.min())}" if cells.min() == cells.max()
                                              else f"{int(cells.min())}-{int(cells.max())}"),
        "declared": declared if declared is not None else "-",
        "device": ",".join(sorted({str(f.device_type) for f in used})) or "-",
        "numerics": ",".join(sorted({f"{f.precision}/v{f.numerics_version}" for f in used})) or "-",
    }
    return out, summary


def _table_hashes(csv_path: Path) -> set[str]:
    """The config hashes a table's rows name (empty when the table cannot be read: audit_table reports that)."""
    try:
        return set(pd.read_csv(csv_path, dtype={"config_hash": str}, usecols=["config_hash"])["config_hash"])
    except (OSError, ValueError):
        return set()


def audit(results: Path, strict: bool = False, suites: Sequence[str] | None = None
          ) -> tuple[list[Finding], list[dict[str, Any]], int]:
    """All findings for a results folder, the per-table summaries, and the number of records checked.

    With ``suites``, only those suites' tables and the records their rows name are checked.
    """
    findings: list[Finding] = []
    facts: dict[str, RunFacts] = {}
    tables = sorted(results.glob("*/results.csv"))
    records = sorted(p for p in (results / "runs").iterdir() if p.is_dir()) if (results / "runs").is_dir() else []
    if suites is not None:
        tables = [t for t in tables if t.parent.name in suites]
        named = set().union(*(_table_hashes(t) for t in tables)) if tables else set()
        records = [r for r in records if r.name in named]
    git = git_view(results) if records else GitView()
    for rec in records:
        f, fact = audit_record(rec, git)
        findings += f
        if fact is not None and not any(x.check == "complete" for x in f):
            facts[rec.name] = fact
    summaries = []
    for csv_path in tables:
        f, s = audit_table(results, csv_path, facts, strict)
        findings += f
        summaries.append(s)
    return findings, summaries, len(records)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "Check every run record and suite table of a results folder: complete, "
                          "recomputable, single-device, clean, traceable, seeds, checkpoints (2 MB rule).",
                    epilog="examples:\n  python -m studies.audit --results results\n"
                           "  python -m studies.audit --strict --suite ablation_ghpa,ablation_macro\n"
                           "  python -m studies.audit --strict --format json\n\n"
                           "exit status: 0 clean; 1 a violation (seed shortfalls only with --strict);\n"
                           "2 bad arguments (one line on stderr)")
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--strict", action="store_true", help="a table cell with fewer seeds than declared is an error")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--suite", metavar="S,S,...", default=None,
                   help="check only these suites' tables and the run records their rows name (default: all)")
    p.add_argument("--stamp-checkpoints", action="store_true",
                   help="first store the size and SHA-256 of best.pt in every finished record that predates them "
                        "(schema 1), so that a best.pt over 2 MB can stay out of git; only a best.pt that names "
                        "its run and selected epoch is stamped, and nothing else of a record changes")
    return p


def stamp_checkpoints(results: Path) -> list[str]:
    """Apply :func:`engine.checkpoint.stamp_best_checkpoint` to every finished record; the names stamped."""
    from engine.checkpoint import stamp_best_checkpoint

    runs = results / "runs"
    records = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return [rec.name for rec in records if stamp_best_checkpoint(rec) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(_cli.error_line(PROG, f"--results {results} is not a folder"), file=sys.stderr)
        return _cli.USAGE_ERROR
    suites = None
    if args.suite is not None:
        suites = [x.strip() for x in args.suite.split(",") if x.strip()]
        missing = [x for x in suites if not (results / x / "results.csv").is_file()]
        if not suites or missing:
            where = results / missing[0] / "results.csv" if missing else results / "<suite>" / "results.csv"
            print(_cli.error_line(PROG, f"--suite {args.suite}: no table {where}; "
                                        "name suites that have a results.csv there"), file=sys.stderr)
            return _cli.USAGE_ERROR
    if args.stamp_checkpoints:
        for name in stamp_checkpoints(results):
            print(f"stamped runs/{name}: best.pt size and SHA-256 now in its metrics.json", file=sys.stderr)
    findings, summaries, n_records = audit(results, args.strict, suites)
    errors = [f for f in findings if not f.warning]
    if args.format == "json":
        print(json.dumps({"records": n_records, "tables": summaries,
                          "findings": [f.__dict__ for f in findings]}, indent=1, default=str))
        return 1 if errors else 0
    print(f"audit of {results}/: {n_records} run records, {len(summaries)} tables")
    if summaries:
        cols = ("suite", "rows", "seeds", "declared", "device", "numerics")
        widths = {c: max(len(c), *(len(str(s.get(c, "-"))) for s in summaries)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for s in summaries:
            print("  ".join(str(s.get(c, "-")).ljust(widths[c]) for c in cols))
    grouped: dict[tuple[bool, str], list[str]] = {}
    for f in findings:  # one line per record or table and severity
        grouped.setdefault((f.warning, f.where), []).append(f"[{f.check}] {f.message}")
    width = _cli.terminal_width()
    for (warning, where), msgs in grouped.items():
        text = f"{'warning' if warning else 'ERROR'} {where}: {'; '.join(msgs)}"
        print(textwrap.fill(text, width=max(40, width), subsequent_indent="    "))
    print(f"{len(errors)} violation(s), {len(findings) - len(errors)} warning(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
