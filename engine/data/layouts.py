"""Official folder layouts and file discovery: images and masks are paired BY IMAGE ID, never by position.

Discovery only lists and stats files (no decoding), so it runs on every :func:`engine.data.load_split` call and
costs a few tens of milliseconds for ISIC 2018. It collects *every* problem it sees (``Discovery.problems``);
loaders raise the first one as a :class:`DataError`, ``python -m studies.data check`` prints them all.

Layouts (folder names exactly as the official archives extract):

ISIC 2018 Task 1, dataset folder ``ISIC2018/``
    ``ISIC2018_Task1-2_Training_Input/ISIC_<7 digits>.jpg`` + ``ISIC2018_Task1_Training_GroundTruth/
    ISIC_<7 digits>_segmentation.png`` (required, part ``train``), and where present the official validation
    (``ISIC2018_Task1-2_Validation_Input`` + ``ISIC2018_Task1_Validation_GroundTruth``, part ``official_val``) and
    test (``ISIC2018_Task1-2_Test_Input`` + ``ISIC2018_Task1_Test_GroundTruth``, part ``official_test``).
ISIC 2017 Part 1, dataset folder ``ISIC2017/``
    ``ISIC-2017_Training_Data`` + ``ISIC-2017_Training_Part1_GroundTruth`` (``train``),
    ``ISIC-2017_Validation_Data`` + ``ISIC-2017_Validation_Part1_GroundTruth`` (``val``),
    ``ISIC-2017_Test_v2_Data`` + ``ISIC-2017_Test_v2_Part1_GroundTruth`` (``test``); all three required.
PH2, dataset folder ``PH2Dataset/`` (or ``PH2/``)
    ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` + ``IMDxxx_lesion/IMDxxx_lesion.bmp``
    (part ``all``); ``IMDxxx_roi/`` folders and ``PH2_dataset.txt/.xlsx`` are ignored.

Ignored everywhere (they ship in the official zips): ``*_superpixels.png``, ``*.csv`` (metadata),
``LICENSE.txt``, ``ATTRIBUTION.txt``, hidden files (``.*``), ``Thumbs.db``, ``desktop.ini``.
Anything else in an image or mask folder is an *unexpected file* error: remove or move it.
Image files may be ``.jpg``/``.jpeg``/``.png`` (PH2 also ``.bmp``); two image files with one id (e.g. ``.jpg`` and
``.png``) are a *duplicate id* error. ISIC masks must be ``<id>_segmentation.png``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

IGNORED_NAMES = {"license.txt", "attribution.txt", "thumbs.db", "desktop.ini", "readme.txt"}
ISIC_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PH2_IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg")
ISIC_ID = re.compile(r"^ISIC_\d{7}$")
ISIC_MASK = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)
PH2_ID = re.compile(r"^IMD\d{3}$")
PH2_IMAGES_DIR = "PH2 Dataset images"


@dataclass(frozen=True)
class Pair:
    """One image and its mask, matched by id."""

    id: str
    image: Path
    mask: Path
    part: str
    stat: tuple[int, int, int, int] | None = None  # (image size, image mtime_ns, mask size, mask mtime_ns)


@dataclass(frozen=True)
class Problem:
    """One problem found while listing or decoding a dataset; ``message`` is a complete one-line error."""

    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def error(self) -> DataError:
        return DataError(self.message, self.path)


@dataclass(frozen=True)
class PartSpec:
    name: str
    images: str  # folder (relative to the dataset folder)
    masks: str
    required: bool = True


@dataclass(frozen=True)
class Layout:
    name: str
    dirnames: tuple[str, ...]
    kind: str  # "isic" | "ph2"
    parts: tuple[PartSpec, ...]
    title: str = ""


LAYOUTS: dict[str, Layout] = {
    "isic2018": Layout(
        "isic2018",
        ("ISIC2018", "isic2018", "ISIC_2018"),
        "isic",
        (
            PartSpec("train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
            PartSpec("official_val", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth",
                     required=False),
            PartSpec("official_test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth",
                     required=False),
        ),
        "ISIC 2018 Task 1",
    ),
    "isic2017": Layout(
        "isic2017",
        ("ISIC2017", "isic2017", "ISIC_2017"),
        "isic",
        (
            PartSpec("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
            PartSpec("val", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
            PartSpec("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
        ),
        "ISIC 2017 Part 1",
    ),
    "ph2": Layout(
        "ph2",
        ("PH2Dataset", "PH2", "ph2", "PH2_Dataset"),
        "ph2",
        (PartSpec("all", PH2_IMAGES_DIR, PH2_IMAGES_DIR),),
        "PH2",
    ),
}


@dataclass
class Discovery:
    """What listing a dataset folder found: pairs per part (sorted by id) and every problem."""

    dataset: str
    base: Path
    parts: dict[str, list[Pair]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def pairs(self, *parts: str) -> list[Pair]:
        out: list[Pair] = []
        for p in parts or tuple(self.parts):
            out.extend(self.parts.get(p, []))
        return out

    def raise_if_errors(self) -> None:
        errs = self.errors
        if not errs:
            return
        first = errs[0]
        more = ""
        if len(errs) > 1:
            more = (f" (and {len(errs) - 1} more problem(s): run `python -m studies.data check {self.base}` "
                    f"to list them all)")
        raise DataError(first.message + more, first.path)


def _ignored(name: str) -> bool:
    low = name.lower()
    return (name.startswith(".") or low in IGNORED_NAMES or low.endswith(".csv")
            or low.endswith("_superpixels.png") or name == "__MACOSX")


def _scandir(folder: Path, problems: list[Problem]) -> list[os.DirEntry] | None:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        problems.append(Problem(str(folder), f"{folder}: folder is not readable (permission denied); "
                                             f"make it readable (chmod a+rx) or point the data root elsewhere"))
    except NotADirectoryError:
        problems.append(Problem(str(folder), f"{folder}: expected a folder but found a file; remove or rename it"))
    return None


def _file_ok(path: Path, size: int, problems: list[Problem], what: str) -> bool:
    if size == 0:
        problems.append(Problem(str(path), f"{path}: empty {what} file (0 bytes); re-download it or remove the pair"))
        return False
    if not os.access(path, os.R_OK):
        problems.append(Problem(str(path), f"{path}: {what} file is not readable (permission denied); "
                                           f"make it readable (chmod a+r) or remove the pair"))
        return False
    return True


def _add_file(file_id: str, entry: os.DirEntry, table: dict[str, Path], what: str,
              stats: dict[Path, tuple[int, int]], bad: set[str], problems: list[Problem]) -> None:
    """Record one image or mask file under its id; a duplicate id or an unusable file marks the id bad."""
    p = Path(entry.path)
    if file_id in table:
        problems.append(Problem(str(p), f"{p}: duplicate {what} id {file_id} (also {table[file_id].name}); "
                                        f"keep one file per id and remove the other"))
        bad.add(file_id)
        return
    table[file_id] = p
    st = _stat(p, problems, what)
    if st is None:
        bad.add(file_id)
        return
    stats[p] = (st.st_size, st.st_mtime_ns)
    if not _file_ok(p, st.st_size, problems, what):
        bad.add(file_id)


def _stat(path: Path, problems: list[Problem], what: str) -> os.stat_result | None:
    """``os.stat`` of a listed file, or None with a problem (a dangling symbolic link, a file that vanished)."""
    try:
        return os.stat(path)
    except OSError as e:
        if path.is_symlink():
            problems.append(Problem(str(path), f"{path}: broken symbolic link to {os.readlink(path)} (the {what} "
                                               f"it points to does not exist); fix the link or remove it"))
        else:
            problems.append(Problem(str(path), f"{path}: {what} file cannot be read ({e.strerror or e}); "
                                               f"check the file or remove the pair"))
        return None


def _list_isic_part(base: Path, spec: PartSpec, problems: list[Problem]) -> list[Pair]:
    img_dir, mask_dir = base / spec.images, base / spec.masks
    img_entries = _scandir(img_dir, problems)
    mask_entries = _scandir(mask_dir, problems)
    if img_entries is None or mask_entries is None:
        return []
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    stats: dict[Path, tuple[int, int]] = {}
    bad: set[str] = set()
    n_img_files = 0
    for e in img_entries:
        if _ignored(e.name):
            continue
        p = Path(e.path)
        if e.is_dir():
            problems.append(Problem(str(p), f"{p}: unexpected folder inside the image folder; move it out"))
            continue
        stem, ext = os.path.splitext(e.name)
        if ext.lower() not in ISIC_IMAGE_EXTS or not ISIC_ID.match(stem):
            problems.append(Problem(str(p), f"{p}: unexpected file in the image folder (expected "
                                            f"ISIC_<7 digits>.jpg/.jpeg/.png); remove or move it"))
            continue
        n_img_files += 1
        _add_file(stem, e, images, "image", stats, bad, problems)
    n_mask_files = 0
    for e in mask_entries:
        if _ignored(e.name):
            continue
        p = Path(e.path)
        if e.is_dir():
            problems.append(Problem(str(p), f"{p}: unexpected folder inside the mask folder; move it out"))
            continue
        m = ISIC_MASK.match(e.name)
        if not m:
            problems.append(Problem(str(p), f"{p}: unexpected file in the mask folder (expected "
                                            f"ISIC_<7 digits>_segmentation.png); remove, rename or move it"))
            continue
        n_mask_files += 1
        _add_file(m.group(1), e, masks, "mask", stats, bad, problems)
    if n_img_files == 0:
        problems.append(Problem(str(img_dir), f"{img_dir}: image folder holds no images (empty); "
                                              f"extract the official archive into it or remove the folder"))
    if n_mask_files == 0:
        problems.append(Problem(str(mask_dir), f"{mask_dir}: mask folder holds no masks (empty); "
                                               f"extract the official ground-truth archive into it"))
    for i in sorted(set(images) - set(masks)):
        if n_mask_files:
            exp = mask_dir / f"{i}_segmentation.png"
            problems.append(Problem(str(images[i]), f"{images[i]}: image without mask (expected {exp}); "
                                                    f"add the mask or remove the image"))
    for i in sorted(set(masks) - set(images)):
        if n_img_files:
            problems.append(Problem(str(masks[i]), f"{masks[i]}: mask without image (expected {img_dir}/{i}.jpg); "
                                                   f"add the image or remove the mask"))
    ids = sorted((set(images) & set(masks)) - bad)
    return [Pair(i, images[i], masks[i], spec.name, stats[images[i]] + stats[masks[i]]) for i in ids]


def _list_ph2(base: Path, spec: PartSpec, problems: list[Problem]) -> list[Pair]:
    top = base / spec.images
    entries = _scandir(top, problems)
    if entries is None:
        return []
    pairs: list[Pair] = []
    n_cases = 0
    for e in entries:
        if _ignored(e.name):
            continue
        p = Path(e.path)
        if not e.is_dir():
            problems.append(Problem(str(p), f"{p}: unexpected file in '{PH2_IMAGES_DIR}' (expected IMDxxx case "
                                            f"folders); remove or move it"))
            continue
        if not PH2_ID.match(e.name):
            problems.append(Problem(str(p), f"{p}: unexpected folder (expected IMD<3 digits>); remove or move it"))
            continue
        n_cases += 1
        cid = e.name
        found: dict[str, list[Path]] = {"image": [], "mask": []}
        sub_dirs = {"image": p / f"{cid}_Dermoscopic_Image", "mask": p / f"{cid}_lesion"}
        case_entries = _scandir(p, problems) or []
        for ce in case_entries:
            if _ignored(ce.name) or ce.name == f"{cid}_roi":
                continue
            if ce.is_dir() and ce.name in (sub_dirs["image"].name, sub_dirs["mask"].name):
                continue
            cp = Path(ce.path)
            problems.append(Problem(str(cp), f"{cp}: unexpected entry in PH2 case folder {cid}; remove or move it"))
        for kind, d in sub_dirs.items():
            if not d.is_dir():
                continue
            want = cid if kind == "image" else f"{cid}_lesion"
            for fe in _scandir(d, problems) or []:
                if _ignored(fe.name):
                    continue
                fp = Path(fe.path)
                stem, ext = os.path.splitext(fe.name)
                if fe.is_dir() or stem != want or ext.lower() not in PH2_IMAGE_EXTS:
                    problems.append(Problem(str(fp), f"{fp}: unexpected file (expected {want}.bmp); remove or move it"))
                    continue
                if found[kind]:
                    problems.append(Problem(str(fp), f"{fp}: duplicate {kind} for id {cid} (also "
                                                     f"{found[kind][0].name}); keep one file and remove the other"))
                found[kind].append(fp)
        imgs, msks = found["image"], found["mask"]
        if len(imgs) > 1 or len(msks) > 1:
            continue
        if imgs and not msks:
            problems.append(Problem(str(imgs[0]), f"{imgs[0]}: image without mask (expected "
                                                  f"{sub_dirs['mask'] / (cid + '_lesion.bmp')}); add the mask or "
                                                  f"remove the case folder"))
            continue
        if msks and not imgs:
            problems.append(Problem(str(msks[0]), f"{msks[0]}: mask without image (expected "
                                                  f"{sub_dirs['image'] / (cid + '.bmp')}); add the image or remove "
                                                  f"the case folder"))
            continue
        if not imgs:
            problems.append(Problem(str(p), f"{p}: PH2 case folder without image or mask; remove it"))
            continue
        st_img, st_msk = _stat(imgs[0], problems, "image"), _stat(msks[0], problems, "mask")
        if st_img is None or st_msk is None:
            continue
        ok = _file_ok(imgs[0], st_img.st_size, problems, "image")
        ok = _file_ok(msks[0], st_msk.st_size, problems, "mask") and ok
        if ok:
            pairs.append(Pair(cid, imgs[0], msks[0], spec.name))
    if n_cases == 0:
        problems.append(Problem(str(top), f"{top}: no PH2 case folders (IMDxxx) found (empty); extract the PH2 "
                                          f"archive here"))
    return pairs


def is_dataset_dir(path: Path, dataset: str) -> bool:
    """True when ``path`` itself holds a required part folder of ``dataset``'s layout."""
    lay = LAYOUTS[dataset]
    return any((path / s.images).is_dir() or (path / s.masks).is_dir() for s in lay.parts if s.required)


def locate(dataset: str, root: str | os.PathLike | None) -> Path | None:
    """The folder of ``dataset`` under ``root`` (``root/ISIC2018`` ...), ``root`` itself if it is one, else None."""
    if root is None or dataset not in LAYOUTS:
        return None
    root = Path(root)
    for name in LAYOUTS[dataset].dirnames:
        cand = root / name
        if cand.is_dir() and is_dataset_dir(cand, dataset):
            return cand
    if root.is_dir() and is_dataset_dir(root, dataset):
        return root
    return None


def discover(dataset: str, base: str | os.PathLike) -> Discovery:
    """List every part of ``dataset`` in its folder ``base``; no decoding. Problems are collected, not raised."""
    lay = LAYOUTS[dataset]
    base = Path(base)
    disc = Discovery(dataset, base)
    for spec in lay.parts:
        img_dir, mask_dir = base / spec.images, base / spec.masks
        if not img_dir.exists() and not mask_dir.exists():
            if spec.required:
                disc.problems.append(Problem(str(img_dir), f"{img_dir}: missing folder of {lay.title} part "
                                                           f"'{spec.name}'; extract the official archive there"))
            continue
        if not spec.required and (not img_dir.exists() or not mask_dir.exists()):
            missing = mask_dir if not mask_dir.exists() else img_dir
            disc.notes.append(f"{lay.title} part '{spec.name}' skipped: {missing} is missing")
            continue
        for d in (img_dir, mask_dir):
            if not d.exists():
                disc.problems.append(Problem(str(d), f"{d}: missing folder of {lay.title} part '{spec.name}'; "
                                                     f"extract the official archive there"))
        if not img_dir.exists() or not mask_dir.exists():
            continue
        if lay.kind == "isic":
            disc.parts[spec.name] = _list_isic_part(base, spec, disc.problems)
        else:
            disc.parts[spec.name] = _list_ph2(base, spec, disc.problems)
    return disc


def detect(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """Which datasets a folder holds: itself a dataset folder, or a root holding dataset folders."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such folder; give a dataset folder, a data root or a dataset name", path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder; give a dataset folder, a data root or a dataset name", path)
    own = [(name, path) for name in LAYOUTS if is_dataset_dir(path, name)]
    if own:
        return own
    found = [(name, d) for name in LAYOUTS if (d := locate(name, path)) is not None]
    if not found:
        raise DataError(f"{path}: no known dataset layout found (expected e.g. ISIC2018/"
                        f"ISIC2018_Task1-2_Training_Input, ISIC2017/ISIC-2017_Training_Data or "
                        f"PH2Dataset/'{PH2_IMAGES_DIR}'); check the path or extract the official archives", path)
    return found
