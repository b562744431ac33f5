"""``load_split``: one split of one dataset at the training size, from the preprocessing cache."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cache as _cache
from . import folder as _folder
from . import synthetic as _synthetic
from .errors import DataError
from .layouts import LAYOUTS, discover, locate
from .splits import committed, normalise_protocol, resolve_split, split_ids

DATASETS = ("isic2018", "isic2017", "ph2", "synthetic")
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SegArrays:
    """A split as arrays. ``images`` uint8 N x H x W x 3, ``masks`` uint8 N x H x W in {0, 1}, ``ids`` in order
    (for real data the cache-row order: sorted by id within each clean-protocol split, deterministic).

    ``split`` is the split actually served (under ``paper``, asking for ``val`` serves ``test`` and ``split`` says
    ``test``; ``info["requested_split"]`` keeps what was asked). Arrays are read-only (zero-copy memory maps of the
    cache when the split is a contiguous block of it, read-only copies otherwise); ``np.array(x)`` for a writable
    copy. ``synthetic`` is True for procedurally generated data: never report such results as lesion results.
    ``info``: data root, split source (committed lists / drawn / official folders), cache entry and whether this
    call built it, build/open seconds, source sizes (``source_hw`` N x 2) and notes.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: tuple[str, ...]
    dataset: str
    split: str
    protocol: str
    synthetic: bool = False
    info: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        n = len(self.ids)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x H x W x 3, got {self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != np.uint8:
            raise ValueError(f"masks must be uint8 N x H x W matching images, got {self.masks.dtype} "
                             f"{self.masks.shape}")
        if self.images.shape[0] != n:
            raise ValueError(f"{n} ids for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def lesion_fraction(self) -> np.ndarray:
        """Per-image fraction of lesion pixels (float64, N)."""
        out = np.empty(len(self), dtype=np.float64)
        for s in range(0, len(self), 256):
            out[s:s + 256] = self.masks[s:s + 256].reshape(min(256, len(self) - s), -1).mean(axis=1)
        return out


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """Explicit path, else ``$EGEUNET_DATA``, else ``../shared/data`` beside the checkout if it exists, else None."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("EGEUNET_DATA")
    if env:
        return Path(env).expanduser()
    beside = _REPO_ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else None


def normalise_dataset(name: str) -> str:
    d = str(name).lower().replace("-", "").replace("_", "")
    if d not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return d


def is_dataset_name(name: object) -> bool:
    """True for a name :func:`load_split` accepts: a known dataset (any case, ``-``/``_`` ignored) or
    ``folder:PATH`` (whether or not the folder exists: see :func:`dataset_available`)."""
    if _folder.is_folder_name(name):
        return True
    try:
        normalise_dataset(str(name))
    except ValueError:
        return False
    return True


def canonical_dataset(name: str) -> str:
    """The stored form of a dataset name: ``isic2018`` ..., or ``folder:<absolute path>``; ValueError if unknown."""
    if _folder.is_folder_name(name):
        return _folder.canonical_name(name)
    return normalise_dataset(name)


def dataset_dir(dataset: str, root=None, cache_dir=None) -> Path | None:
    """Where ``dataset``'s files are: under ``root`` if given; else under :func:`data_root`, then under
    ``<cache>/sources`` (filled by ``python -m studies.data prepare``). None if not found.
    A ``folder:PATH`` dataset is PATH itself (``root`` does not apply)."""
    if _folder.is_folder_name(dataset):
        path = _folder.folder_path(dataset)
        return path if path.is_dir() else None
    dataset = normalise_dataset(dataset)
    if root is not None:
        return locate(dataset, root)
    found = locate(dataset, data_root())
    if found is None:
        found = locate(dataset, _cache.cache_root(cache_dir) / "sources")
    return found


def dataset_available(dataset: str, root=None, cache_dir=None) -> bool:
    """True when the dataset's folder is present (listing only; ``synthetic`` always)."""
    if _folder.is_folder_name(dataset):
        return dataset_dir(dataset) is not None
    if normalise_dataset(dataset) == "synthetic":
        return True
    return dataset_dir(dataset, root, cache_dir) is not None


def list_datasets(available_only: bool = False, root=None, cache_dir=None) -> list[str]:
    """The dataset names ``load_split`` knows (or, with ``available_only``, those present)."""
    return [d for d in DATASETS if not available_only or dataset_available(d, root, cache_dir)]


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be an int or (height, width) of positive ints, got {size!r}")
    return hw  # type: ignore[return-value]


def _take(arr: np.ndarray, rows: list[int]) -> np.ndarray:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return arr[rows[0]:rows[0] + len(rows)]  # zero-copy view of the memory map
    out = arr[np.asarray(rows, dtype=np.int64)] if rows else arr[:0].copy()
    out.setflags(write=False)
    return out


def _not_found(dataset: str, root, cache_dir) -> DataError:
    if _folder.is_folder_name(dataset):
        path = _folder.folder_path(dataset)
        return DataError(f"{path}: no such folder (dataset {dataset}); check the path ({_folder.LAYOUT_HINT})", path)
    lay = LAYOUTS[dataset]
    where = Path(root) if root is not None else data_root()
    spec = lay.parts[0]
    hint = f"{lay.dirnames[0]}/{spec.images}"
    msg = (f"{where if where is not None else '<no data root>'}: dataset {dataset} not found (expected {hint}); "
           f"set EGEUNET_DATA or pass root=/--data-root, or import it with `python -m studies.data prepare --from "
           f"<official zip> --dataset {dataset}`")
    return DataError(msg, where)


def _cache_order(dataset: str, disc, part_ids) -> list:
    """Rows of the cache: the clean-protocol seed-0 train, val and test lists, then every other pair, so that
    those splits (and the paper train split, which equals clean train) are zero-copy views of the cache."""
    pairs = disc.pairs()
    try:
        if _folder.is_folder_name(dataset):
            lists, _, _ = _folder.folder_split_ids(disc.base, "clean", part_ids, 0, write=False)
        else:
            lists, _, _ = split_ids(dataset, "clean", part_ids, 0)
    except DataError:
        return pairs
    by_key = {(p.part, p.id): p for p in pairs}
    ordered = [by_key[k] for s in ("train", "val", "test") for k in lists.get(s, [])]
    used = {(p.part, p.id) for p in ordered}
    return ordered + [p for p in pairs if (p.part, p.id) not in used]


def discover_dataset(dataset: str, base: Path):
    """(discovery, part -> ids) of a real dataset's folder; the first problem raises one-line DataError."""
    if _folder.is_folder_name(dataset):
        disc = _folder.discover_folder(base)
        _folder.raise_folder_errors(disc)
    else:
        disc = discover(dataset, base)
        disc.raise_if_errors()
    return disc, {p: [x.id for x in pairs] for p, pairs in disc.parts.items()}


def split_id_lists(dataset: str, protocol: str = "clean", *, root=None, cache_dir=None) -> dict[str, list[str]]:
    """split -> ids of a dataset under ``protocol`` (seed 0), listing only: no decoding, nothing written.

    ISIC datasets whose folder is absent fall back to their committed lists; ``synthetic`` gives {}.
    Raises DataError when a folder is absent or bad (and, for ISIC, no lists are committed)."""
    protocol = normalise_protocol(protocol)
    if _folder.is_folder_name(dataset):
        base = dataset_dir(dataset)
        if base is None:
            raise _not_found(dataset, root, cache_dir)
        disc, part_ids = discover_dataset(dataset, base)
        lists, _, _ = _folder.folder_split_ids(base, protocol, part_ids, 0, write=False)
        return {s: [i for _, i in v] for s, v in lists.items()}
    dataset = normalise_dataset(dataset)
    if dataset == "synthetic":
        return {}
    base = dataset_dir(dataset, root, cache_dir)
    if base is None:
        fixed = committed(dataset, protocol)
        if fixed is not None:
            return fixed
        raise _not_found(dataset, root, cache_dir)
    disc, part_ids = discover_dataset(dataset, base)
    lists, _, _ = split_ids(dataset, protocol, part_ids, 0, base)
    return {s: [i for _, i in v] for s, v in lists.items()}


def load_split(dataset: str, split: str, *, protocol: str = "clean", size=256, root=None, cache_dir=None,
               seed: int = 0, n: int | None = None, progress=None) -> SegArrays:
    """One split as :class:`SegArrays` at ``size`` (int or (H, W)).

    dataset: ``isic2018`` | ``isic2017`` | ``ph2`` | ``synthetic`` | ``folder:PATH`` (:mod:`engine.data.folder`);
    split: ``train`` | ``val`` | ``test`` (and ``official_val`` / ``official_test`` for ISIC 2018 when those
    folders are present; ``all``: every pair of a real dataset, in cache order); protocol: ``clean`` |
    ``paper`` (alias ``official``) -- under ``paper``, ``val`` is the test set. ``seed``: the synthetic generator's
    seed; for real data 0 selects the committed split lists and other values draw new lists with the same rule
    (ISIC 2017 ``clean`` always uses the official folders). ``n``: keep the first ``n`` images of the split
    (synthetic: generate ``n``; default train 64 / val 16 / test 32). The first call for a dataset and size
    builds the preprocessing cache (see :mod:`engine.data.cache`); later calls only list, stat and memory-map.
    """
    t0 = time.perf_counter()
    folder = _folder.is_folder_name(dataset)
    dataset = canonical_dataset(dataset)
    protocol = normalise_protocol(protocol)
    requested = str(split).lower()
    split = resolve_split(protocol, requested)
    size_hw = _size_hw(size)
    info: dict = {"requested_split": requested, "size": size_hw}
    if dataset == "synthetic":
        if split not in _synthetic.SPLIT_CODES:
            raise ValueError(f"synthetic has splits train/val/test, not {requested!r}")
        images, masks, ids = _synthetic.make_split(split, n, size_hw, seed)
        images.setflags(write=False)
        masks.setflags(write=False)
        info.update(split_source=f"generated (seed {seed})", seconds=time.perf_counter() - t0)
        return SegArrays(images, masks, ids, dataset, split, protocol, True, info)

    base = dataset_dir(dataset, root, cache_dir)
    if base is None:
        raise _not_found(dataset, root, cache_dir)
    disc, part_ids = discover_dataset(dataset, base)
    if split == "all":  # every pair (external evaluation): no split list is read or written
        lists, source, notes = {"all": [(p.part, p.id) for p in disc.pairs()]}, "every pair of the folder", []
    elif folder:
        lists, source, notes = _folder.folder_split_ids(base, protocol, part_ids, seed)
    else:
        lists, source, notes = split_ids(dataset, protocol, part_ids, seed, base)
    if split not in lists:
        avail = ", ".join(sorted(lists))
        raise DataError(f"{base}: {dataset} has no split {requested!r} under protocol {protocol} (available: {avail}); "
                        f"choose one of those", base)
    if folder and not lists[split]:
        raise DataError(f"{base}: the {protocol} '{split}' split of this folder dataset is empty ({len(disc.pairs())} "
                        f"pair(s)); add pairs (clean needs at least 5, paper 2) or edit {base / _folder.SPLITS_DIR}",
                        base)
    tag = _folder.folder_tag(base) if folder else dataset
    entry = _cache.get_or_build(tag, base, _cache_order(dataset, disc, part_ids), size_hw, cache_dir, progress)
    index = entry.index()
    # in cache-row order (deterministic): contiguous row sets become zero-copy views, others read sequentially
    wanted = sorted(lists[split], key=index.__getitem__)
    if n is not None:
        wanted = wanted[:n]
    rows = [index[pi] for pi in wanted]
    info.update(
        root=str(base), split_source=source, cache=str(entry.path), cache_key=entry.key,
        cache_built=entry.built, cache_seconds=entry.seconds, notes=disc.notes + notes,
        source_hw=_take(entry.source_hw, rows), seconds=time.perf_counter() - t0,
    )
    if protocol == "paper" and requested == "val":
        info["notes"] = info["notes"] + ["paper protocol: no validation split; 'val' is the test set"]
    return SegArrays(_take(entry.images, rows), _take(entry.masks, rows), tuple(i for _, i in wanted), dataset,
                     split, protocol, False, info)
