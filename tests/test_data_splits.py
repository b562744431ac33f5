"""Split rules, committed split lists and the ISIC overlap guard (no data needed unless marked realdata)."""

from __future__ import annotations

import hashlib

import pytest

from engine.data import DataError, check_eval_allowed
from engine.data.splits import (SPLIT_DIR, committed, draw_splits, read_split_file, split_counts, split_file)

EXPECTED = {
    ("isic2018", "paper"): {"train": 1816, "test": 778},
    ("isic2018", "clean"): {"train": 1816, "val": 259, "test": 519},
    ("isic2017", "paper"): {"train": 1505, "test": 645},
    ("isic2017", "clean"): {"train": 2000, "val": 150, "test": 529},
}


def test_counts_rule():
    assert split_counts(2594, "paper") == {"train": 1816, "test": 778}
    assert split_counts(2594, "clean") == {"train": 1816, "val": 259, "test": 519}
    assert split_counts(2150, "paper") == {"train": 1505, "test": 645}
    assert split_counts(200, "clean") == {"train": 140, "val": 20, "test": 40}
    for n in range(0, 60):
        assert sum(split_counts(n, "clean").values()) == n == sum(split_counts(n, "paper").values())


def test_draw_is_deterministic_order_free_and_nested():
    ids = [f"X{i:04d}" for i in range(100)]
    a = draw_splits(ids, "ds", "clean", seed=0)
    b = draw_splits(list(reversed(ids)), "ds", "clean", seed=0)
    assert a == b
    assert draw_splits(ids, "ds", "clean", seed=1) != a
    p = draw_splits(ids, "ds", "paper", seed=0)
    assert p["train"] == a["train"] and sorted(p["test"]) == sorted(a["val"] + a["test"])
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])


@pytest.mark.parametrize("key", list(EXPECTED))
def test_committed_lists_sizes_disjoint_and_headers(key):
    lists = committed(*key)
    assert lists is not None
    assert {s: len(v) for s, v in lists.items()} == EXPECTED[key]
    seen: set[str] = set()
    for split, ids in lists.items():
        assert ids == sorted(set(ids))
        assert not seen & set(ids)
        seen |= set(ids)
        text = split_file(*key, split).read_text()
        assert text.startswith("# egeunet split list")
        assert f"seed: 0" in text and "rule:" in text
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        assert digest in text
    if key[1] == "paper":
        assert "re-draw" in split_file(*key, "train").read_text()


def test_committed_lists_follow_the_rule():
    """Recompute the drawn lists from the committed pools alone (no data needed)."""
    pool18 = {i for v in committed("isic2018", "clean").values() for i in v}
    assert len(pool18) == 2594
    assert draw_splits(pool18, "isic2018", "clean") == committed("isic2018", "clean")
    assert draw_splits(pool18, "isic2018", "paper") == committed("isic2018", "paper")
    off = committed("isic2017", "clean")
    assert draw_splits(off["train"] + off["val"], "isic2017", "paper") == committed("isic2017", "paper")
    assert set(committed("isic2017", "paper")["test"]).isdisjoint(off["test"])


def test_split_files_are_packaged_names():
    names = sorted(p.name for p in SPLIT_DIR.glob("*.txt"))
    assert len(names) == 10
    assert all(read_split_file(SPLIT_DIR / n) for n in names)


# ------------------------------------------------------------------ overlap guard

@pytest.mark.parametrize("train, ev, split", [
    ("isic2018", "isic2017", "test"), ("isic2018", "isic2017", "val"),
    ("isic2017", "isic2018", "test"), ("isic2017", "isic2018", "val"),
    ("ISIC2018", "isic-2017", "test"),
])
def test_cross_isic_held_out_refused(train, ev, split):
    with pytest.raises(DataError) as ei:
        check_eval_allowed(train, ev, split)
    msg = str(ei.value)
    assert "refused" in msg and "Overlap" in msg and "\n" not in msg


def test_cross_isic_counts_in_message():
    with pytest.raises(DataError, match="529 of its 529 ids"):
        check_eval_allowed("isic2018", "isic2017", "test")
    with pytest.raises(DataError, match="121 of its 150 ids"):
        check_eval_allowed("isic2018", "isic2017", "val")


@pytest.mark.parametrize("train, ev, split, kw", [
    ("isic2018", "isic2018", "test", {}),
    ("isic2017", "isic2017", "val", {}),
    ("isic2018", "isic2017", "train", {}),
    ("isic2018", "ph2", "test", {}),
    ("synthetic", "isic2018", "test", {}),
    ("isic2018", "isic2018", "test", {"train_protocol": "paper", "eval_protocol": "clean"}),
    ("isic2017", "isic2017", "test", {"train_protocol": "paper", "eval_protocol": "clean"}),
])
def test_allowed(train, ev, split, kw):
    check_eval_allowed(train, ev, split, **kw)


def test_cross_protocol_overlap_refused():
    with pytest.raises(DataError, match="599 of the 645 ids"):
        check_eval_allowed("isic2017", "isic2017", "test", train_protocol="clean", eval_protocol="paper")
    # paper 'val' is the paper test set
    with pytest.raises(DataError):
        check_eval_allowed("isic2017", "isic2017", "val", train_protocol="clean", eval_protocol="official")


def test_explicit_ids_overlap():
    check_eval_allowed("ph2", "ph2", "test", train_ids=["a", "b"], eval_ids=["c"])
    with pytest.raises(DataError, match="1 id"):
        check_eval_allowed("ph2", "ph2", "test", train_ids=["a", "b"], eval_ids=["b", "c"])


# ------------------------------------------------------------------ real data

@pytest.mark.realdata
def test_regenerating_splits_gives_identical_files(real_data_root, tmp_path):
    from engine.data.make_splits import make_splits

    paths = make_splits(real_data_root, tmp_path)
    assert len(paths) == 10
    for p in paths:
        assert p.read_bytes() == (SPLIT_DIR / p.name).read_bytes(), p.name


@pytest.mark.realdata
def test_readme_overlap_numbers(real_data_root):
    pool18 = {i for v in committed("isic2018", "clean").values() for i in v}
    off = committed("isic2017", "clean")
    assert len(pool18 & set(off["train"])) == 1800
    assert len(pool18 & set(off["val"])) == 121
    assert len(pool18 & set(off["test"])) == 529
