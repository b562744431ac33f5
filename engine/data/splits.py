"""Split rules, the committed split lists under ``engine/data/splits/``, and the ISIC overlap guard.

Rule (``draw_splits``), the same for every dataset without an official split:

1. the pool's ids are ranked by ``sha256("egeunet-split|<dataset>|<seed>|<id>")`` (hex, ascending) -- a seeded
   permutation that does not depend on the NumPy version or on the order files were listed;
2. ``n_train = floor(0.7 * n + 0.5)`` (round half up, exact integer arithmetic), ``n_val = floor(0.1 * n + 0.5)``;
3. ``paper``: the first ``n_train`` ranked ids are train, the rest test (7:3, as the official README states);
   ``clean``: the first ``n_train`` are train, the next ``n_val`` val, the rest test (70/10/20).

Consequence: under one seed, ``clean`` and ``paper`` share the *same training set* and the paper test set is the
union of the clean val and test sets, so the two protocols differ only in model selection and test set.

Pools and committed lists (seed 0, written by ``python -m engine.data.make_splits``; each file has a header):

======== ======== ====================================================== ==========================
dataset  protocol pool                                                   sizes
======== ======== ====================================================== ==========================
isic2018 paper    the 2594 ISIC 2018 Task 1 training ids                 train 1816 / test 778
isic2018 clean    the same 2594 ids                                      1816 / val 259 / test 519
isic2017 paper    official train + val (2000 + 150 = 2150)               train 1505 / test 645
isic2017 clean    official split, unchanged (train / val / test folders) 2000 / 150 / 529 (this copy)
ph2      both     its 200 ids, drawn at load time (not committed)        140/60, 140/20/40
======== ======== ====================================================== ==========================

The official EGE-UNet 7:3 split lists were never published (docs/protocol.md §2): ours are re-draws. The
inferred official test sizes are 650 (ISIC 2017) and 808 (ISIC 2018, from a 2694-image pool that includes the 100
official validation images, whose masks our copy lacks: docs/protocol.md §2.2); ours are 645 and 778.
For ``isic2017``/``clean`` the loader uses the official folders themselves; the committed list records which ids
the shared copy holds (its test set is 529 of the official 600) and feeds the overlap guard.

Under ``paper``, ``split="val"`` returns the test set (the official code selects checkpoints on it).
Other seeds than 0 draw new lists with the same rule at load time (not committed). So does a folder in an ISIC
layout that holds fewer than half of the committed ids (a custom or reduced dataset, not a damaged copy); a folder
holding most but not all of them is refused, naming the first missing id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import DataError

SPLIT_DIR = Path(__file__).resolve().parent / "splits"
PROTOCOLS = ("clean", "paper")
SPLITS = ("train", "val", "test")
HELD_OUT = ("val", "test", "official_val", "official_test")
RATIOS = {"paper": "7:3 (train:test)", "clean": "70/10/20 (train/val/test)"}
ISIC = ("isic2017", "isic2018")

#: how each committed pool is formed (dataset, protocol) -> (parts of the layout, description)
POOLS = {
    ("isic2018", "paper"): (("train",), "the ISIC 2018 Task 1 training ids (ISIC2018_Task1-2_Training_Input)"),
    ("isic2018", "clean"): (("train",), "the ISIC 2018 Task 1 training ids (ISIC2018_Task1-2_Training_Input)"),
    ("isic2017", "paper"): (("train", "val"), "ISIC 2017 official train + val (ISIC-2017_Training_Data + "
                                              "ISIC-2017_Validation_Data)"),
    ("isic2017", "clean"): (("train", "val", "test"), "ISIC 2017 official split (folders), unchanged"),
    ("ph2", "paper"): (("all",), "all PH2 ids"),
    ("ph2", "clean"): (("all",), "all PH2 ids"),
}
OFFICIAL = {("isic2017", "clean"): {"train": "train", "val": "val", "test": "test"}}


def normalise_protocol(protocol: str) -> str:
    p = str(protocol).lower()
    if p == "official":
        p = "paper"
    if p not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS} ('official' = 'paper')")
    return p


def resolve_split(protocol: str, split: str) -> str:
    """The split actually served: under ``paper`` there is no validation set and ``val`` is the test set."""
    return "test" if protocol == "paper" and split == "val" else split


def split_counts(n: int, protocol: str) -> dict[str, int]:
    n_train = (7 * n + 5) // 10
    if protocol == "paper":
        return {"train": n_train, "test": n - n_train}
    n_val = (n + 5) // 10
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def rank(ids, dataset: str, seed: int) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"egeunet-split|{dataset}|{seed}|{i}".encode()).hexdigest())


def draw_splits(ids, dataset: str, protocol: str, seed: int = 0) -> dict[str, list[str]]:
    """The rule of the module docstring; each list sorted by id."""
    ids = sorted(set(ids))
    order = rank(ids, dataset, seed)
    out, start = {}, 0
    for name, k in split_counts(len(ids), protocol).items():
        out[name] = sorted(order[start:start + k])
        start += k
    return out


# --------------------------------------------------------------------------- committed files

def split_file(dataset: str, protocol: str, split: str, directory: Path | None = None) -> Path:
    return (directory or SPLIT_DIR) / f"{dataset}_{protocol}_{split}.txt"


def read_split_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read split list ({e.strerror or e}); reinstall the package or regenerate "
                        f"with `python -m engine.data.make_splits`", path) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def committed(dataset: str, protocol: str) -> dict[str, list[str]] | None:
    """The committed lists of (dataset, protocol), or None if there are none."""
    names = SPLITS if protocol == "clean" else ("train", "test")
    files = {s: split_file(dataset, protocol, s) for s in names}
    if not all(f.is_file() for f in files.values()):
        return None
    return {s: read_split_file(f) for s, f in files.items()}


def header(dataset: str, protocol: str, split: str, ids: list[str], pool_n: int, seed: int) -> str:
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    pool_desc = POOLS[(dataset, protocol)][1]
    counts = split_counts(pool_n, protocol)
    lines = [
        f"egeunet split list: dataset {dataset}, protocol {protocol}, split {split}: {len(ids)} image ids, one per "
        f"line, sorted",
        f"pool: {pool_n} ids = {pool_desc}",
    ]
    if (dataset, protocol) in OFFICIAL:
        lines += [
            "rule: the official split as distributed (folder membership); nothing was drawn.",
            "load_split uses the official folders themselves; this list records the ids of the shared copy (its "
            "test set holds 529 of the official 600) and feeds check_eval_allowed.",
        ]
    else:
        lines += [
            f"rule: rank the pool ids by sha256('egeunet-split|{dataset}|<seed>|<id>') ascending; "
            f"n_train = floor(0.7*n + 0.5) = {counts['train']}"
            + (f", n_val = floor(0.1*n + 0.5) = {counts['val']}, rest test = {counts['test']}; first n_train ranked ids "
               f"-> train, next n_val -> val, rest -> test" if protocol == "clean" else
               f", rest test = {counts['test']}; first n_train ranked ids -> train, rest -> test"),
            # the note is written into the committed split lists (regenerated byte-identically, tested; ASCII,
            # as read_split_file reads them in the locale's encoding); the ids, not the headers, are the data
            "note: the official EGE-UNet 7:3 lists were never published (docs/protocol.md section 2.1): this is "
            "our re-draw, not theirs." if protocol == "paper" else
            "note: clean and paper share the training set under one seed; paper test = clean val + clean test.",
        ]
    lines += [
        f"seed: {seed}; generated by `python -m engine.data.make_splits` (engine/data/splits.py, draw_splits)",
        f"sha256 of the id lines joined by newlines: {digest}",
    ]
    return "".join(f"# {ln}\n" for ln in lines)


def expected_lists(dataset: str, protocol: str, part_ids: dict[str, list[str]], seed: int = 0) -> dict[str, list[str]]:
    """Lists for (dataset, protocol) computed from the ids of each layout part."""
    if (dataset, protocol) in OFFICIAL:
        return {s: sorted(part_ids.get(p, [])) for s, p in OFFICIAL[(dataset, protocol)].items()}
    parts = POOLS[(dataset, protocol)][0]
    pool = [i for p in parts for i in part_ids.get(p, [])]
    return draw_splits(pool, dataset, protocol, seed)


def write_lists(dataset: str, protocol: str, lists: dict[str, list[str]], pool_n: int, seed: int,
                directory: Path | None = None) -> list[Path]:
    directory = Path(directory or SPLIT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for split, ids in lists.items():
        path = split_file(dataset, protocol, split, directory)
        text = header(dataset, protocol, split, ids, pool_n, seed) + "".join(f"{i}\n" for i in ids)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        out.append(path)
    return out


# --------------------------------------------------------------------------- which ids a split holds

def split_ids(dataset: str, protocol: str, part_ids: dict[str, list[str]], seed: int = 0,
              base: Path | None = None) -> tuple[dict[str, list[tuple[str, str]]], str, list[str]]:
    """(split -> [(part, id)], how the lists were obtained, notes) for a discovered real dataset."""
    notes: list[str] = []
    where = {i: p for p, ids in part_ids.items() for i in ids}
    if (dataset, protocol) in OFFICIAL:
        lists = expected_lists(dataset, protocol, part_ids)
        source = "official folders"
    elif seed == 0 and (lists := committed(dataset, protocol)) is not None:
        source = f"committed lists {split_file(dataset, protocol, '*').name} (seed 0)"
        pool_parts = POOLS[(dataset, protocol)][0]
        pool = {i for p in pool_parts for i in part_ids.get(p, [])}
        listed = {i for ids in lists.values() for i in ids}
        missing = sorted(listed - pool)
        if missing and 2 * (len(listed) - len(missing)) < len(listed):
            # fewer than half of the listed ids are here: not a damaged copy of the official data but a dataset
            # of its own in the same layout (a custom or reduced folder); it is split by the same rule
            lists = expected_lists(dataset, protocol, part_ids, seed)
            source = (f"drawn at load time (seed {seed}, rule of engine/data/splits.py): the folder holds "
                      f"{len(listed) - len(missing)} of the {len(listed)} ids of the committed lists")
            notes.append(f"{base or 'the data folder'} is not the {dataset} copy the committed lists describe; its "
                         f"{len(pool)} ids are split by the seeded rule")
        elif missing:
            f = split_file(dataset, protocol, next(s for s, ids in lists.items() if missing[0] in ids))
            raise DataError(f"{f}: lists {len(missing)} id(s) absent from the data folder {base or ''} (first: "
                            f"{missing[0]}); restore the missing files (`python -m studies.data check "
                            f"{base or 'FOLDER'}` lists the folder), or use a folder holding fewer than half of "
                            f"the listed ids, which is split as a dataset of its own", f)
        extra = sorted(pool - listed) if not missing else []
        if extra:
            notes.append(f"{len(extra)} id(s) in the data are in no committed {dataset}/{protocol} list and are "
                         f"not used (first: {extra[0]})")
    else:
        lists = expected_lists(dataset, protocol, part_ids, seed)
        source = f"drawn at load time (seed {seed}, rule of engine/data/splits.py)"
    out = {s: [(where[i], i) for i in ids] for s, ids in lists.items()}
    for extra_part in ("official_val", "official_test"):
        if extra_part in part_ids:
            out[extra_part] = [(extra_part, i) for i in part_ids[extra_part]]
    return out, source, notes


# --------------------------------------------------------------------------- overlap guard

def _committed_ids(dataset: str, protocol: str, split: str | None) -> set[str] | None:
    lists = committed(dataset, protocol)
    if lists is None:
        return None
    if split is None:
        return {i for ids in lists.values() for i in ids}
    return set(lists.get(split, [])) if split in lists else None


def _pool(dataset: str) -> set[str] | None:
    out: set[str] = set()
    for protocol in PROTOCOLS:
        ids = _committed_ids(dataset, protocol, None)
        if ids:
            out |= ids
    return out or None


def check_eval_allowed(train_dataset: str, eval_dataset: str, eval_split: str, *, train_protocol: str | None = None,
                       eval_protocol: str | None = None, train_ids=None, eval_ids=None) -> None:
    """Raise :class:`DataError` when evaluating a model trained on ``train_dataset`` on ``eval_split`` of
    ``eval_dataset`` would test on images it may have trained on.

    Rules (docs/protocol.md §2.4, "Overlap"): 1921 of the 2594 ISIC 2018 ids are ISIC 2017 images (1800 train,
    121 val, 529 test), so

    * a model trained on ``isic2018`` is never tested on an ``isic2017`` held-out split (val, test), and a model
      trained on ``isic2017`` never on an ``isic2018`` held-out split (val, test, official_val, official_test);
    * within one ISIC dataset, when both protocols are given and differ, the training list of one and the
      evaluated list of the other must be disjoint (e.g. ``isic2017`` clean train vs paper test is refused);
    * when ``train_ids`` and ``eval_ids`` are given, they must be disjoint (any dataset).

    ``eval_split="train"`` is always allowed (a training-set score is not a test claim). Under ``paper``, ``val``
    means the test set.
    """
    tr, ev = _norm_name(train_dataset), _norm_name(eval_dataset)
    tp = normalise_protocol(train_protocol) if train_protocol else None
    ep = normalise_protocol(eval_protocol) if eval_protocol else None
    split = resolve_split(ep or "clean", str(eval_split).lower())
    if split in HELD_OUT and tr != ev and tr in ISIC and ev in ISIC:
        ev_ids = _committed_ids(ev, ep or "clean", split)
        tr_pool = _pool(tr)
        detail = ""
        if ev_ids and tr_pool:
            detail = f" ({len(ev_ids & tr_pool)} of its {len(ev_ids)} ids are {tr} images)"
        raise DataError(f"evaluation refused: a model trained on {tr} must not be tested on {ev} '{split}'{detail} "
                        f"-- ISIC 2017 and ISIC 2018 share images (docs/protocol.md §2.4, 'Overlap'); test it on "
                        f"{tr}'s own test split instead")
    if split in HELD_OUT and tr == ev and tr in ISIC and tp and ep and tp != ep:
        tr_ids = _committed_ids(tr, tp, "train")
        ev_ids = _committed_ids(ev, ep, split)
        if tr_ids is not None and ev_ids is not None and (common := tr_ids & ev_ids):
            raise DataError(f"evaluation refused: {len(common)} of the {len(ev_ids)} ids of {ev} '{split}' under "
                            f"protocol {ep} are in the {tp}-protocol training list of {tr} (e.g. {min(common)}); "
                            f"evaluate with the protocol the model was trained under")
    if train_ids is not None and eval_ids is not None:
        common = set(train_ids) & set(eval_ids)
        if common:
            raise DataError(f"evaluation refused: {len(common)} id(s) of {ev} '{split}' were training images (e.g. "
                            f"{min(common)}); evaluate on a split disjoint from the training set")


def _norm_name(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")
