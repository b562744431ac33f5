"""Bad input: each case gives a one-line DataError naming the file and what to do (CLI exit 2), nothing half-written."""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.data import DataError, DataWarning, load_split
from engine.data.decode import read_mask
from engine.data.layouts import discover

IMG = "ISIC2018_Task1-2_Training_Input"
GT = "ISIC2018_Task1_Training_GroundTruth"


def _load(root, cache):
    return load_split("isic2018", "train", size=8, root=root, cache_dir=cache, seed=1)


def _expect(root, cache, fragment, what):
    with pytest.raises(DataError) as ei:
        _load(root, cache)
    msg = str(ei.value)
    assert "\n" not in msg
    assert fragment in msg, msg
    assert what in msg, msg
    # nothing half-written: no cache entry and no temporary folder
    data = cache / "data"
    assert not data.exists() or not [p for p in data.iterdir() if p.is_dir()]
    return msg


def test_good_fake_dataset_loads_pairs_by_id(fake_isic, tmp_path):
    root, base = fake_isic(n=6)
    expected = {}
    for k in range(6):  # a different mask per id: column k is the lesion
        m = np.zeros((12, 16), np.uint8)
        m[:, k] = 255
        Image.fromarray(m).save(base / GT / f"ISIC_{k:07d}_segmentation.png")
        expected[f"ISIC_{k:07d}"] = m // 255
    arr = load_split("isic2018", "train", size=(12, 16), root=root, cache_dir=tmp_path / "c", seed=1)
    assert arr.images.shape[1:] == (12, 16, 3) and not arr.synthetic and len(arr) == 4
    for iid, mask in zip(arr.ids, arr.masks):
        np.testing.assert_array_equal(mask, expected[iid])
    disc = discover("isic2018", base)
    assert all(p.mask.name == f"{p.id}_segmentation.png" and p.image.stem == p.id for p in disc.pairs())


def test_truncated_jpeg(fake_isic, tmp_path):
    root, base = fake_isic()
    f = base / IMG / "ISIC_0000002.jpg"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _expect(root, tmp_path / "c", "ISIC_0000002.jpg", "truncated or corrupt")


def test_zero_byte_file(fake_isic, tmp_path):
    root, base = fake_isic()
    (base / GT / "ISIC_0000001_segmentation.png").write_bytes(b"")
    _expect(root, tmp_path / "c", "ISIC_0000001_segmentation.png", "empty")


def test_image_without_mask(fake_isic, tmp_path):
    root, base = fake_isic()
    (base / GT / "ISIC_0000003_segmentation.png").unlink()
    msg = _expect(root, tmp_path / "c", "ISIC_0000003.jpg", "image without mask")
    assert "add the mask" in msg


def test_mask_without_image(fake_isic, tmp_path):
    root, base = fake_isic()
    (base / IMG / "ISIC_0000004.jpg").unlink()
    _expect(root, tmp_path / "c", "ISIC_0000004_segmentation.png", "mask without image")


def test_size_mismatch_is_an_error(fake_isic, tmp_path):
    root, base = fake_isic()
    fake_isic.write_mask(base / GT / "ISIC_0000005_segmentation.png", 20, 12)
    msg = _expect(root, tmp_path / "c", "ISIC_0000005_segmentation.png", "must have their image's size")
    assert "20x12" in msg and "16x12" in msg


def test_non_binary_mask_thresholded_with_warning(fake_isic, tmp_path):
    root, base = fake_isic()
    m = np.zeros((12, 16), np.uint8)
    m[:, :8] = 255
    m[0, :5] = 100  # 5 pixels below 128 -> background
    m[1, :3] = 200  # 3 pixels above -> lesion
    f = base / GT / "ISIC_0000000_segmentation.png"
    Image.fromarray(m).save(f)
    with pytest.warns(DataWarning, match=r"ISIC_0000000_segmentation\.png.*8 non-binary|8 non-binary.*ISIC_0000000"):
        arr = _load(root, tmp_path / "c")
    assert set(np.unique(arr.masks).tolist()) <= {0, 1}
    out, _, nonbin = read_mask(f, warn=False)
    assert nonbin == 8 and out[0, :5].sum() == 0 and out[1, :3].sum() == 3
    with pytest.warns(DataWarning, match="8 pixels not 0/255"):
        read_mask(f)


def test_label_map_mask_01_is_read_as_labels(tmp_path):
    f = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _, nonbin = read_mask(f)
    assert out.tolist() == [[0, 1], [1, 0]] and nonbin == 0


def test_rgb_mask_equal_channels_converted(fake_isic, tmp_path):
    root, base = fake_isic()
    f = base / GT / "ISIC_0000001_segmentation.png"
    g = np.asarray(Image.open(f))
    Image.fromarray(np.stack([g, g, g], -1)).save(f)
    arr = _load(root, tmp_path / "c")
    assert arr.masks.max() == 1


def test_rgb_mask_with_colour_is_an_error(fake_isic, tmp_path):
    root, base = fake_isic()
    f = base / GT / "ISIC_0000001_segmentation.png"
    g = np.asarray(Image.open(f))
    rgb = np.stack([g, g, g], -1).copy()
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(f)
    _expect(root, tmp_path / "c", "ISIC_0000001_segmentation.png", "colour mask")


def test_16bit_mask_scaled(tmp_path):
    f = tmp_path / "m16.png"
    a = np.zeros((4, 4), np.uint16)
    a[:2] = 65535
    Image.fromarray(a).save(f)
    out, _, nonbin = read_mask(f)
    assert out[:2].all() and not out[2:].any() and nonbin == 0
    b = np.zeros((4, 4), np.uint16)
    b[:1] = 255  # 8-bit values stored in 16 bits
    Image.fromarray(b).save(f)
    out, _, _ = read_mask(f)
    assert out[:1].all() and not out[1:].any()


def test_empty_folder(fake_isic, tmp_path):
    root, base = fake_isic()
    for p in (base / IMG).iterdir():
        p.unlink()
    msg = _expect(root, tmp_path / "c", IMG, "empty")
    assert "mask without image" not in msg  # one clear message, not one per mask


def test_duplicate_ids(fake_isic, tmp_path):
    root, base = fake_isic()
    fake_isic.write_image(base / IMG / "ISIC_0000002.png", 16, 12)
    _expect(root, tmp_path / "c", "ISIC_0000002", "duplicate image id")


def test_unexpected_file_type(fake_isic, tmp_path):
    root, base = fake_isic()
    (base / IMG / "notes.docx").write_bytes(b"x")
    _expect(root, tmp_path / "c", "notes.docx", "unexpected file")


def test_official_extras_are_ignored(fake_isic, tmp_path):
    root, base = fake_isic()
    fake_isic.write_image(base / IMG / "ISIC_0000001_superpixels.png", 16, 12)
    (base / IMG / "ISIC-2017_Training_Data_metadata.csv").write_text("id\n")
    (base / IMG / "LICENSE.txt").write_text("cc0")
    (base / GT / "ATTRIBUTION.txt").write_text("x")
    assert not discover("isic2018", base).problems
    assert len(_load(root, tmp_path / "c")) == 4  # train of 6 ids: floor(0.7*6 + 0.5)


def test_unreadable_file(fake_isic, tmp_path, monkeypatch):
    root, base = fake_isic()
    f = base / IMG / "ISIC_0000003.jpg"
    os.chmod(f, 0)
    try:
        if os.geteuid() == 0:  # root reads anything: make open() fail the way it does for other users
            import builtins

            from engine.data import decode

            real_open = builtins.open

            def fake_open(path, *a, **k):
                if str(path) == str(f):
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, *a, **k)

            monkeypatch.setattr(decode, "open", fake_open, raising=False)
        _expect(root, tmp_path / "c", "ISIC_0000003.jpg", "permission denied")
    finally:
        os.chmod(f, 0o644)


def test_missing_dataset_names_the_root(tmp_path):
    with pytest.raises(DataError, match="isic2017 not found.*EGEUNET_DATA"):
        load_split("isic2017", "train", root=tmp_path, cache_dir=tmp_path / "c")


def test_ph2_layout_with_bmps(fake_ph2, tmp_path):
    root, base = fake_ph2(n=5)
    arr = load_split("ph2", "train", size=8, root=root, cache_dir=tmp_path / "c", protocol="paper")
    test = load_split("ph2", "test", size=8, root=root, cache_dir=tmp_path / "c", protocol="paper")
    assert len(arr) + len(test) == 5 and not set(arr.ids) & set(test.ids)
    assert arr.masks.max() == 1 and arr.images.dtype == np.uint8
    # a case without its lesion mask
    os.remove(base / "PH2 Dataset images" / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp")
    with pytest.raises(DataError, match=r"IMD003\.bmp: image without mask"):
        load_split("ph2", "train", size=8, root=root, cache_dir=tmp_path / "c")


def test_cli_check_lists_every_problem_and_exits_2(fake_isic, capsys):
    from studies.data import main

    root, base = fake_isic()
    (base / IMG / "junk.gif").write_bytes(b"GIF")
    (base / GT / "ISIC_0000001_segmentation.png").unlink()
    f = base / IMG / "ISIC_0000002.jpg"
    f.write_bytes(f.read_bytes()[:60])
    assert main(["check", str(base)]) == 2
    out = capsys.readouterr().out.replace("\n", " ")
    for frag in ("junk.gif", "ISIC_0000001.jpg", "ISIC_0000002.jpg"):
        assert frag in out
    assert "3 error(s)" in out


def test_cli_error_is_one_line_exit_2(fake_isic, tmp_path, capsys):
    from studies.data import main

    root, base = fake_isic()
    (base / IMG / "ISIC_0000002.jpg").write_bytes(b"")
    rc = main(["summary", "--dataset", "isic2018", "--data-root", str(root), "--cache-dir", str(tmp_path / "c"),
               "--size", "8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "ISIC_0000002.jpg" in err and err.startswith("python -m studies.data: error:")


def _zip_dataset(base, zpath):
    with zipfile.ZipFile(zpath, "w") as z:
        for folder in (IMG, GT):
            for p in sorted((base / folder).iterdir()):
                z.write(p, f"{folder}/{p.name}")
            z.writestr(f"{folder}/LICENSE.txt", "cc0")
        z.writestr("__MACOSX/._x", "junk")


def test_cli_prepare_from_zip(fake_isic, tmp_path, capsys):
    from studies.data import main

    _, base = fake_isic(n=4)
    zpath = tmp_path / "isic2018.zip"
    _zip_dataset(base, zpath)
    cache = tmp_path / "cache"
    assert main(["prepare", "--from", str(zpath), "--dataset", "isic2018", "--cache-dir", str(cache),
                 "--size", "8"]) == 0
    src = cache / "sources" / "ISIC2018"
    assert len(list((src / IMG).glob("*.jpg"))) == 4
    arr = load_split("isic2018", "train", size=8, root=cache / "sources", cache_dir=cache, seed=1)
    assert not arr.info["cache_built"]  # prepare built it
    assert not [p for p in (cache / "sources").iterdir() if p.name.startswith(".")]


def test_cli_prepare_bad_zip_leaves_nothing(fake_isic, tmp_path, capsys):
    from studies.data import main

    _, base = fake_isic(n=4)
    (base / GT / "ISIC_0000002_segmentation.png").unlink()
    zpath = tmp_path / "isic2018.zip"
    _zip_dataset(base, zpath)
    cache = tmp_path / "cache"
    assert main(["prepare", "--from", str(zpath), "--dataset", "isic2018", "--cache-dir", str(cache)]) == 2
    assert "ISIC_0000002.jpg" in capsys.readouterr().err
    assert not (cache / "sources" / "ISIC2018").exists()
    assert not [p for p in (cache / "sources").iterdir()]
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04broken")
    assert main(["prepare", "--from", str(tmp_path / "bad.zip"), "--dataset", "isic2018",
                 "--cache-dir", str(cache)]) == 2
    assert "bad.zip" in capsys.readouterr().err
