"""The built-in synthetic dataset: deterministic, any size, flagged."""

from __future__ import annotations

import numpy as np

from engine.data import SegArrays, dataset_available, list_datasets, load_split


def test_defaults_flag_and_shapes():
    tr = load_split("synthetic", "train", size=32)
    va = load_split("synthetic", "val", size=32)
    te = load_split("synthetic", "test", size=32)
    assert (len(tr), len(va), len(te)) == (64, 16, 32)
    assert isinstance(tr, SegArrays) and tr.synthetic and tr.dataset == "synthetic"
    assert tr.images.shape == (64, 32, 32, 3) and tr.images.dtype == np.uint8
    assert tr.masks.shape == (64, 32, 32) and set(np.unique(tr.masks).tolist()) == {0, 1}
    assert not set(tr.ids) & set(te.ids)
    lf = tr.lesion_fraction()
    assert (lf > 0).all() and 0.03 < lf.mean() < 0.5
    # lesions are darker than the skin around them
    img = tr.images.astype(float).mean(-1)
    inside = (img * tr.masks).sum() / tr.masks.sum()
    outside = (img * (1 - tr.masks)).sum() / (1 - tr.masks).sum()
    assert inside < outside


def test_deterministic_prefix_and_seed():
    a = load_split("synthetic", "test", size=24, n=5, seed=3)
    b = load_split("synthetic", "test", size=24, n=8, seed=3)
    assert np.array_equal(a.images, b.images[:5]) and np.array_equal(a.masks, b.masks[:5])
    c = load_split("synthetic", "test", size=24, n=5, seed=4)
    assert not np.array_equal(a.images, c.images)


def test_any_size_non_square_and_tiny():
    x = load_split("synthetic", "train", size=(40, 56), n=3)
    assert x.images.shape == (3, 40, 56, 3)
    t = load_split("synthetic", "val", size=4, n=4)
    assert (t.masks.reshape(4, -1).sum(1) > 0).all()


def test_paper_protocol_val_is_test():
    v = load_split("synthetic", "val", protocol="paper", size=16)
    t = load_split("synthetic", "test", protocol="paper", size=16)
    assert v.split == "test" and v.info["requested_split"] == "val" and v.protocol == "paper"
    assert v.ids == t.ids


def test_registry_functions(tmp_path):
    assert list_datasets() == ["isic2018", "isic2017", "ph2", "synthetic"]
    assert dataset_available("synthetic")
    assert not dataset_available("ph2", root=tmp_path)
    assert list_datasets(available_only=True, root=tmp_path, cache_dir=tmp_path) == ["synthetic"]


def test_cli_summary_synthetic_with_timing(capsys):
    from studies.data import main

    assert main(["summary", "--dataset", "synthetic", "--size", "16", "--timing"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "epoch" in out
