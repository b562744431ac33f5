"""Preprocessing cache: built once, reused, rebuilt when a source file changes, safe under concurrency."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from engine.data import DataError, data_root, load_split
from engine.data import cache as dcache

IMG = "ISIC2018_Task1-2_Training_Input"


def _load(root, cache, **kw):
    return load_split("isic2018", "train", size=8, root=root, cache_dir=cache, seed=1, **kw)


def _entries(cache):
    return sorted(p for p in (cache / "data").iterdir() if p.is_dir())


def test_build_reuse_rebuild(fake_isic, tmp_path, monkeypatch):
    root, base = fake_isic(n=6)
    cache = tmp_path / "c"
    a = _load(root, cache)
    assert a.info["cache_built"]
    (entry,) = _entries(cache)
    mtime = (entry / "images.npy").stat().st_mtime_ns
    built = dcache.STATS["built"]
    # reuse: no decoding at all
    import PIL.Image

    def boom(*a, **k):
        raise AssertionError("decoded an image while loading from the cache")

    monkeypatch.setattr(PIL.Image, "open", boom)
    b = _load(root, cache)
    assert not b.info["cache_built"] and dcache.STATS["built"] == built
    assert (entry / "images.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(a.images, b.images) and a.ids == b.ids
    monkeypatch.undo()
    # a touched source file changes the key -> rebuild into a new entry
    f = base / IMG / "ISIC_0000000.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    c = _load(root, cache)
    assert c.info["cache_built"] and len(_entries(cache)) == 2


def test_arrays_are_memory_maps_and_read_only(fake_isic, tmp_path):
    root, _ = fake_isic(n=6, dataset="isic2017")
    arr = load_split("isic2017", "train", size=8, root=root, cache_dir=tmp_path / "c")
    assert isinstance(arr.images, np.memmap)  # official train = a contiguous block: zero copy
    assert not arr.images.flags.writeable and not arr.masks.flags.writeable
    paper = load_split("isic2017", "test", protocol="paper", size=8, root=root, cache_dir=tmp_path / "c", seed=1)
    assert not paper.images.flags.writeable and not paper.info["cache_built"]


def test_env_cache_dir(fake_isic, tmp_path, monkeypatch):
    root, _ = fake_isic(n=3)
    monkeypatch.setenv("EGEUNET_CACHE", str(tmp_path / "envcache"))
    assert dcache.cache_root() == tmp_path / "envcache"
    _load(root, None)
    assert _entries(tmp_path / "envcache")
    monkeypatch.delenv("EGEUNET_CACHE")
    assert dcache.cache_root() == dcache.Path.home() / ".cache" / "egeunet"


def test_concurrent_builders_make_one_entry(fake_isic, tmp_path, monkeypatch):
    root, _ = fake_isic(n=6)
    cache = tmp_path / "c"
    real = dcache.read_pair

    def slow(*a, **k):
        time.sleep(0.01)
        return real(*a, **k)

    monkeypatch.setattr(dcache, "read_pair", slow)
    results, errors = [], []

    def worker():
        try:
            results.append(_load(root, cache))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.info["cache_built"] for r in results) == 1
    assert len(_entries(cache)) == 1
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".tmp")]
    assert all(np.array_equal(r.images, results[0].images) for r in results)


def test_failed_build_leaves_nothing(fake_isic, tmp_path):
    root, base = fake_isic(n=6)
    f = base / IMG / "ISIC_0000005.jpg"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DataError, match="ISIC_0000005.jpg"):
        _load(root, tmp_path / "c")
    assert not [p for p in (tmp_path / "c" / "data").iterdir() if p.is_dir()]


def test_data_root_resolution(tmp_path, monkeypatch):
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("EGEUNET_DATA", str(tmp_path / "x"))
    assert data_root() == tmp_path / "x"
    monkeypatch.delenv("EGEUNET_DATA")
    r = data_root()
    assert r is None or r.name == "data"


def test_prepared_sources_are_found_without_root(fake_isic, tmp_path, monkeypatch):
    root, _ = fake_isic(n=3, dataset="isic2017")
    cache = tmp_path / "c"
    (cache / "sources").mkdir(parents=True)
    os.replace(root / "ISIC2017", cache / "sources" / "ISIC2017")
    monkeypatch.setenv("EGEUNET_DATA", str(tmp_path / "nothing-here"))
    arr = load_split("isic2017", "val", size=8, cache_dir=cache)
    assert len(arr) == 3
