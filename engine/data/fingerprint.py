"""Data identity: a short hash of the data a run actually uses, part of every run's config hash.

The fingerprint of a real dataset covers the split lists of the protocol (which ids land in which split) and a
manifest of every discovered image/mask pair: part, id, both relative paths, byte sizes and SHA-256 of the
contents. Two folders with the same file names but different bytes (a broken copy, re-encoded images, another
mask threshold) therefore give two run identities, and a results folder keeps both runs side by side.

Content hashes are cached per file in ``<cache>/fingerprints/<dataset>-<folder hash>.json``, keyed by
(relative path, size, ``mtime_ns``): only new or touched files are read again. The synthetic dataset's identity
is its generator version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import cache as _cache
from . import folder as _folder
from . import synthetic as _synthetic
from .errors import DataError
from .layouts import Pair, discover
from .loader import _not_found, dataset_dir, normalise_dataset
from .splits import normalise_protocol, split_ids

__all__ = ["DataFingerprint", "data_fingerprint", "pairs_fingerprint", "FINGERPRINT_FORMAT"]

FINGERPRINT_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFingerprint:
    """``id``: 16 hex digits (what the config hash covers); ``root``: the folder read; ``pairs``: pairs listed."""

    id: str
    dataset: str
    protocol: str
    root: str | None
    pairs: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file and run again", path) from None
    return h.hexdigest()


def _cache_file(dataset: str, base: Path, cache_dir: str | os.PathLike | None) -> Path:
    tag = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:12]
    return _cache.cache_root(cache_dir) / "fingerprints" / f"{dataset}-{tag}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FINGERPRINT_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def data_fingerprint(dataset: str, protocol: str = "clean", root: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> DataFingerprint:
    """The identity of ``dataset`` under ``protocol`` as found under ``root`` (default: the usual data root).

    ``folder:PATH``: the folder's split lists and pair manifest (the folder's split lists are written on first
    use, see :mod:`engine.data.folder`); the tag hashed is ``folder``, so the id follows the content, not the
    path (the run config names the path)."""
    protocol = normalise_protocol(protocol)
    if _folder.is_folder_name(dataset):
        base = _folder.folder_path(dataset)
        disc = _folder.discover_folder(base)
        _folder.raise_folder_errors(disc)
        part_ids = {p: [x.id for x in pairs] for p, pairs in disc.parts.items()}
        lists, _, _ = _folder.folder_split_ids(base, protocol, part_ids, 0)
        digest = _digest("folder", protocol, base, disc.pairs(), lists, _cache_file(_folder.folder_tag(base), base,
                                                                                     cache_dir))
        return DataFingerprint(digest, _folder.canonical_name(dataset), protocol, str(base), len(disc.pairs()))
    dataset = normalise_dataset(dataset)
    if dataset == "synthetic":
        digest = hashlib.sha256(f"synthetic:{_synthetic.GENERATOR_VERSION}".encode()).hexdigest()[:16]
        return DataFingerprint(digest, dataset, protocol, None, 0)
    base = dataset_dir(dataset, root, cache_dir)
    if base is None:
        raise _not_found(dataset, root, cache_dir)
    disc = discover(dataset, base)
    disc.raise_if_errors()
    part_ids = {p: [x.id for x in pairs] for p, pairs in disc.parts.items()}
    lists, _, _ = split_ids(dataset, protocol, part_ids, 0, base)
    digest = _digest(dataset, protocol, base, disc.pairs(), lists, _cache_file(dataset, base, cache_dir))
    return DataFingerprint(digest, dataset, protocol, str(base), len(disc.pairs()))


def pairs_fingerprint(dataset: str, root: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None) -> DataFingerprint:
    """The identity of every pair of a real dataset (no split lists; ``protocol`` is ``all``): what an
    evaluation on ``split="all"`` saw. Reads and writes no split list."""
    from .loader import discover_dataset

    folder = _folder.is_folder_name(dataset)
    name = _folder.canonical_name(dataset) if folder else normalise_dataset(dataset)
    if name == "synthetic":
        raise ValueError("synthetic data has no pairs to fingerprint; use data_fingerprint('synthetic')")
    base = dataset_dir(name, root, cache_dir)
    if base is None:
        raise _not_found(name, root, cache_dir)
    disc, _ = discover_dataset(name, base)
    tag = "folder" if folder else name
    cfile = _cache_file(_folder.folder_tag(base) if folder else name, base, cache_dir)
    return DataFingerprint(_digest(tag, "all", base, disc.pairs(), None, cfile), name, "all", str(base),
                           len(disc.pairs()))


def _digest(tag: str, protocol: str, base: Path, listed: list[Pair], lists: dict | None, cpath: Path) -> str:
    """16 hex digits over (format, tag, protocol), the split lists (when given) and every pair's part, id,
    relative paths, sizes and SHA-256; content hashes are cached in ``cpath``."""
    known = _load_cache(cpath)
    fresh: dict[str, list] = {}
    h = hashlib.sha256()
    h.update(json.dumps({"format": FINGERPRINT_FORMAT, "dataset": tag, "protocol": protocol}).encode())
    for split in sorted(lists or {}):
        h.update(json.dumps([split, [list(x) for x in lists[split]]]).encode())
    pairs: list[Pair] = sorted(listed, key=lambda p: (p.part, p.id))
    for p in pairs:
        row: list = [p.part, p.id]
        for f in (p.image, p.mask):
            rel = _rel(f, base)
            try:
                st = os.stat(f)
            except OSError as e:
                raise DataError(f"{f}: cannot stat ({e.strerror or e}); check the file and run again", f) from None
            hit = known.get(rel)
            if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                digest = hit[2]
            else:
                digest = _sha256_file(Path(f))
            fresh[rel] = [st.st_size, st.st_mtime_ns, digest]
            row += [rel, st.st_size, digest]
        h.update(json.dumps(row).encode())
    if fresh != known:
        try:
            _write_cache(cpath, {"format": FINGERPRINT_FORMAT, "root": str(base), "files": fresh})
        except OSError:
            pass  # a read-only cache only costs the hashing next time
    return h.hexdigest()[:16]
