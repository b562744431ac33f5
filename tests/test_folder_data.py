"""``folder:PATH`` datasets (engine/data/folder.py): layout, mask rules, split lists written on first use, the
bad-data checks of the ISIC loaders, the data fingerprint, and a smoke training run on a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import (DataError, DataWarning, canonical_dataset, data_fingerprint, dataset_available,
                         is_dataset_name, load_split, pairs_fingerprint, split_id_lists)
from engine.data import folder as fmod
from engine.data.splits import draw_splits

REPO = Path(__file__).resolve().parents[1]
W, H = 24, 20


def make_folder(base: Path, n: int = 12, *, mask_name=lambda i, k: f"{i}.png", ext: str = ".png") -> Path:
    """``n`` pairs ``img00..``: random images, a mask whose lesion width encodes the index."""
    rng = np.random.default_rng(0)
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    for k in range(n):
        iid = f"img{k:02d}"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(base / "images" / f"{iid}{ext}")
        m = np.zeros((H, W), np.uint8)
        m[4:16, 2:3 + k] = 255
        Image.fromarray(m).save(base / "masks" / mask_name(iid, k))
    return base


@pytest.fixture
def lesions(tmp_path) -> Path:
    return make_folder(tmp_path / "lesions", mask_name=lambda i, k: f"{i}_segmentation.png" if k % 2 else f"{i}.png")


def name(p: Path) -> str:
    return f"folder:{p}"


# ----------------------------------------------------------------------------------------- names


def test_names_and_availability(lesions, tmp_path, monkeypatch):
    assert is_dataset_name(name(lesions)) and is_dataset_name("ISIC-2018") and is_dataset_name("synthetic")
    assert not is_dataset_name("folder:") and not is_dataset_name("folder:  ") and not is_dataset_name("isic2019")
    monkeypatch.chdir(tmp_path)
    assert canonical_dataset("folder:lesions") == f"folder:{lesions.resolve()}"
    assert canonical_dataset("ISIC_2017") == "isic2017"
    with pytest.raises(ValueError, match="unknown dataset"):
        canonical_dataset("isic2019")
    assert dataset_available("folder:lesions") and not dataset_available("folder:nothing-here")


def test_lowercased_name_finds_the_folder(tmp_path):
    """The run config lower-cases dataset names; the folder is still found (unique case-insensitive match)."""
    base = make_folder(tmp_path / "MixedCase" / "Lesions", n=3)
    assert fmod.folder_path(str(name(base)).lower()) == base.resolve()


# ----------------------------------------------------------------------------------------- loading


def test_pairs_by_id_mask_rules_and_all_split(lesions, tmp_path):
    # a {0, 1} label map and a non-binary mask (thresholded at 128 with a warning) on two ids
    Image.fromarray((np.arange(W)[None, :].repeat(H, 0) < 5).astype(np.uint8)).save(lesions / "masks" / "img00.png")
    soft = np.zeros((H, W), np.uint8)
    soft[:, :6] = 200
    soft[:, 6:9] = 100
    Image.fromarray(soft).save(lesions / "masks" / "img01_segmentation.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr = load_split(name(lesions), "all", size=(H, W), cache_dir=tmp_path / "c")
    assert any(issubclass(w.category, DataWarning) and "not binary" in str(w.message) for w in caught)
    assert not (lesions / "splits").exists(), "split 'all' must not write split lists"
    assert sorted(arr.ids) == [f"img{k:02d}" for k in range(12)] and arr.dataset == f"folder:{lesions.resolve()}"
    by_id = dict(zip(arr.ids, arr.masks))
    assert set(np.unique(arr.masks)) <= {0, 1}
    assert by_id["img00"][:, :5].all() and not by_id["img00"][:, 5:].any()
    assert by_id["img01"][:, :6].all() and not by_id["img01"][:, 6:].any()
    for k in range(2, 12):  # lesion width k + 1 identifies the pairing
        assert by_id[f"img{k:02d}"][4:16].sum(axis=1).tolist() == [k + 1] * 12


def test_split_lists_written_on_first_use_then_read(lesions, tmp_path):
    cache = tmp_path / "c"
    tr = load_split(name(lesions), "train", size=16, cache_dir=cache)
    files = sorted(p.name for p in (lesions / "splits").iterdir())
    assert files == ["clean_test.txt", "clean_train.txt", "clean_val.txt", "paper_test.txt", "paper_train.txt"]
    assert any("split lists written" in n for n in tr.info["notes"])
    ids = [f"img{k:02d}" for k in range(12)]
    for protocol in ("clean", "paper"):
        for split, want in draw_splits(ids, "folder", protocol, 0).items():
            text = (lesions / "splits" / f"{protocol}_{split}.txt").read_text()
            assert text.startswith("# egeunet split list: folder dataset")
            assert [ln for ln in text.splitlines() if not ln.startswith("#")] == want
    assert [len(load_split(name(lesions), s, size=16, cache_dir=cache)) for s in ("train", "val", "test")] == [8, 1, 3]
    assert tuple(sorted(tr.ids)) == tuple(sorted(load_split(name(lesions), "train", protocol="paper", size=16,
                                                            cache_dir=cache).ids))
    # the files are the split from now on: move one id from train to test
    fp_before = data_fingerprint(name(lesions), "clean", cache_dir=cache).id
    train_f, test_f = lesions / "splits" / "clean_train.txt", lesions / "splits" / "clean_test.txt"
    moved = sorted(tr.ids)[0]
    train_f.write_text("".join(ln + "\n" for ln in train_f.read_text().splitlines() if ln != moved))
    test_f.write_text(test_f.read_text() + moved + "\n")
    assert moved in load_split(name(lesions), "test", size=16, cache_dir=cache).ids
    assert data_fingerprint(name(lesions), "clean", cache_dir=cache).id != fp_before
    assert split_id_lists(name(lesions), "clean")["test"][-1] == moved


def test_unwritable_split_folder_draws_the_lists(lesions, tmp_path):
    """When the lists cannot be written (here ``splits`` is a file; a read-only folder is the usual case), they
    are drawn at load time by the same rule and a note says so."""
    (lesions / "splits").write_text("not a folder\n")
    arr = load_split(name(lesions), "val", size=16, cache_dir=tmp_path / "c")
    assert (lesions / "splits").read_text() == "not a folder\n"
    assert "drawn at load time" in arr.info["split_source"]
    assert any("cannot write the split lists" in n for n in arr.info["notes"])
    assert list(arr.ids) == draw_splits([f"img{k:02d}" for k in range(12)], "folder", "clean", 0)["val"]
    assert not list(lesions.glob(".splits-*")), "no temporary folder left behind"


def test_other_seeds_are_drawn_not_written(lesions, tmp_path):
    arr = load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c", seed=3)
    assert not (lesions / "splits").exists() and "seed 3" in arr.info["split_source"]


def test_too_small_for_a_split(tmp_path):
    base = make_folder(tmp_path / "tiny", n=3)
    with pytest.raises(DataError, match="'val' split of this folder dataset is empty"):
        load_split(name(base), "val", size=16, cache_dir=tmp_path / "c")
    assert len(load_split(name(base), "all", size=16, cache_dir=tmp_path / "c")) == 3


# ----------------------------------------------------------------------------------------- bad data


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:60])


BAD = {
    "image without mask": (lambda b: (b / "masks" / "img03.png").unlink(), "img03.png", "image without mask"),
    "mask without image": (lambda b: (b / "images" / "img04.png").unlink(), "img04.png", "mask without image"),
    "empty images folder": (lambda b: [p.unlink() for p in (b / "images").iterdir()], "images", "empty"),
    "missing masks folder": (lambda b: [p.unlink() for p in (b / "masks").iterdir()] and (b / "masks").rmdir(),
                             "masks", "missing masks folder"),
    "zero-byte file": (lambda b: (b / "images" / "img02.png").write_bytes(b""), "img02.png", "empty image"),
    "truncated image": (lambda b: _truncate(b / "images" / "img05.png"), "img05.png", "truncated or corrupt"),
    "size mismatch": (lambda b: Image.fromarray(np.zeros((10, 10), np.uint8)).save(b / "masks" / "img06.png"),
                      "img06.png", "must have their image's size"),
    "duplicate id": (lambda b: Image.open(b / "images" / "img07.png").save(b / "images" / "img07.jpg"), "img07",
                     "duplicate image id"),
    "jpeg mask": (lambda b: Image.open(b / "masks" / "img08.png").convert("L").save(b / "masks" / "img09.jpg"),
                  "img09.jpg", "JPEG mask"),
    "unexpected file": (lambda b: (b / "images" / "notes.docx").write_text("x"), "notes.docx", "unexpected file"),
    "dangling link": (lambda b: os.symlink(b / "nowhere.png", b / "images" / "img99.png"), "img99.png",
                      "broken symbolic link"),
    "colour mask": (lambda b: Image.fromarray(np.dstack([np.full((H, W), 255, np.uint8), np.zeros((H, W), np.uint8),
                                                         np.zeros((H, W), np.uint8)])).save(b / "masks" / "img10.png"),
                    "img10.png", "colour mask"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_line_naming_the_file(case, tmp_path):
    base = make_folder(tmp_path / "bad")
    damage, fragment, what = BAD[case]
    damage(base)
    with pytest.raises(DataError) as ei:
        data_fingerprint(name(base), cache_dir=tmp_path / "c")  # listing problems surface here already
        load_split(name(base), "all", size=16, cache_dir=tmp_path / "c")  # decoding problems here
    msg = str(ei.value)
    assert "\n" not in msg and fragment in msg and what in msg, msg
    data = tmp_path / "c" / "data"
    assert not data.exists() or not [p for p in data.iterdir() if p.is_dir()], "nothing half-written"


def test_listed_id_gone_and_partial_lists(lesions, tmp_path):
    load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")
    gone = split_id_lists(name(lesions), "clean")["val"][0]
    (lesions / "images" / f"{gone}.png").unlink()
    for m in (lesions / "masks").glob(f"{gone}*"):
        m.unlink()
    with pytest.raises(DataError, match=rf"clean_val.txt: lists 1 id\(s\) absent .*first: {gone}"):
        load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")
    (lesions / "splits" / "clean_val.txt").unlink()
    with pytest.raises(DataError, match="clean_val.txt: split list missing"):
        load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")
    for f in (lesions / "splits").glob("clean_*"):  # a protocol's lists all gone: drawn and written again
        f.unlink()
    assert len(load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")) == 8
    assert (lesions / "splits" / "clean_val.txt").is_file()


def test_id_listed_twice(lesions, tmp_path):
    load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")
    val = lesions / "splits" / "clean_val.txt"
    val.write_text(val.read_text() + split_id_lists(name(lesions))["train"][0] + "\n")
    with pytest.raises(DataError, match="is listed twice"):
        load_split(name(lesions), "train", size=16, cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------------------- identity


def test_fingerprint_follows_content_and_protocol(lesions, tmp_path):
    cache = tmp_path / "c"
    fp = data_fingerprint(name(lesions), "clean", cache_dir=cache)
    assert fp.pairs == 12 and fp.dataset == f"folder:{lesions.resolve()}" and len(fp.id) == 16
    assert data_fingerprint(name(lesions), "clean", cache_dir=cache).id == fp.id
    assert data_fingerprint(name(lesions), "paper", cache_dir=cache).id != fp.id
    pairs = pairs_fingerprint(name(lesions), cache_dir=cache).id
    m = np.array(Image.open(lesions / "masks" / "img02.png"))
    m[0, 0] = 255  # one pixel of one mask
    Image.fromarray(m).save(lesions / "masks" / "img02.png")
    assert data_fingerprint(name(lesions), "clean", cache_dir=cache).id != fp.id
    assert pairs_fingerprint(name(lesions), cache_dir=cache).id != pairs


def test_smoke_training_on_a_folder(lesions, tmp_path, smoke_config):
    """A smoke run on a folder writes its split lists, records the folder and its fingerprint, and another
    folder content gives another run identity."""
    from engine.record import load_record
    from engine.train import run_training

    cfg = smoke_config(dataset=name(lesions))
    res = run_training(cfg, tmp_path / "results", threads=1, cache_dir=tmp_path / "c")
    assert res.status == "done", res.reason
    assert (lesions / "splits" / "clean_train.txt").is_file()
    rec = load_record(res.record_dir)
    fp = data_fingerprint(name(lesions), "clean", cache_dir=tmp_path / "c").id
    assert rec.dataset == name(lesions).lower() or rec.dataset == name(lesions)
    assert rec.data_id == fp
    tested = {r["id"] for r in rec.per_image if r["split"] == "test"}
    assert tested == set(split_id_lists(name(lesions))["test"])
    hashes = {res.config_hash, smoke_config().config_hash()}
    # the same folder name with other content: another data id, another run
    other = make_folder(tmp_path / "other" / "lesions", n=10)
    hashes.add(smoke_config(dataset=name(other)).with_data(cache_dir=tmp_path / "c").config_hash())
    m = np.array(Image.open(lesions / "masks" / "img02.png"))
    m[0, 0] = 255
    Image.fromarray(m).save(lesions / "masks" / "img02.png")
    hashes.add(smoke_config(dataset=name(lesions)).with_data(cache_dir=tmp_path / "c").config_hash())
    assert len(hashes) == 4


def _run_accepts_folder() -> bool:
    try:
        from studies.suites import expand

        expand("smoke", datasets=["folder:/x"], budget="smoke")
    except Exception:  # noqa: BLE001 - SuiteError until studies/suites.py accepts folder datasets
        return False
    return True


@pytest.mark.skipif(not _run_accepts_folder(), reason="studies.suites.expand does not accept folder:PATH yet")
def test_studies_run_on_a_folder(lesions, tmp_path):
    """The runner CLI trains a suite on a folder dataset: split lists written, the run recorded under it."""
    env = {**os.environ, "EGEUNET_CACHE": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--budget", "smoke",
                           "--variants", "egeunet", "--dataset", name(lesions), "--threads", "1", "--results",
                           str(tmp_path / "r")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (lesions / "splits" / "clean_test.txt").is_file()
    manifest = [json.loads(ln) for ln in (tmp_path / "r" / "smoke" / "manifest.jsonl").read_text().splitlines()]
    assert [m["dataset"] for m in manifest] == [name(lesions.resolve())]
