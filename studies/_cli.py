"""The one CLI convention of the ``python -m studies.*`` commands, and small helpers they share.

A command is written like this (``studies/budget.py`` is a short complete example)::

    from studies import _cli

    PROG = "python -m studies.budget"

    def build_parser():
        p = _cli.parser(PROG, "One-line description.", epilog="examples:\\n  ...\\n" + _cli.EXIT_LINE)
        p.add_argument("--models", ...)
        _cli.add_format(p)                       # --format table|json|csv, where the command prints a table
        return p

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)   # a bad argument: one line, exit 2
        out = _cli.console()                     # width from the terminal, 80 columns when unknown
        ...
        _cli.emit(rows, COLUMNS, args.format, out, lambda: render(rows))
        return 0

The pieces:

* :func:`parser` - an ``argparse`` parser with the prog name, one help layout (raw description and
  epilog, terminal width) and argument errors reported as ONE line ``<prog>: error: <message>``, exit 2
  (argparse's default prints the usage block first);
* :func:`fail` / :class:`CLIError` - the same one-line error for errors found later; ``fail`` exits,
  ``CLIError`` is raised and :func:`guard` turns it (and ``DataError``) into the line and status 2;
* :func:`console` - a rich console as wide as the terminal (``$COLUMNS`` wins), 80 columns when the
  width is unknown (pipes, logs), so every table is laid out for 80 columns there;
* :func:`add_format` / :func:`emit` - ``--format json|csv`` prints the rows of a table for scripts
  (JSON: one array of objects; CSV: a header and one line per row) on stdout instead of the table;
* :func:`check_output_dir` / :func:`check_output_file` - refuse, before anything is created, an output
  path that is a file, lies under a file or in a folder this user cannot write (one line naming it);
* :func:`clean_stale_temps` - remove temporaries left by writers that were killed (SIGKILL);
* :func:`resolve_models` - expand ``all`` and glob patterns against the model registry;
* :func:`write_csv_atomic` - write a CSV through a temporary file and ``os.replace``.

Exit status of every command: 0 success; 1 a check or a run failed (named on stderr);
2 bad arguments, unknown names, unusable output paths or bad data (one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Sequence

from rich.console import Console

from engine.record import atomic_write

USAGE_ERROR = 2
CHECK_FAILED = 1
FORMATS = ("table", "json", "csv")
DEFAULT_WIDTH = 80
EXIT_LINE = ("exit status: 0 ok; 1 a check or run failed (named on stderr);\n"
             "2 bad argument, name, output path or data (one line on stderr)")


# ------------------------------------------------------------------------------------------- errors

class CLIError(Exception):
    """A usage, path or data problem of a command: :func:`guard` prints it as one line, status 2."""

    def __init__(self, message: str, code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(message: Any) -> str:
    return " ".join(str(message).split())


def error_line(prog: str, message: Any) -> str:
    return f"{prog}: error: {one_line(message)}"


def fail(prog: str, message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``<prog>: error: <message>`` (one line) on stderr and exit with ``code``."""
    print(error_line(prog, message), file=sys.stderr, flush=True)
    raise SystemExit(code)


def guard(prog: str, body: Callable[[], int], *errors: type[BaseException]) -> int:
    """Run ``body()``; a :class:`CLIError`, an ``engine.data.DataError`` or one of ``errors`` becomes
    the one-line error and the returned status (2, or the CLIError's code)."""
    from engine.data.errors import DataError

    try:
        return body()
    except CLIError as e:
        print(error_line(prog, e), file=sys.stderr, flush=True)
        return e.code
    except (DataError, *errors) as e:
        print(error_line(prog, e), file=sys.stderr, flush=True)
        return USAGE_ERROR


# ------------------------------------------------------------------------------------------- parser

def terminal_width(default: int = DEFAULT_WIDTH) -> int:
    """Columns of the terminal (``$COLUMNS`` first), ``default`` when unknown (not a terminal)."""
    return max(40, shutil.get_terminal_size((default, 24)).columns)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written; option help wrapped at the terminal width."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=terminal_width(), max_help_position=28)


class WrappingHelpFormatter(argparse.HelpFormatter):
    """Everything wrapped at the terminal width: for sub-commands whose description is one long paragraph
    (``sub.add_parser(name, description=..., formatter_class=_cli.WrappingHelpFormatter)``)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=terminal_width(), max_help_position=28)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``<prog>: error: <message>``, exit 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse's hook
        fail(self.prog, f"{message} (see --help)")


def parser(prog: str, description: str, epilog: str | None = None, **kw: Any) -> Parser:
    """The parser of a command: ``prog`` (``python -m studies.NAME``), a description, an epilog
    (examples and the exit-status line, :data:`EXIT_LINE`), the common help layout. The description is
    re-wrapped to the terminal (blank lines separate paragraphs); the epilog is printed as written, so
    keep its lines under 80 columns."""
    width = min(terminal_width(), 100) - 2
    text = "\n\n".join(textwrap.fill(" ".join(par.split()), width) for par in description.split("\n\n"))
    return Parser(prog=prog, description=text, epilog=epilog, formatter_class=_HelpFormatter, **kw)


def add_format(p: argparse.ArgumentParser, what: str = "the table") -> None:
    """Add ``--format table|json|csv`` (default ``table``)."""
    p.add_argument("--format", choices=FORMATS, default="table", metavar="F",
                   help=f"print {what} as: table (default), json or csv (for scripts)")


# ------------------------------------------------------------------------------------------- output

def console(stderr: bool = False, *, markup: bool = True, highlight: bool = True) -> Console:
    """A rich console on stdout (or stderr), as wide as the terminal; 80 columns when unknown. ``markup`` /
    ``highlight`` False: text printed as it is (no ``[style]`` tags, no colouring of numbers and paths)."""
    return Console(stderr=stderr, width=terminal_width(), soft_wrap=False,  # follows sys.stdout/sys.stderr
                   markup=markup, highlight=highlight)


def _plain(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN
        return None
    if hasattr(v, "item") and callable(v.item) and not isinstance(v, (list, tuple, dict, str)):
        try:
            return v.item()
        except (TypeError, ValueError):
            pass
    return v


def emit(rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str,
         out: Console | None = None, table: Callable[[], Any] | None = None) -> None:
    """Print ``rows`` in ``fmt``: ``json`` / ``csv`` on stdout (only ``columns``, in that order), else
    ``table()`` (a rich renderable) on ``out``."""
    rows = list(rows)
    if fmt == "json":
        data = [{c: _plain(r.get(c)) for c in columns} for r in rows]
        sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(_plain(r.get(c))) for c in columns})
    elif table is not None:
        (out or console()).print(table())
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------- paths

def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike[str], option: str = "--results") -> Path:
    """``path`` as a folder this command may write into (it may not exist yet); creates nothing.

    Raises :class:`CLIError` naming the path when it is an existing file, lies under a file, or the
    folder (or the nearest existing folder above it) cannot be written by this user.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CLIError(f"{option} {p}: is a file, not a folder; give a folder (it is created if missing)")
    if p.is_symlink() and not p.exists():
        raise CLIError(f"{option} {p}: is a dangling symbolic link; remove it or give another folder")
    base = _first_existing(p)
    if not base.is_dir():
        raise CLIError(f"{option} {p}: {base} is a file, so no folder can be made under it; give another folder")
    where = "the folder" if base == p else f"{base} (where it would be created)"
    if not os.access(base, os.W_OK | os.X_OK) or not _can_create_in(base):
        raise CLIError(f"{option} {p}: {where} is not writable (read-only or immutable); give a writable folder")
    return p


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (the probe is removed at once). ``os.access`` alone
    misses read-only mounts and immutable folders, and says yes to root on a read-only folder."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def check_output_file(path: str | os.PathLike[str], option: str = "--csv") -> Path:
    """``path`` as a file this command may (over)write; creates nothing (see :func:`check_output_dir`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CLIError(f"{option} {p}: is a folder; give a file name")
    check_output_dir(p.parent, option=f"{option} {p}: its folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"{option} {p}: the file is not writable by this user; give another path")
    return p


# ------------------------------------------------------------------------------------------- temporaries

STALE_TEMP_S = 600  # a temporary without a writer's pid is stale when older than this (and unlocked)
_PID_DIR = re.compile(r"^\.tmp-.+-(\d+)-[0-9a-f]{8}$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_free(lock: Path) -> bool:
    """True when nobody holds ``lock`` (a :func:`studies.store.file_lock` file; a missing one is free)."""
    from filelock import Timeout

    from studies import store

    if not lock.exists():
        return True
    probe = store.file_lock(lock)
    try:
        probe.acquire(timeout=0)
    except (Timeout, OSError):
        return False
    probe.release()
    return True


def clean_stale_temps(results: str | os.PathLike[str], max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove temporaries of killed writers under a results folder; returns what was removed.

    * ``<suite>/.<table>.*.tmp`` (table writes): when the suite's ``.table.lock`` is free and the file
      is older than a minute, or older than ``max_age_s`` anyway; ``.<file>.*.tmp`` at the top (the
      manifest): when older than ``max_age_s``;
    * ``runs/<hash>/**/.<file>.*.tmp`` (record and checkpoint writes): when the run's lock is free and
      the file is older than a minute;
    * ``.tmp-<name>-<pid>-<hex8>/`` folders (cache builds, imports): when that pid is not alive.
    """
    from studies import store

    root = Path(results)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()

    def old(p: Path, s: float) -> bool:
        try:
            return now - p.lstat().st_mtime > s
        except OSError:
            return False

    def rm(p: Path) -> None:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass

    for tmp in sorted(root.glob(".*.tmp")):  # the manifest and other files at the top
        if old(tmp, max_age_s):
            rm(tmp)
    for tmp in sorted(root.glob("*/.*.tmp")):
        if tmp.parent.name == "runs":
            continue
        free = _lock_free(tmp.parent / ".table.lock")
        if (free and old(tmp, 60)) or old(tmp, max_age_s):
            rm(tmp)
    runs = store.runs_dir(root)
    if runs.is_dir():
        for tmp in sorted([*runs.glob("*/.*.tmp"), *runs.glob("*/*/.*.tmp")]):
            chash = tmp.relative_to(runs).parts[0]
            if old(tmp, 60) and not store.is_locked(root, chash):
                rm(tmp)
    for d in sorted([*root.glob(".tmp-*"), *root.glob("*/.tmp-*")]):
        m = _PID_DIR.match(d.name)
        if m and not pid_alive(int(m.group(1))):
            rm(d)
    return removed


def clean_stale_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.tmp-<name>-<pid>-<hex8>`` folders in ``folder`` whose pid is not alive."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).glob(".tmp-*"))
    except OSError:
        return removed
    for d in entries:
        m = _PID_DIR.match(d.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
    return removed


# ------------------------------------------------------------------------------------------- models

class UnknownModels(ValueError):
    """Some requested names match no registered model."""


def resolve_models(names: Sequence[str] | None, default: Sequence[str] = ("egeunet",)) -> list[str]:
    """Registered model names for the CLI argument ``names``.

    ``None``/empty gives ``default``; ``all`` gives every registered model; a name with ``*``,
    ``?`` or ``[`` is a glob over the registered names; an outside model is given as
    ``package.module:callable`` or by its entry-point name. Order is kept, duplicates dropped.
    Raises :class:`UnknownModels` (message lists the valid names) for names that match nothing, or
    naming the outside model that cannot be imported.
    """
    from zoo.registry import ExternalModelError, get_entry, is_import_path, list_models

    registered = list_models()
    outside = set(list_models(outside=True)) - set(registered)  # entry-point models
    wanted = list(names) if names else list(default)
    for n in wanted:
        if is_import_path(n):
            try:
                get_entry(n)  # imports it: a missing module or attribute is named here
            except ExternalModelError as e:
                raise UnknownModels(str(e)) from None
    out: list[str] = []
    unknown: list[str] = []
    for n in wanted:
        if n == "all":
            matches = registered
        elif any(ch in n for ch in "*?["):
            matches = [r for r in registered if fnmatch.fnmatch(r, n)]
        else:
            matches = [n] if n in registered or n in outside or is_import_path(n) else []
        if not matches:
            unknown.append(n)
        out.extend(m for m in matches if m not in out)
    if unknown:
        raise UnknownModels(
            f"unknown model(s) {', '.join(unknown)}; valid names: all, {', '.join(registered)} "
            "(or an outside model as package.module:callable)")
    return out


def _cell(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else v


def write_csv_atomic(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str],
                     columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV to ``path`` atomically (temp file in the same folder + replace).

    Columns: ``columns`` if given, else the union of keys in first-seen order. Dict/list values
    are stored as JSON, ``None`` as an empty cell.
    """
    rows = list(rows)
    if columns is None:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        columns = cols
    path = Path(path)

    def write(fh: Any) -> None:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})

    atomic_write(path, write)
    return path
