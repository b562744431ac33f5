"""Inspect, validate and import datasets: ``python -m studies.data {summary,check,prepare} ...``.

summary   counts, source sizes and lesion-fraction statistics per split; ``--timing`` adds the cache build/open
          time and the epoch load throughput (run it twice: the second run reuses the cache).
check     validate a dataset folder (or a dataset name, or a data root) and list EVERY problem; decodes every file.
prepare   import official zips (extracted into ``<cache>/sources``, loaders find them there) or a folder, validate,
          and build the preprocessing cache at ``--size``.

Data root: ``--data-root``, else ``$EGEUNET_DATA``, else ``../shared/data`` beside the checkout.
Cache: ``--cache-dir``, else ``$EGEUNET_CACHE``, else ``~/.cache/egeunet``.
Exit status: 0 ok, 2 on a data problem (one line naming the file and what to do; nothing half-written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
import warnings
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from studies import _cli
from engine.data import DataError, DataWarning, data_root, list_datasets, load_split
from engine.data import cache as dcache
from engine.data.decode import read_pair
from engine.data.layouts import LAYOUTS, PH2_IMAGES_DIR, Problem, detect, discover, locate
from engine.data.loader import dataset_dir, normalise_dataset

PROG = "python -m studies.data"


def _out(stderr: bool = False) -> Console:
    """The console for this command's text (stdout, or stderr for warnings and progress), made when it is
    needed by :func:`studies._cli.console`: the terminal's width, 80 columns when unknown; text as it is."""
    return _cli.console(stderr=stderr, markup=False, highlight=False)


# --------------------------------------------------------------------------- summary

def _splits_for(protocol: str) -> tuple[str, ...]:
    return ("train", "test") if protocol == "paper" else ("train", "val", "test")


def _epoch_throughput(arr, batch_size: int, augment: bool, seed: int = 0) -> float:
    import torch

    from engine.data import augment_batch, normalise

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(arr), generator=g).numpy()
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = np.sort(order[s:s + batch_size])
        x = torch.from_numpy(np.ascontiguousarray(arr.images[idx]))
        y = torch.from_numpy(np.ascontiguousarray(arr.masks[idx]))
        if augment:
            x = normalise(x)
            x, y = augment_batch(x, y, g)
    return len(order) / max(time.perf_counter() - t0, 1e-9)


def cmd_summary(args) -> int:
    out = _out()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = [normalise_dataset(d) for d in args.dataset] if args.dataset else \
        list_datasets(available_only=True, root=args.data_root, cache_dir=args.cache_dir)
    rows: list[dict] = []
    sources: dict[str, str] = {}
    timing = Table(title="cache and epoch loading (img/s)", box=box.SIMPLE_HEAD, pad_edge=False,
                   title_justify="left") if args.timing else None
    if timing is not None:
        for col in ("dataset", "cache", "cache s", "load_split\ns (train)", "epoch\nload", "+normalise\n+augment"):
            timing.add_column(col, overflow="fold", justify="left" if col in ("dataset", "cache") else "right")
    for name in names:
        for i, split in enumerate(_splits_for(args.protocol)):
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DataWarning)
                arr = load_split(name, split, protocol=args.protocol, size=args.size, root=args.data_root,
                                 cache_dir=args.cache_dir, progress=_progress(name) if i == 0 else None)
            load_s = time.perf_counter() - t0
            for w in caught:
                _out(stderr=True).print(f"warning: {w.message}")
            lf = arr.lesion_fraction()
            if arr.synthetic:
                sizes = "generated"
            else:
                c = Counter(f"{h}x{w}" for h, w in np.asarray(arr.info["source_hw"]).tolist())
                sizes = ", ".join(f"{k} ({v})" for k, v in c.most_common(2)) + (f", +{len(c) - 2} more"
                                                                                 if len(c) > 2 else "")
            rows.append({"dataset": name, "synthetic": bool(arr.synthetic), "split": split, "n": len(arr),
                         "source_sizes": sizes, "lesion_mean": float(lf.mean()),
                         "lesion_std": float(lf.std(ddof=1)) if len(lf) > 1 else 0.0,
                         "lesion_min": float(lf.min()), "lesion_max": float(lf.max()),
                         "split_source": arr.info.get("split_source", ""), "size": args.size,
                         "protocol": args.protocol})
            sources.setdefault(name, arr.info.get("split_source", ""))
            if timing is not None and split == "train":
                if arr.synthetic:
                    cache = "none (generated)"
                    cache_s = f"{arr.info['seconds']:.2f}"
                elif arr.info["cache_built"]:
                    cache = f"built: {Path(arr.info['cache']).name}"
                    cache_s = f"{arr.info['cache_seconds']:.2f}"
                else:
                    cache = f"reused: {Path(arr.info['cache']).name}"
                    cache_s = f"{arr.info['cache_seconds']:.3f}"
                raw = _epoch_throughput(arr, args.batch_size, augment=False)
                aug = _epoch_throughput(arr, args.batch_size, augment=True)
                timing.add_row(name, cache, cache_s, f"{load_s:.2f}", f"{raw:,.0f}", f"{aug:,.0f}")
    if args.format != "table":
        _cli.emit(rows, SUMMARY_COLUMNS, args.format)
        return 0
    out.print(_summary_table(rows, args))
    for name, src in sources.items():
        if src:
            out.print(f"{name} split lists: {src}")
    if timing is not None:
        out.print(timing)
        out.print(f"epoch = one pass over the train split in shuffled batches of {args.batch_size}; "
                  f"torch threads {_threads()}")
    return 0


SUMMARY_COLUMNS = ("dataset", "synthetic", "protocol", "size", "split", "n", "source_sizes", "lesion_mean",
                   "lesion_std", "lesion_min", "lesion_max", "split_source")


def _summary_table(rows: list[dict], args) -> Table:
    table = Table(title=f"datasets at {args.size}x{args.size}, protocol {args.protocol}", box=box.SIMPLE_HEAD,
                  pad_edge=False, title_justify="left")
    table.add_column("dataset", overflow="fold")
    table.add_column("split", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("source sizes (HxW)", overflow="fold")
    table.add_column("lesion fraction\nmean ± std", no_wrap=True)
    table.add_column("min / max", no_wrap=True)
    for r in rows:
        synth = r["synthetic"] and r["dataset"] != "synthetic"
        table.add_row(r["dataset"] + (" (synthetic)" if synth else ""), r["split"], str(r["n"]),
                      r["source_sizes"], f"{r['lesion_mean']:.3f} ± {r['lesion_std']:.3f}",
                      f"{r['lesion_min']:.3f} / {r['lesion_max']:.3f}")
    return table


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _progress(name: str):
    err = _out(stderr=True)
    if not err.is_terminal:
        return None
    state = {"t": 0.0}

    def cb(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - state["t"] > 0.5:
            state["t"] = now
            err.print(f"building cache for {name}: {done}/{total}", end="\r")
            if done == total:
                err.print()
    return cb


# --------------------------------------------------------------------------- check

def check_dataset(dataset: str, base: Path, decode: bool = True) -> tuple[list[Problem], dict]:
    """Every problem of one dataset folder (listing, then decoding each pair). Returns problems and counts."""
    disc = discover(dataset, base)
    problems = list(disc.problems)
    pairs = disc.pairs()
    if decode:
        for p in pairs:
            try:
                _, _, _, nonbin = read_pair(p.image, p.mask, None, warn=False)
            except DataError as e:
                problems.append(Problem(e.path or str(p.image), str(e)))
                continue
            if nonbin:
                problems.append(Problem(str(p.mask), f"{p.mask}: mask is not binary ({nonbin} pixels not 0/255); "
                                                     f"it will be thresholded at 128", "warning"))
    counts = {part: len(v) for part, v in disc.parts.items()}
    return problems, {"counts": counts, "notes": disc.notes}


def cmd_check(args) -> int:
    out = _out()
    target = args.target
    try:
        name = normalise_dataset(target)
    except ValueError:
        name = None
    if name == "synthetic":
        out.print("synthetic: generated on demand, nothing to check")
        return 0
    if name is not None and not Path(target).exists():
        base = dataset_dir(name, args.data_root, args.cache_dir)
        if base is None:
            raise DataError(f"{args.data_root or data_root()}: dataset {name} not found; pass --data-root or a path",
                            args.data_root)
        found = [(name, base)]
    else:
        found = detect(target)
    n_err = 0
    for name, base in found:
        t0 = time.perf_counter()
        problems, facts = check_dataset(name, base, decode=not args.quick)
        errors = [p for p in problems if p.severity == "error"]
        n_err += len(errors)
        counts = ", ".join(f"{k} {v}" for k, v in facts["counts"].items())
        status = "OK" if not errors else f"{len(errors)} error(s)"
        out.print(f"{name} at {base}: pairs {counts or 'none'}; {status}, "
                  f"{len(problems) - len(errors)} warning(s) ({time.perf_counter() - t0:.1f} s"
                  f"{', listing only' if args.quick else ''})", soft_wrap=True)
        for note in facts["notes"]:
            out.print(f"  note: {note}")
        for k, p in enumerate(problems, 1):  # one line each (grep-able, never wrapped)
            out.print(f"  {k:>4}. {p.severity}: {p.message}", soft_wrap=True)
    return 2 if n_err else 0


# --------------------------------------------------------------------------- prepare

def _zip_member_target(dataset: str, member: str) -> PurePosixPath | None:
    """Where a zip member goes inside the dataset folder, or None if it belongs to no known folder."""
    lay = LAYOUTS[dataset]
    parts = PurePosixPath(member).parts
    if lay.kind == "ph2":
        if PH2_IMAGES_DIR in parts:
            k = parts.index(PH2_IMAGES_DIR)
            return PurePosixPath(*parts[k:])
        return None
    folders = {f for s in lay.parts for f in (s.images, s.masks)}
    for k, comp in enumerate(parts):
        if comp in folders:
            return PurePosixPath(*parts[k:])
    # a flat zip (files at the top) named like its folder, e.g. ISIC2018_Task1-2_Training_Input.zip
    return None


def _extract_zips(dataset: str, zips: list[Path], staging: Path) -> int:
    lay = LAYOUTS[dataset]
    dest_root = staging / lay.dirnames[0]
    n = 0
    for z in zips:
        try:
            zf = zipfile.ZipFile(z)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{z}: not a readable zip archive ({e}); re-download it", z) from None
        folders = {f for s in lay.parts for f in (s.images, s.masks)}
        with zf:
            for info in zf.infolist():
                name = info.filename
                pp = PurePosixPath(name)
                if pp.is_absolute() or ".." in pp.parts:
                    raise DataError(f"{z}: unsafe member path {name!r} (absolute or '..'); use the official archive",
                                    z)
                if info.is_dir() or "__MACOSX" in pp.parts:
                    continue
                rel = _zip_member_target(dataset, name)
                if rel is None and z.stem in folders and len(pp.parts) == 1:
                    rel = PurePosixPath(z.stem, pp.name)
                if rel is None:
                    continue
                out = dest_root / Path(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise DataError(f"{z}: member {name} cannot be extracted ({e}); the archive is damaged: "
                                    f"re-download it", z) from None
                n += 1
    if n == 0:
        raise DataError(f"{zips[0]}: no files of a {lay.title} folder found in the archive(s) (expected folders "
                        f"like {lay.parts[0].images}); check --dataset and the archive", zips[0])
    return n


def cmd_prepare(args) -> int:
    out = _out()
    dataset = normalise_dataset(args.dataset)
    if dataset == "synthetic":
        out.print("synthetic needs no preparation")
        return 0
    sources = [Path(s) for s in args.sources]
    for s in sources:
        if not s.exists():
            raise DataError(f"{s}: no such file or folder; give an official zip or a dataset folder", s)
    zips = [s for s in sources if s.is_file()]
    folders = [s for s in sources if s.is_dir()]
    if zips and folders or len(folders) > 1:
        raise DataError(f"{sources[0]}: give either the official zip(s) of one dataset or one folder, not a mix; "
                        f"run prepare once per dataset", sources[0])
    cache_root = dcache.cache_root(args.cache_dir)
    dcache.clean_stale(args.cache_dir)  # staging folders of imports killed outright
    if folders:
        base = locate(dataset, folders[0])
        if base is None:
            raise DataError(f"{folders[0]}: no {LAYOUTS[dataset].title} layout found (expected "
                            f"{LAYOUTS[dataset].dirnames[0]}/{LAYOUTS[dataset].parts[0].images}); check the folder "
                            f"and --dataset", folders[0])
        _validate_or_raise(dataset, base)
        target = base
    else:
        sources_dir = cache_root / "sources"
        sources_dir.mkdir(parents=True, exist_ok=True)
        staging = sources_dir / f".tmp-{dataset}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            n = _extract_zips(dataset, zips, staging)
            staged = staging / LAYOUTS[dataset].dirnames[0]
            _validate_or_raise(dataset, staged)
            target = sources_dir / LAYOUTS[dataset].dirnames[0]
            old = None
            if target.exists():
                old = sources_dir / f".old-{dataset}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
            os.replace(staged, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        out.print(f"extracted {n} files into {target}")
    disc = discover(dataset, target)
    t0 = time.perf_counter()
    entry = dcache.get_or_build(dataset, target, disc.pairs(), (args.size, args.size), args.cache_dir,
                                _progress(dataset))
    verb = "built" if entry.built else "already present"
    out.print(f"{dataset}: {len(entry.ids)} pairs ({', '.join(f'{k} {len(v)}' for k, v in disc.parts.items())}); "
              f"cache {verb} at {entry.path} ({time.perf_counter() - t0:.1f} s)")
    if folders:
        out.print(f"load it with root={target.parent} (or EGEUNET_DATA={target.parent} / --data-root)")
    else:
        out.print("loaders find it there when the data root does not hold this dataset")
    return 0


def _validate_or_raise(dataset: str, base: Path) -> None:
    problems, _ = check_dataset(dataset, base, decode=True)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "warning":
            _out(stderr=True).print(f"warning: {p.message}")
    if errors:
        more = (f" (and {len(errors) - 1} more problem(s): run `python -m studies.data check {base}` to list them)"
                if len(errors) > 1 else "")
        raise DataError(errors[0].message + more, errors[0].path)


# --------------------------------------------------------------------------- main

EPILOG = f"""\
commands:
  summary   counts, source sizes and lesion fractions per split; --timing adds
            the cache build/open time and the epoch load throughput
  check     validate a dataset folder (or a name, or a data root): list EVERY
            problem, decoding every file
  prepare   import official zips (into <cache>/sources) or a folder, validate,
            build the preprocessing cache at --size

examples:
  python -m studies.data summary --dataset synthetic --size 64
  python -m studies.data check ../shared/data/ISIC2018
  python -m studies.data prepare --dataset isic2018 \\
      --from ISIC2018_Task1-2_Training_Input.zip \\
      --from ISIC2018_Task1_Training_GroundTruth.zip

Data root: --data-root, else $EGEUNET_DATA, else ../shared/data beside the
checkout. Cache: --cache-dir, else $EGEUNET_CACHE, else ~/.cache/egeunet.
{_cli.EXIT_LINE}
"""


def build_parser() -> argparse.ArgumentParser:
    ap = _cli.parser(PROG, "Inspect, validate and import datasets.", epilog=EPILOG)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{summary,check,prepare}")
    fmt = {"formatter_class": _cli.WrappingHelpFormatter}

    def common(p):
        p.add_argument("--data-root", default=None, help="folder holding ISIC2018/, ISIC2017/, PH2Dataset/ "
                                                         "(default: $EGEUNET_DATA, else ../shared/data)")
        p.add_argument("--cache-dir", default=None, help="preprocessing cache (default: $EGEUNET_CACHE, else "
                                                         "~/.cache/egeunet)")

    s = sub.add_parser("summary", help="counts, sizes and lesion-fraction statistics per split", **fmt,
                       description="Per split: image count, source sizes, lesion fraction (mean ± sample std, "
                                   "min/max) at the training size, and where the split lists come from. Builds the "
                                   "preprocessing cache on first use.")
    s.add_argument("--dataset", action="append", help="dataset (repeatable; default: every available one): "
                                                      "isic2018, isic2017, ph2, synthetic")
    s.add_argument("--protocol", default="clean", choices=["clean", "paper"],
                   help="split protocol (paper: 7:3 train/test, val = test)")
    s.add_argument("--size", type=int, default=256, help="training size (square), default 256")
    s.add_argument("--timing", action="store_true",
                   help="print cache build/open time and epoch load throughput (run twice to see the cache reused)")
    s.add_argument("--batch-size", type=int, default=8, help="batch size of the timed epoch (default 8)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads for the timed epoch (default: "
                                                              "torch's default)")
    _cli.add_format(s)
    common(s)
    s.set_defaults(func=cmd_summary)

    c = sub.add_parser("check", help="validate a dataset folder and list every problem", **fmt,
                       description="Validate a dataset folder, a data root holding several, or a dataset name "
                                   "(resolved under --data-root). Lists every problem: missing/extra/duplicate "
                                   "files, unpaired images or masks, empty, unreadable, truncated or corrupt files, "
                                   "size mismatches, colour or non-binary masks. Exit 2 if any error.")
    c.add_argument("target", metavar="PATH_OR_DATASET")
    c.add_argument("--quick", action="store_true", help="list files only, do not decode")
    common(c)
    c.set_defaults(func=cmd_check)

    p = sub.add_parser("prepare", help="import official zips or a folder, validate, build the cache", **fmt,
                       description="Zips (give every archive of the dataset in one call, e.g. the image and the "
                                   "ground-truth zip) are extracted into <cache>/sources/<Dataset>/ and validated "
                                   "before they replace any previous import; a folder is validated in place. Then "
                                   "the preprocessing cache is built at --size. PH2 is distributed as .rar: extract "
                                   "it and give the folder.")
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="ZIP_OR_FOLDER",
                   help="official zip (repeatable) or dataset folder")
    p.add_argument("--dataset", required=True, help="isic2018, isic2017 or ph2")
    p.add_argument("--size", type=int, default=256, help="training size for the cache (default 256)")
    common(p)
    p.set_defaults(func=cmd_prepare)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return _cli.guard(PROG, lambda: args.func(args), ValueError)  # ValueError: unknown dataset / protocol names


if __name__ == "__main__":
    sys.exit(main())
