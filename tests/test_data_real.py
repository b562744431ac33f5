"""Assertions on the real ISIC data (marker ``realdata``; skipped when the data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data import load_split
from engine.data import cache as dcache
from engine.data.layouts import discover, locate

pytestmark = pytest.mark.realdata


def test_isic2018_has_2594_pairs_paired_by_id(real_data_root):
    disc = discover("isic2018", locate("isic2018", real_data_root))
    assert not disc.problems
    pairs = disc.pairs("train")
    assert len(pairs) == 2594 and len({p.id for p in pairs}) == 2594
    assert all(p.mask.name == f"{p.id}_segmentation.png" and p.image.stem == p.id for p in pairs)


def test_isic2017_official_counts(real_data_root):
    disc = discover("isic2017", locate("isic2017", real_data_root))
    assert not disc.problems
    assert {k: len(v) for k, v in disc.parts.items()} == {"train": 2000, "val": 150, "test": 529}


@pytest.mark.parametrize("dataset, protocol, sizes", [
    ("isic2018", "clean", {"train": 1816, "val": 259, "test": 519}),
    ("isic2018", "paper", {"train": 1816, "val": 778, "test": 778}),
    ("isic2017", "clean", {"train": 2000, "val": 150, "test": 529}),
    ("isic2017", "paper", {"train": 1505, "val": 645, "test": 645}),
])
def test_split_sizes_and_disjointness(real_cache, dataset, protocol, sizes):
    got = {s: load_split(dataset, s, protocol=protocol, size=64, root=real_cache.root, cache_dir=real_cache.path)
           for s in ("train", "val", "test")}
    assert {s: len(a) for s, a in got.items()} == sizes
    assert all(not a.info["cache_built"] and not a.synthetic and a.protocol == protocol for a in got.values())
    assert not set(got["train"].ids) & set(got["test"].ids)
    if protocol == "clean":
        assert not set(got["train"].ids) & set(got["val"].ids) and not set(got["val"].ids) & set(got["test"].ids)
    else:
        assert got["val"].split == "test" and got["val"].ids == got["test"].ids
    a = got["train"]
    assert a.images.shape[1:] == (64, 64, 3) and a.masks.shape[1:] == (64, 64)
    assert set(np.unique(a.masks[:50]).tolist()) == {0, 1}


def test_cache_reused_and_never_decodes(real_cache, monkeypatch):
    import PIL.Image

    built = dcache.STATS["built"]

    def boom(*a, **k):
        raise AssertionError("an image was decoded on a cache hit")

    monkeypatch.setattr(PIL.Image, "open", boom)
    for ds in ("isic2018", "isic2017"):
        a = load_split(ds, "train", size=64, root=real_cache.root, cache_dir=real_cache.path)
        assert not a.info["cache_built"]
    assert dcache.STATS["built"] == built
    assert len([p for p in (real_cache.path / "data").iterdir() if p.is_dir()]) == 2


def test_cache_content_matches_direct_decode(real_cache):
    from engine.data.decode import read_pair

    a = load_split("isic2018", "test", size=64, root=real_cache.root, cache_dir=real_cache.path)
    base = locate("isic2018", real_cache.root)
    for k in (0, len(a) // 2, len(a) - 1):
        iid = a.ids[k]
        img, msk, src, _ = read_pair(base / "ISIC2018_Task1-2_Training_Input" / f"{iid}.jpg",
                                     base / "ISIC2018_Task1_Training_GroundTruth" / f"{iid}_segmentation.png",
                                     (64, 64))
        assert np.array_equal(a.images[k], img) and np.array_equal(a.masks[k], msk)
        assert tuple(a.info["source_hw"][k]) == src == (192, 256)
