"""Regenerate the committed split lists under ``engine/data/splits/`` from the ISIC data.

Usage::

    python -m engine.data.make_splits [--data-root DIR] [--out DIR] [--check]

Reads the ids of ISIC 2018 and ISIC 2017 (listing only, no decoding) from ``--data-root`` (default: the data root
of :func:`engine.data.data_root`) and writes, with seed 0 and the rule documented in :mod:`engine.data.splits`
(rank by ``sha256("egeunet-split|<dataset>|<seed>|<id>")``, 7:3 for ``paper``, 70/10/20 for ``clean``; ISIC 2017
``clean`` is the official split, recorded as is):

* ``isic2018_paper_{train,test}.txt`` (1816 / 778), ``isic2018_clean_{train,val,test}.txt`` (1816 / 259 / 519)
* ``isic2017_paper_{train,test}.txt`` (1505 / 645 from train+val), ``isic2017_clean_{train,val,test}.txt``
  (2000 / 150 / 529, the official folders of the shared copy)

The output is a pure function of the id lists: running it again gives byte-identical files (``--check`` compares
instead of writing and exits 1 on any difference).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .errors import DataError
from .layouts import discover, locate
from .splits import SPLIT_DIR, expected_lists, write_lists

COMMITTED = (("isic2018", "paper"), ("isic2018", "clean"), ("isic2017", "paper"), ("isic2017", "clean"))


def make_splits(root=None, out_dir: Path | None = None, seed: int = 0) -> list[Path]:
    """Write every committed list into ``out_dir`` (default ``engine/data/splits``); returns the paths."""
    from . import data_root

    root = data_root(root)
    written: list[Path] = []
    for dataset in sorted({d for d, _ in COMMITTED}):
        base = locate(dataset, root)
        if base is None:
            raise DataError(f"{root}: dataset {dataset} not found; pass --data-root or set EGEUNET_DATA", root)
        disc = discover(dataset, base)
        disc.raise_if_errors()
        part_ids = {p: [x.id for x in pairs] for p, pairs in disc.parts.items()}
        for d, protocol in COMMITTED:
            if d != dataset:
                continue
            lists = expected_lists(dataset, protocol, part_ids, seed)
            pool_n = sum(len(v) for v in lists.values())
            written += write_lists(dataset, protocol, lists, pool_n, seed, out_dir)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.data.make_splits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="folder holding ISIC2018/ and ISIC2017/")
    ap.add_argument("--out", default=None, help=f"output folder (default {SPLIT_DIR})")
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                paths = make_splits(args.data_root, Path(tmp))
                bad = [p.name for p in paths if p.read_bytes() != (SPLIT_DIR / p.name).read_bytes()
                       if (SPLIT_DIR / p.name).exists()] + [p.name for p in paths if not (SPLIT_DIR / p.name).exists()]
            print("split lists identical" if not bad else f"differ: {', '.join(bad)}")
            return 1 if bad else 0
        for p in make_splits(args.data_root, Path(args.out) if args.out else None):
            print(p)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
