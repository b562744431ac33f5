"""Small helpers shared by the ``python -m studies.*`` command-line tools.

* :func:`console` - a rich console that does not wrap tables when the output is piped;
* :func:`fail` - print ONE line ``<prog>: error: <message>`` on stderr and exit with a code
  (2 = usage / unknown names / data errors, 1 = a check failed);
* :func:`resolve_models` - expand ``all`` and glob patterns against the model registry;
* :func:`write_csv_atomic` - write a CSV through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, NoReturn, Sequence

from rich.console import Console

from engine.record import atomic_write

USAGE_ERROR = 2
CHECK_FAILED = 1


def console(stderr: bool = False) -> Console:
    """A rich console; 200 columns wide when not attached to a terminal (logs, subprocess tests)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(file=stream, width=width, soft_wrap=False)


def fail(prog: str, message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print a one-line error on stderr and exit with ``code``."""
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class UnknownModels(ValueError):
    """Some requested names match no registered model."""


def resolve_models(names: Sequence[str] | None, default: Sequence[str] = ("egeunet",)) -> list[str]:
    """Registered model names for the CLI argument ``names``.

    ``None``/empty gives ``default``; ``all`` gives every registered model; a name with ``*``,
    ``?`` or ``[`` is a glob over the registered names. Order is kept, duplicates dropped.
    Raises :class:`UnknownModels` (message lists the valid names) for names that match nothing.
    """
    from zoo.registry import list_models

    registered = list_models()
    wanted = list(names) if names else list(default)
    out: list[str] = []
    unknown: list[str] = []
    for n in wanted:
        if n == "all":
            matches = registered
        elif any(ch in n for ch in "*?["):
            matches = [r for r in registered if fnmatch.fnmatch(r, n)]
        else:
            matches = [n] if n in registered else []
        if not matches:
            unknown.append(n)
        out.extend(m for m in matches if m not in out)
    if unknown:
        raise UnknownModels(
            f"unknown model(s) {', '.join(unknown)}; valid names: all, {', '.join(registered)}")
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

