"""Preprocessing cache: decode + resize every pair of a dataset once, into memory-mappable uint8 ``.npy`` arrays.

Location: ``cache_dir`` argument, else ``$EGEUNET_CACHE``, else ``~/.cache/egeunet``; entries live in
``<cache>/data/<dataset>_<H>x<W>_<key16>/`` holding ``images.npy`` (N x H x W x 3 uint8), ``masks.npy``
(N x H x W uint8 in {0,1}), ``source_hw.npy`` (N x 2 int32, the source height/width), ``ids.txt`` and
``meta.json``. Rows follow the order the loader gives: the ``clean`` protocol's seed-0 train, val and test lists,
then any other pair, so that those splits are zero-copy slices of the memory map (other splits are copied).

Key: SHA-256 of (format version, dataset, target size, resize rule, and for every pair: part, id, both relative
paths, byte sizes and ``mtime_ns``). Any added, removed, replaced or touched source file gives a new key, hence a
rebuild; otherwise the entry is reused, and reading it never decodes an image (``np.load(mmap_mode='r')``).
Old entries are not deleted automatically (remove ``<cache>/data`` to reclaim space).

Concurrency: builders take a file lock (``<entry>.lock``); the arrays are written into a temporary folder in the
same directory, ``meta.json`` last, and the folder is moved into place with ``os.replace`` — so an entry is either
complete or absent, and a failed or interrupted build leaves nothing behind. A second process waiting on the lock
finds the finished entry and reuses it. A builder killed outright (SIGKILL) cannot clean up: its temporary folder
``.tmp-<entry>-<pid>-<hex8>`` is removed by the next build in that cache (:func:`clean_stale`) once no process
with that pid is alive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from .decode import RESIZE_RULE, read_pair
from .errors import DataError, DataWarning
from .layouts import Pair

FORMAT_VERSION = 1

#: process-wide counters, for tests and ``--timing``: how many entries this process built / reused.
STATS = {"built": 0, "reused": 0}


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("EGEUNET_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "egeunet"


_TMP_DIR = re.compile(r"^\.tmp-.+-(\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return pid > 0


def clean_stale(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove temporary build folders of dead builders (``.tmp-<name>-<pid>-<hex8>``, no process of that pid
    alive on this machine, untouched for a minute) under the cache's ``data/`` and ``sources/`` folders;
    returns the folders removed."""
    removed: list[Path] = []
    root = cache_root(cache_dir)
    for sub in ("data", "sources"):
        try:
            entries = list((root / sub).glob(".tmp-*"))
        except OSError:
            continue
        for d in entries:
            m = _TMP_DIR.match(d.name)
            try:
                young = time.time() - d.lstat().st_mtime < 60
            except OSError:
                continue
            if m and not young and not _pid_alive(int(m.group(1))):
                shutil.rmtree(d, ignore_errors=True)
                if not d.exists():
                    removed.append(d)
    return removed


@dataclass
class CacheEntry:
    path: Path
    key: str
    images: np.ndarray  # memmap, N x H x W x 3
    masks: np.ndarray  # memmap, N x H x W
    source_hw: np.ndarray
    ids: tuple[str, ...]
    parts: tuple[str, ...]
    meta: dict
    built: bool  # built by this call
    seconds: float  # build time (built) or open time (reused)

    def index(self) -> dict[tuple[str, str], int]:
        return {(p, i): k for k, (p, i) in enumerate(zip(self.parts, self.ids))}


def source_key(dataset: str, base: Path, pairs: list[Pair], size_hw: tuple[int, int]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "dataset": dataset, "size": list(size_hw),
                         "resize": RESIZE_RULE}, sort_keys=True).encode())
    for p in pairs:
        row = [p.part, p.id]
        stats = p.stat
        if stats is None:
            stats = ()
            for f in (p.image, p.mask):
                try:
                    st = os.stat(f)
                except OSError as e:
                    raise DataError(f"{f}: cannot stat ({e.strerror or e}); check the file and run again",
                                    f) from None
                stats += (st.st_size, st.st_mtime_ns)
        for f, size, mtime in ((p.image, stats[0], stats[1]), (p.mask, stats[2], stats[3])):
            try:
                rel = str(Path(f).relative_to(base))
            except ValueError:
                rel = str(f)
            row += [rel, size, mtime]
        h.update(json.dumps(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def _open_entry(path: Path, key: str, built: bool, t0: float) -> CacheEntry:
    meta = json.loads((path / "meta.json").read_text())
    ids_lines = (path / "ids.txt").read_text().splitlines()
    parts, ids = zip(*(ln.split("\t") for ln in ids_lines)) if ids_lines else ((), ())
    return CacheEntry(
        path=path, key=key,
        images=np.load(path / "images.npy", mmap_mode="r"),
        masks=np.load(path / "masks.npy", mmap_mode="r"),
        source_hw=np.load(path / "source_hw.npy", mmap_mode="r"),
        ids=tuple(ids), parts=tuple(parts), meta=meta, built=built,
        seconds=meta.get("build_seconds", 0.0) if built else time.perf_counter() - t0,
    )


def get_or_build(dataset: str, base: Path, pairs: list[Pair], size_hw: tuple[int, int],
                 cache_dir: str | os.PathLike | None = None, progress=None) -> CacheEntry:
    """The cache entry for these pairs at this size, built if absent. ``progress(done, total)`` is optional."""
    t0 = time.perf_counter()
    if not pairs:
        raise DataError(f"{base}: no image/mask pairs to cache; check the folder with `python -m studies.data check "
                        f"{base}`", base)
    key = source_key(dataset, base, pairs, size_hw)
    root = cache_root(cache_dir) / "data"
    name = f"{dataset}_{size_hw[0]}x{size_hw[1]}_{key[:16]}"
    entry = root / name
    if (entry / "meta.json").is_file():
        STATS["reused"] += 1
        return _open_entry(entry, key, False, t0)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the cache folder ({e.strerror or e}); set EGEUNET_CACHE or pass "
                        f"--cache-dir to a writable folder", root) from None
    with FileLock(str(root / f"{name}.lock")):
        if (entry / "meta.json").is_file():  # another process built it while we waited
            STATS["reused"] += 1
            return _open_entry(entry, key, False, t0)
        clean_stale(cache_dir)  # folders of builders killed before they could clean up
        tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _build(tmp, dataset, base, pairs, size_hw, key, t0, progress)
            if entry.exists() and not (entry / "meta.json").is_file():
                shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (edited by hand): replace it
            try:
                os.replace(tmp, entry)
            except OSError:
                if not (entry / "meta.json").is_file():
                    raise
                # a builder that did not honour the lock finished first: keep its entry
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    STATS["built"] += 1
    return _open_entry(entry, key, True, t0)


def _build(tmp: Path, dataset: str, base: Path, pairs: list[Pair], size_hw: tuple[int, int], key: str,
           t0: float, progress) -> None:
    n, (h, w) = len(pairs), size_hw
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
    masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, h, w))
    src = np.zeros((n, 2), dtype=np.int32)
    nonbinary: list[tuple[str, int]] = []
    for k, p in enumerate(pairs):
        img, msk, src_hw, nb = read_pair(p.image, p.mask, size_hw, warn=False)
        images[k] = img
        masks[k] = msk
        src[k] = src_hw
        if nb:
            nonbinary.append((str(p.mask), nb))
        if progress is not None:
            progress(k + 1, n)
    images.flush()
    masks.flush()
    del images, masks
    np.save(tmp / "source_hw.npy", src)
    (tmp / "ids.txt").write_text("".join(f"{p.part}\t{p.id}\n" for p in pairs))
    if nonbinary:
        first = ", ".join(f"{f} ({c} px)" for f, c in nonbinary[:3])
        warnings.warn(f"{len(nonbinary)} mask(s) of {dataset} were not binary ({sum(c for _, c in nonbinary)} "
                      f"non-binary pixels in all), thresholded at 128: {first}"
                      f"{' ...' if len(nonbinary) > 3 else ''}", DataWarning, stacklevel=3)
    meta = {
        "format": FORMAT_VERSION, "dataset": dataset, "key": key, "size": [h, w], "resize": RESIZE_RULE,
        "n": n, "source": str(base), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "nonbinary_masks": [[f, c] for f, c in nonbinary],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
