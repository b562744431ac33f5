"""Any folder of image/mask pairs as a dataset, named ``folder:PATH``: the one owner of that layout.

Layout (``PATH`` may be relative; the dataset name keeps its absolute form)::

    PATH/images/<id>.jpg | .jpeg | .png | .bmp | .tif | .tiff       one image per id (any case of the extension)
    PATH/masks/<id>.png  | .bmp | .tif | .tiff | .gif               one mask per image, lossless, same width x height;
               <id>_segmentation.png, <id>_mask.png (same extensions) are accepted too
    PATH/splits/<protocol>_<split>.txt                              written here the first time (see below)

Mask rules (those of the ISIC loaders, :mod:`engine.data.decode`): 8-bit grey {0, 255} as is, {0, 1} read as a
label map, any other grey values thresholded at >= 128 with a warning; grey-coloured RGB/palette masks are
converted, colour masks, 16/32-bit float masks are errors; an image and its mask must have the same size at the
source (never resized to fit). JPEG masks are refused (lossy: convert them to PNG).

Bad data is what the ISIC loaders refuse, one line naming the file and what to do: an image without a mask, a
mask without an image, two files for one id, an unexpected file or folder, a file name that cannot be an id
(leading/trailing blank, ``#`` first, tab), an empty (0-byte), unreadable or dangling-link file, an empty
``images/`` or ``masks/`` folder, a missing folder; at decode time a truncated/corrupt file or a size mismatch.
Hidden files, ``Thumbs.db``, ``desktop.ini``, ``*.csv``, ``LICENSE.txt``, ``README.txt`` are ignored.

Splits: the rule of :mod:`engine.data.splits` with ``folder`` as the dataset tag (rank by
``sha256("egeunet-split|folder|<seed>|<id>")``; ``clean`` 70/10/20, ``paper`` 7:3), so they depend only on the
ids. The first time a split of the folder is asked for (seed 0), the lists of both protocols are written to
``PATH/splits/`` (all five files at once, atomically); from then on those files *are* the split, like the
committed ISIC lists: keep them with the data and commit them with the results. Edit them to fix a split of
your own (the data fingerprint, hence the run identity, follows the lists). An id listed but no longer in the
folder is an error; ids in no list are not used (a note says how many). When ``PATH`` is read-only the lists
are drawn at load time by the same rule (a note says so). Other seeds are drawn at load time, never written.
``split="all"`` (external evaluation) is every pair and touches no list.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from .errors import DataError
from .layouts import Discovery, Pair, Problem, _add_file, _ignored, _scandir
from .splits import PROTOCOLS, SPLITS, draw_splits, read_split_file, split_counts

__all__ = [
    "PREFIX", "IMAGE_EXTS", "MASK_EXTS", "MASK_SUFFIXES", "PART", "SPLIT_TAG", "SPLITS_DIR",
    "is_folder_name", "folder_path", "canonical_name", "folder_tag", "discover_folder", "raise_folder_errors",
    "folder_split_ids", "split_file", "split_names",
]

PREFIX = "folder:"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".gif")
MASK_SUFFIXES = ("_segmentation", "_mask")
PART = "all"  # the one layout part of a folder dataset
SPLIT_TAG = "folder"  # the dataset tag in the split rule's hash: the split depends on the ids only
SPLITS_DIR = "splits"
LAYOUT_HINT = ("layout: PATH/images/<id>.jpg|png|bmp|tif and PATH/masks/<id>.png (or <id>_segmentation.png, "
               "<id>_mask.png), see engine/data/folder.py")


# ------------------------------------------------------------------------------------------- names

def is_folder_name(name: object) -> bool:
    """True for a dataset name ``folder:PATH`` (any case of the prefix, a non-empty path)."""
    text = str(name)
    return text[:len(PREFIX)].lower() == PREFIX and bool(text[len(PREFIX):].strip())


def _raw_path(name: str) -> Path:
    if not is_folder_name(name):
        raise ValueError(f"{name!r} is not a folder dataset name; write folder:PATH")
    return Path(str(name)[len(PREFIX):].strip()).expanduser()


def _case_fallback(path: Path) -> Path:
    """``path`` with each missing component matched case-insensitively (unique match only); ``path`` itself
    when that finds nothing. Dataset names are lower-cased by some callers (the run config), paths are not."""
    parts = path.parts
    cur = Path(parts[0])
    for comp in parts[1:]:
        nxt = cur / comp
        if not nxt.exists():
            try:
                matches = [n for n in os.listdir(cur) if n.lower() == comp.lower()]
            except OSError:
                return path
            if len(matches) != 1:
                return path
            nxt = cur / matches[0]
        cur = nxt
    return cur


def folder_path(name: str) -> Path:
    """The absolute folder of ``folder:PATH`` (relative paths against the working folder)."""
    p = Path(os.path.abspath(_raw_path(name)))
    if not p.exists():
        p = _case_fallback(p)
    return p.resolve() if p.exists() else p


def canonical_name(name: str) -> str:
    """``folder:<absolute path>``: the form the run config, the manifest and the tables keep."""
    return PREFIX + str(folder_path(name))


def folder_tag(base: Path) -> str:
    """A file-name-safe tag of the folder (cache entries): ``folder-<name>-<8 hex of the absolute path>``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", base.name).strip("_").lower() or "root"
    return f"folder-{slug[:40]}-{hashlib.sha256(str(base).encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------------- listing

def _bad_id(stem: str) -> bool:
    return stem != stem.strip() or stem.startswith("#") or any(c in stem for c in "\t\r\n") or not stem


def _mask_id(name: str, images: set[str]) -> str | None:
    """The image id a mask file name belongs to (None when its extension is not a mask's)."""
    stem, ext = os.path.splitext(name)
    if ext.lower() not in MASK_EXTS:
        return None
    if stem in images:
        return stem
    for suf in MASK_SUFFIXES:
        if stem.lower().endswith(suf) and stem[:-len(suf)] in images:
            return stem[:-len(suf)]
    for suf in MASK_SUFFIXES:  # a mask of an absent image: name the id it would have
        if stem.lower().endswith(suf) and stem[:-len(suf)]:
            return stem[:-len(suf)]
    return stem


def discover_folder(base: str | os.PathLike) -> Discovery:
    """List ``base/images`` and ``base/masks`` (no decoding); every problem is collected, not raised."""
    base = Path(base)
    disc = Discovery(PREFIX + str(base), base)
    problems = disc.problems
    if not base.exists():
        problems.append(Problem(str(base), f"{base}: no such folder (folder dataset); check the path ({LAYOUT_HINT})"))
        return disc
    if not base.is_dir():
        problems.append(Problem(str(base), f"{base}: is a file, not a folder; give the folder holding images/ and "
                                           f"masks/"))
        return disc
    img_dir, mask_dir = base / "images", base / "masks"
    for d, what in ((img_dir, "images"), (mask_dir, "masks")):
        if not d.is_dir():
            problems.append(Problem(str(d), f"{d}: missing {what} folder of a folder dataset; create it "
                                            f"({LAYOUT_HINT})"))
    if problems:
        return disc
    img_entries, mask_entries = _scandir(img_dir, problems), _scandir(mask_dir, problems)
    if img_entries is None or mask_entries is None:
        return disc
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    stats: dict[Path, tuple[int, int]] = {}
    bad: set[str] = set()
    n_img = n_mask = 0
    for e in img_entries:
        if _ignored(e.name):
            continue
        p = Path(e.path)
        if e.is_dir():
            problems.append(Problem(str(p), f"{p}: unexpected folder inside the images folder; move it out"))
            continue
        stem, ext = os.path.splitext(e.name)
        if ext.lower() not in IMAGE_EXTS:
            problems.append(Problem(str(p), f"{p}: unexpected file in the images folder (expected <id>.jpg, .jpeg, "
                                            f".png, .bmp, .tif or .tiff); remove or move it"))
            continue
        if _bad_id(stem):
            problems.append(Problem(str(p), f"{p}: file name cannot be an image id (leading/trailing blank, '#' "
                                            f"first or a tab); rename the image and its mask"))
            continue
        n_img += 1
        _add_file(stem, e, images, "image", stats, bad, problems)
    image_ids = set(images)
    for e in mask_entries:
        if _ignored(e.name):
            continue
        p = Path(e.path)
        if e.is_dir():
            problems.append(Problem(str(p), f"{p}: unexpected folder inside the masks folder; move it out"))
            continue
        mid = _mask_id(e.name, image_ids)
        if mid is None:
            lossy = os.path.splitext(e.name)[1].lower() in (".jpg", ".jpeg")
            problems.append(Problem(str(p), f"{p}: " + (
                "JPEG mask (lossy compression blurs the lesion border); save it as PNG" if lossy else
                "unexpected file in the masks folder (expected <id>.png, .bmp, .tif or .gif, or "
                "<id>_segmentation.png / <id>_mask.png); remove or move it")))
            continue
        n_mask += 1
        _add_file(mid, e, masks, "mask", stats, bad, problems)
    if n_img == 0:
        problems.append(Problem(str(img_dir), f"{img_dir}: images folder holds no images (empty); put "
                                              f"<id>.jpg|png|bmp files there"))
    if n_mask == 0:
        problems.append(Problem(str(mask_dir), f"{mask_dir}: masks folder holds no masks (empty); put one "
                                               f"<id>.png per image there"))
    for i in sorted(set(images) - set(masks)):
        if n_mask:
            problems.append(Problem(str(images[i]), f"{images[i]}: image without mask (expected {mask_dir}/{i}.png "
                                                    f"or {i}_segmentation.png); add the mask or remove the image"))
    for i in sorted(set(masks) - set(images)):
        if n_img:
            problems.append(Problem(str(masks[i]), f"{masks[i]}: mask without image (expected {img_dir}/{i}.jpg or "
                                                   f".png); add the image or remove the mask"))
    ids = sorted((set(images) & set(masks)) - bad)
    disc.parts[PART] = [Pair(i, images[i], masks[i], PART, stats[images[i]] + stats[masks[i]]) for i in ids]
    return disc


def raise_folder_errors(disc: Discovery) -> None:
    """Raise the first error of a folder listing as one line (with the count of the others)."""
    errs = disc.errors
    if errs:
        more = f" (and {len(errs) - 1} more problem(s) in {disc.base})" if len(errs) > 1 else ""
        raise DataError(errs[0].message + more, errs[0].path)


# ------------------------------------------------------------------------------------------- splits

def split_names(protocol: str) -> tuple[str, ...]:
    return SPLITS if protocol == "clean" else ("train", "test")


def split_file(base: Path, protocol: str, split: str) -> Path:
    return Path(base) / SPLITS_DIR / f"{protocol}_{split}.txt"


def _header(protocol: str, split: str, ids: list[str], pool_n: int) -> str:
    counts = split_counts(pool_n, protocol)
    rule = (f"n_train = floor(0.7*n + 0.5) = {counts['train']}, n_val = floor(0.1*n + 0.5) = {counts['val']}, "
            f"rest test = {counts['test']}" if protocol == "clean" else
            f"n_train = floor(0.7*n + 0.5) = {counts['train']}, rest test = {counts['test']}")
    lines = [
        f"egeunet split list: folder dataset, protocol {protocol}, split {split}: {len(ids)} image ids, one per "
        f"line, sorted",
        f"pool: {pool_n} ids = every image/mask pair of images/ + masks/",
        f"rule: rank the pool ids by sha256('{'egeunet-split|' + SPLIT_TAG}|<seed>|<id>') ascending; {rule}",
        "seed: 0; written by engine/data/folder.py the first time a split was loaded; this file is the split "
        "from now on (edit it to fix your own; the run identity follows it)",
        f"sha256 of the id lines joined by newlines: {hashlib.sha256(chr(10).join(ids).encode()).hexdigest()}",
    ]
    return "".join(f"# {ln}\n" for ln in lines)


def _list_text(protocol: str, split: str, ids: list[str], pool_n: int) -> str:
    return _header(protocol, split, ids, pool_n) + "".join(f"{i}\n" for i in ids)


def _write_all(base: Path, ids: list[str], protocol: str) -> str | None:
    """Write the lists into ``base/splits``: every protocol's at once (a new folder moved into place), or only
    ``protocol``'s when the folder exists without them. Returns a note when nothing could be written."""
    target = base / SPLITS_DIR
    tmp = base / f".{SPLITS_DIR}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        if target.is_dir() and any(target.iterdir()):
            for split, lst in draw_splits(ids, SPLIT_TAG, protocol, 0).items():
                f = split_file(base, protocol, split)
                part = f.with_name(f".{f.name}.{os.getpid()}.tmp")
                part.write_text(_list_text(protocol, split, lst, len(ids)))
                os.replace(part, f)
            return None
        tmp.mkdir()
        for proto in PROTOCOLS:
            for split, lst in draw_splits(ids, SPLIT_TAG, proto, 0).items():
                (tmp / f"{proto}_{split}.txt").write_text(_list_text(proto, split, lst, len(ids)))
        try:
            os.rename(tmp, target)  # atomic: a reader sees every list or none
        except OSError:
            if not target.is_dir():
                raise
            # another process moved its lists in first (same rule, same ids): keep those
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return (f"{target}: cannot write the split lists ({e.strerror or e}); they are drawn at load time by the "
                f"same rule (make the folder writable once to keep them)")
    shutil.rmtree(tmp, ignore_errors=True)
    return None


def _read_lists(base: Path, protocol: str) -> dict[str, list[str]] | None:
    """The lists of ``protocol`` under ``base/splits`` (None when none of its files exist)."""
    files = {s: split_file(base, protocol, s) for s in split_names(protocol)}
    present = [s for s, f in files.items() if f.is_file()]
    if not present:
        return None
    if len(present) < len(files):
        missing = next(f for f in files.values() if not f.is_file())
        raise DataError(f"{missing}: split list missing ({', '.join(files[s].name for s in present)} present); "
                        f"restore it, or remove {base / SPLITS_DIR} to draw every list again", missing)
    lists = {s: read_split_file(f) for s, f in files.items()}
    seen: dict[str, str] = {}
    for s, ids in lists.items():
        for i in ids:
            if i in seen:
                raise DataError(f"{files[s]}: id {i} is listed twice (also in {files[seen[i]].name}); a split list "
                                f"must name each id once, in one split", files[s])
            seen[i] = s
    return lists


def folder_split_ids(base: Path, protocol: str, part_ids: dict[str, list[str]], seed: int = 0,
                     write: bool = True) -> tuple[dict[str, list[tuple[str, str]]], str, list[str]]:
    """(split -> [(part, id)], how the lists were obtained, notes), as :func:`engine.data.splits.split_ids`.

    ``write``: seed 0 writes ``base/splits/`` when it holds no list of ``protocol`` (False: draw only)."""
    base = Path(base)
    ids = sorted(part_ids.get(PART, []))
    notes: list[str] = []
    if seed != 0:
        lists = draw_splits(ids, SPLIT_TAG, protocol, seed)
        source = f"drawn at load time (seed {seed}, rule of engine/data/folder.py)"
    else:
        lists = _read_lists(base, protocol)
        source = f"split lists {base / SPLITS_DIR}/{protocol}_*.txt"
        if lists is None and write:
            note = _write_all(base, ids, protocol)
            if note is None:
                lists = _read_lists(base, protocol)
                notes.append(f"split lists written to {base / SPLITS_DIR} (first use); keep them with the data "
                             f"and commit them with the results")
            else:
                notes.append(note)
        if lists is None:
            lists = draw_splits(ids, SPLIT_TAG, protocol, 0)
            source = "drawn at load time (seed 0, rule of engine/data/folder.py; not written)"
        else:
            pool = set(ids)
            for s, lst in lists.items():
                gone = [i for i in lst if i not in pool]
                if gone:
                    f = split_file(base, protocol, s)
                    raise DataError(f"{f}: lists {len(gone)} id(s) absent from {base} (first: {gone[0]}); restore "
                                    f"the pair, delete the line, or remove {base / SPLITS_DIR} to draw new lists", f)
            listed = {i for lst in lists.values() for i in lst}
            extra = sorted(pool - listed)
            if extra:
                notes.append(f"{len(extra)} pair(s) of {base} are in no {protocol} split list and are not used "
                             f"(first: {extra[0]}); remove {base / SPLITS_DIR} to draw new lists over every pair")
    return {s: [(PART, i) for i in lst] for s, lst in lists.items()}, source, notes
