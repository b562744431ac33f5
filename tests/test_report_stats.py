"""Seed-level statistics of the report (issue 19) on constructed run records with a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from studies.reporting.fake import FakeSuite, FakeVariant, fake_suite
from studies.reporting.load import iter_groups, load_results, read_per_image, run_dir
from studies.reporting.stats import (NO_INFERENCE, best_distinguishable, compare_with_reference,
                                     hierarchical_bootstrap, holm)
from studies.reporting.tables import build_table, caption, cell_frame, to_latex

N_BOOT = 1000


def _per_image(root: Path, suite: str):
    df = load_results(root, suite)
    group = next(iter_groups(df))
    per = {(str(r["variant"]), int(r["seed"])): read_per_image(run_dir(root, suite, r), group.dataset)
           for _, r in group.runs.iterrows()}
    return group, per


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """EGE-UNet; one variant 2 pp worse in every seed; one that differs only by image noise in seed 1;
    one 2 pp better."""
    root = tmp_path_factory.mktemp("stats")
    spec = FakeSuite("ablation_x", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", shift=-0.02, params=48016),
                                    FakeVariant("egeunet_no_zx", noise_seed=1, params=51900),
                                    FakeVariant("egeunet_x2", shift=+0.02, params=200000)],
                     seeds=(0, 1, 2), n_images=80)
    fake_suite(root, spec)
    group, per = _per_image(root, "ablation_x")
    tests = compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT)
    return root, group, per, tests


def _row(tests, variant, metric="pooled_dsc"):
    return tests[(tests["variant"] == variant) & (tests["metric"] == metric)].iloc[0]


def test_known_shift_is_detected_with_the_right_size(shifted):
    _root, _g, _per, tests = shifted
    worse = _row(tests, "egeunet_no_xy")
    assert worse["diff"] == pytest.approx(-0.02, abs=1e-3)
    assert worse["ci_low"] < -0.02 < worse["ci_high"] < 0
    assert worse["verdict"] == "worse" and worse["mark"] == "↓"
    better = _row(tests, "egeunet_x2")
    assert better["verdict"] == "better" and better["mark"] == "↑"
    assert _row(tests, "egeunet_no_xy", "pooled_miou")["verdict"] == "worse"


def test_image_noise_of_one_seed_is_not_detected(shifted):
    _root, _g, _per, tests = shifted
    r = _row(tests, "egeunet_no_zx")
    assert r["ci_low"] <= 0 <= r["ci_high"]
    assert r["verdict"] == "n.s." and r["mark"] == ""
    assert r["p"] > 0.3  # the two identical seeds are drawn alone often enough


def test_point_estimate_equals_the_results_table(shifted):
    root, group, _per, tests = shifted
    runs = group.runs
    ref = runs[runs["variant"] == "egeunet"].set_index("seed")["pooled_dsc"]
    other = runs[runs["variant"] == "egeunet_no_xy"].set_index("seed")["pooled_dsc"]
    assert _row(tests, "egeunet_no_xy")["diff"] == pytest.approx(float((other - ref).mean()), abs=1e-12)


def test_holm_is_applied_across_the_variants(shifted):
    _root, _g, _per, tests = shifted
    dsc = tests[tests["metric"] == "pooled_dsc"]
    assert np.allclose(dsc["p_holm"].to_numpy(), holm(dsc["p"].to_numpy()))
    assert "hierarchical bootstrap" in dsc["test"].iloc[0] and "Holm" in dsc["test"].iloc[0]
    assert "3 variants" in dsc["test"].iloc[0]
    # a mark never appears while the interval includes 0
    marked = tests[tests["mark"] != ""]
    assert ((marked["ci_low"] > 0) | (marked["ci_high"] < 0)).all()


def test_holm_family_leaves_out_one_seed_variants(tmp_path: Path):
    """The caption's Holm count is the variants that had a test: a one-seed variant is not in the family."""
    spec = FakeSuite("mixed", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", shift=-0.02),
                               FakeVariant("egeunet_no_zx", seeds=(0,)), FakeVariant("egeunet_x2", seeds=(0,))],
                     seeds=(0, 1, 2), n_images=60)
    fake_suite(tmp_path, spec)
    group, per = _per_image(tmp_path, "mixed")
    tests = compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT)
    assert set(tests.loc[tests["verdict"] == NO_INFERENCE, "variant"]) == {"egeunet_no_zx", "egeunet_x2"}
    assert "across the 1 variant of the table" in tests["test"].iloc[0]
    assert _row(tests, "egeunet_no_xy")["p_holm"] == pytest.approx(_row(tests, "egeunet_no_xy")["p"])


def test_pairing_by_image_matters():
    """A 1 pp shift under large image-to-image spread is found because images are paired."""
    rng = np.random.default_rng(0)
    frames_a, frames_b = {}, {}
    for s in range(3):
        area = rng.integers(5000, 9000, 200)
        d = np.clip(0.85 + rng.normal(0, 0.15, 200), 0.05, 0.98)
        for frames, dd in ((frames_a, d), (frames_b, d - 0.01)):
            tp = np.round(dd * area)
            frames[s] = pd.DataFrame({"id": [f"i{k}" for k in range(200)], "tp": tp, "fp": area - tp,
                                      "fn": area - tp})
    res = hierarchical_bootstrap(frames_a, frames_b, ("pooled_dsc",), n_boot=N_BOOT)["pooled_dsc"]
    assert res.excludes_zero and res.ci_high < 0
    # shuffled ids (pairing broken) would make the same data uninformative: check ids are what pairs
    shuffled = {s: f.assign(id=np.random.default_rng(s).permutation(f["id"].to_numpy())) for s, f in frames_b.items()}
    res2 = hierarchical_bootstrap(frames_a, shuffled, ("pooled_dsc",), n_boot=N_BOOT)["pooled_dsc"]
    assert (res2.ci_high - res2.ci_low) > 3 * (res.ci_high - res.ci_low)


def test_one_seed_says_no_inference(tmp_path: Path):
    spec = FakeSuite("one_seed", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", shift=-0.05)], seeds=(0,))
    fake_suite(tmp_path, spec)
    group, per = _per_image(tmp_path, "one_seed")
    tests = compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT)
    r = _row(tests, "egeunet_no_xy")
    assert r["verdict"] == NO_INFERENCE and r["mark"] == "" and np.isnan(r["ci_low"])
    assert r["diff"] == pytest.approx(-0.05, abs=1e-3)  # the point estimate is still given
    table = build_table(group, tests, per)
    frame = cell_frame(table)
    assert frame.loc["w/o H-W branch", "ΔDSC (pp) [95% CI]"] == "−5.00 (one seed)"
    assert "One seed: no inference" in caption(table)
    assert "↑" not in frame.to_string() and "↓" not in frame.to_string()
    body = to_latex(table).split("\\midrule", 1)[1]
    assert "\\textbf" not in body.split("&", 3)[-1].split("\\\\")[0]  # no bold score (cost columns may be)
    assert table.best.get("pooled_dsc") is None and table.best.get("pooled_miou") is None


def test_bold_only_when_best_is_distinguishable_from_runner_up(tmp_path: Path):
    clear = FakeSuite("bold_clear", [FakeVariant("egeunet"), FakeVariant("egeunet_x2", shift=0.03),
                                     FakeVariant("egeunet_no_xy", shift=-0.01)])
    fake_suite(tmp_path, clear)
    group, per = _per_image(tmp_path, "bold_clear")
    means = group.runs.groupby("variant")["pooled_dsc"].mean()
    assert best_distinguishable(means, per, "pooled_dsc", n_boot=N_BOOT) == "egeunet_x2"
    tests = compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT)
    latex = to_latex(build_table(group, tests, per))
    x2 = [line for line in latex.splitlines() if line.startswith("width $\\times$2")][0]
    assert x2.count("\\textbf") == 2  # DSC and mIoU

    tie = FakeSuite("bold_tie", [FakeVariant("egeunet"), FakeVariant("egeunet_no_zx", noise_seed=2),
                                 FakeVariant("egeunet_no_xy", shift=-0.03)])
    fake_suite(tmp_path, tie)
    group, per = _per_image(tmp_path, "bold_tie")
    means = group.runs.groupby("variant")["pooled_dsc"].mean()
    assert best_distinguishable(means, per, "pooled_dsc", n_boot=N_BOOT) is None
    table = build_table(group, compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT), per)
    assert "pooled_dsc" not in table.best and "pooled_miou" not in table.best
    # cost columns: the unique smallest is bold (deterministic counts)
    assert table.best.get("params") is None  # all three have the default 53374 parameters


def test_cost_bold_is_the_unique_smallest_as_printed(tmp_path: Path):
    spec = FakeSuite("bold_cost", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", params=48016, gmacs=0.0719),
                                   FakeVariant("egeunet_no_zx", params=51900, gmacs=0.0705)])
    fake_suite(tmp_path, spec)
    group, per = _per_image(tmp_path, "bold_cost")
    table = build_table(group, compare_with_reference(group.reference, group.variants, per, n_boot=200), per)
    assert table.best["params"] == "egeunet_no_xy"
    assert table.best["gmacs"] == "egeunet_no_zx"  # 0.070 is printed once
    spec = FakeSuite("bold_cost_tie", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", params=48016,
                                                                           gmacs=0.0719)])
    fake_suite(tmp_path, spec)
    group, per = _per_image(tmp_path, "bold_cost_tie")
    table = build_table(group, compare_with_reference(group.reference, group.variants, per, n_boot=200), per)
    assert "gmacs" not in table.best  # 0.0721 and 0.0719 both print as 0.072: no bold on a printed tie
    assert table.best["params"] == "egeunet_no_xy"


def test_unshared_seeds_are_not_paired(tmp_path: Path):
    spec = FakeSuite("partial", [FakeVariant("egeunet"), FakeVariant("egeunet_no_xy", shift=-0.02, seeds=(0, 1))])
    fake_suite(tmp_path, spec)
    group, per = _per_image(tmp_path, "partial")
    tests = compare_with_reference(group.reference, group.variants, per, n_boot=N_BOOT)
    assert set(tests["n_seeds"]) == {2}
