"""``python -m studies.fastcheck``: same-seed training through the plain model and the fast path."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from studies import fastcheck

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["--dataset", "synthetic", "--size", "32", "--epochs", "2", "--train-images", "16", "--seeds", "0,1"]


def test_fastcheck_trains_both_paths_per_seed_and_reuses_records(tmp_path, capsys):
    assert fastcheck.main([*ARGS, "--results", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "fastcheck.csv")
    assert list(df.columns) == list(fastcheck.COLUMNS)
    assert len(df) == 2 * 2 * 2  # seeds x paths x epochs
    assert set(zip(df["path"], df["fast_path"])) == {("plain", False), ("fast", True)}
    for seed, g in df.groupby("seed"):  # one config per seed, trained twice (two record folders)
        assert g["config_hash"].nunique() == 1
        assert (tmp_path / "plain" / "runs" / g["config_hash"].iloc[0]).is_dir()
        assert (tmp_path / "fast" / "runs" / g["config_hash"].iloc[0]).is_dir()
    p = df[df.path == "plain"].set_index(["seed", "epoch"])["val_pooled_dsc"]
    f = df[df.path == "fast"].set_index(["seed", "epoch"])["val_pooled_dsc"]
    assert (p - f).abs().max() < 0.05  # float32 round-off only, two short epochs
    out = capsys.readouterr().out
    assert "verdict" in out and "seed-to-seed" in out
    assert fastcheck.main([*ARGS, "--results", str(tmp_path)]) == 0  # finished records are reused
    assert "(reused)" in capsys.readouterr().out
    assert fastcheck.main([*ARGS, "--results", str(tmp_path), "--format", "json"]) == 0
    cap = capsys.readouterr()
    rows = json.loads(cap.out)  # stdout: only the rows, as in fastcheck.csv ...
    assert [list(r) for r in rows] == [list(fastcheck.COLUMNS)] * len(df)
    assert [r["val_pooled_dsc"] for r in rows] == pytest.approx(df["val_pooled_dsc"].tolist())
    assert "verdict" in cap.err and "(reused)" in cap.err  # ... the rest on stderr


def test_summary_compares_same_seed_with_seed_to_seed():
    rows = [{"seed": s, "path": p, "epoch": e, "val_pooled_dsc": v}
            for s, p, e, v in [(0, "plain", 1, 0.50), (0, "fast", 1, 0.51), (1, "plain", 1, 0.60), (1, "fast", 1, 0.58),
                               (0, "plain", 2, 0.70), (0, "fast", 2, 0.70), (1, "plain", 2, 0.74), (1, "fast", 2, 0.71)]]
    s = fastcheck.summarise(rows, [0, 1])
    assert s["max_same_seed_diff"] == pytest.approx(0.03)
    assert s["final_same_seed_diff"] == pytest.approx(0.03)
    assert s["max_seed_to_seed_diff"] == pytest.approx(0.10)  # |0.50 - 0.60|
    assert s["final_seed_to_seed_diff"] == pytest.approx(0.04)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "at least two seeds"),
    (["--seeds", "a,b"], "comma list of integers"),
    (["--dataset", "isic2017", "--data-root", "/nonexistent"], "not found"),
    (["--size", "8"], "--size must be"),
])
def test_bad_input_is_a_one_line_error(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fastcheck.main([*argv, "--results", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
