"""Suites: declarative tables, their expansion, and the CLI parts that need no training."""

from __future__ import annotations

import pytest

from zoo.registry import list_models
from studies import run as runcli
from studies.suites import SUITES, SuiteError, check_models_registered, expand, get_suite

EXPECTED_VARIANTS = {
    "ablation_macro": ["egeunet_plain_unet", "egeunet_no_gab", "egeunet_plain_conv", "egeunet"],
    "ablation_ghpa": ["egeunet", "egeunet_no_xy", "egeunet_no_zx", "egeunet_no_zy", "egeunet_no_dw",
                      "egeunet_only_xy", "egeunet_ghpa_g2", "egeunet_ghpa_g8", "egeunet_plain_conv"],
    "ablation_gab": ["egeunet", "egeunet_gab_no_mask", "egeunet_gab_dil_1111", "egeunet_gab_dil_1234",
                     "egeunet_gab_dil_2468", "egeunet_gab_g1", "egeunet_no_gab"],
    "ablation_ds": ["egeunet", "egeunet_no_ds", "egeunet_ds_unsup", "egeunet_ds_uniform", "egeunet_ds_reversed"],
    "width": ["egeunet_x0_5", "egeunet_x0_75", "egeunet", "egeunet_x1_5", "egeunet_x2"],
    "compare": ["egeunet", "unet32", "unext_s", "unext", "malunet", "transfuse_lite"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_VARIANTS))
def test_suite_variants(name):
    assert list(get_suite(name).variants) == EXPECTED_VARIANTS[name]


def test_every_suite_is_listed_and_small_smoke():
    assert set(SUITES) == set(EXPECTED_VARIANTS) | {"smoke"}
    smoke = get_suite("smoke")
    assert smoke.datasets == ("synthetic",) and smoke.budget == "smoke" and smoke.seeds == 1
    assert len(expand(smoke)) == len(smoke.variants) <= 4


@pytest.mark.parametrize("name", [n for n in SUITES if n.startswith("ablation") or n == "width"])
def test_ablations_default_to_isic2018(name):
    assert get_suite(name).datasets == ("isic2018",)


def test_expansion_counts():
    s = get_suite("ablation_ghpa")
    assert s.budget == "cpu" and len(expand(s)) == 9 * 1 * 3  # 3 seeds per cell at the cpu budget
    assert len(expand(s, budget="paper")) == 9 * 5 and s.seeds_text() == "3 seeds at cpu, 5 at paper"
    assert len(expand(s, budget="smoke")) == 9  # one seed at the smoke budget unless seeds are given
    assert len(expand(s, budget="smoke", seeds=range(2))) == 18
    assert len(expand(s, datasets=["isic2017", "isic2018"], seeds=[0, 3, 7])) == 9 * 2 * 3
    c = get_suite("compare")
    assert len(expand(c)) == 6 * 2 * 3
    paper = expand(c, budget="paper")
    assert len(paper) == 7 * 2 * 5 and {r.model for r in paper} >= {"transfuse_s"}
    assert "transfuse_s" not in {r.model for r in expand(c, budget="cpu")}


def test_expansion_fields_and_order():
    runs = expand("ablation_macro", budget="smoke", seeds=[0, 1], protocol="paper")
    assert [r.variant for r in runs[::2]] == ["baseline", "+GHPA", "+GAB", "+GHPA+GAB"]
    assert [r.model for r in runs[::2]] == EXPECTED_VARIANTS["ablation_macro"]
    assert {(r.protocol, r.budget, r.dataset, r.suite) for r in runs} == {
        ("paper", "smoke", "isic2018", "ablation_macro")}
    assert [r.seed for r in runs[:2]] == [0, 1]


def test_variant_filter():
    runs = expand("ablation_gab", variants=["egeunet_no_gab", "egeunet"], seeds=[0])
    assert [r.model for r in runs] == ["egeunet", "egeunet_no_gab"]  # suite order kept
    with pytest.raises(SuiteError, match="not in suite"):
        expand("ablation_gab", variants=["egeunet_x2"])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"budget": "huge"}, "unknown budget 'huge'; valid budgets: smoke, cpu, paper"),
        ({"protocol": "dirty"}, "unknown protocol 'dirty'; valid protocols: clean, paper"),
        ({"datasets": ["isic2019"]}, "unknown dataset 'isic2019'; valid datasets: isic2018, isic2017"),
    ],
)
def test_unknown_names(kwargs, pattern):
    with pytest.raises(SuiteError) as e:
        expand("smoke", **kwargs)
    assert pattern in str(e.value)


def test_unknown_suite_lists_valid_ones():
    with pytest.raises(SuiteError) as e:
        get_suite("ablation_xyz")
    assert "valid suites: smoke, compare, ablation_macro" in str(e.value)


def test_egeunet_variants_of_suites_are_registered():
    names = {m for n, s in SUITES.items() if n != "compare" for m in s.all_variants()}
    check_models_registered(names)
    with pytest.raises(SuiteError, match="unknown model 'nope'; valid models: "):
        check_models_registered(["egeunet", "nope"])


def test_compare_models_registered_when_baselines_exist():
    known = set(list_models())
    missing = set(get_suite("compare").all_variants()) - known
    if missing and not any(m in known for m in ("unet32", "malunet")):
        pytest.skip("baselines not registered yet")
    assert not missing, f"compare suite names unregistered models: {sorted(missing)}"


def test_cli_list(capsys):
    assert runcli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in SUITES:
        assert name in out
    assert runcli.main(["--list", "ablation_ghpa"]) == 0
    assert "egeunet_ghpa_g8" in capsys.readouterr().out
    assert runcli.main(["--list", "compare"]) == 0
    out = capsys.readouterr().out
    assert "transfuse_s" in out and "paper only" in out
    assert runcli.main(["--list", "ablation_macro"]) == 0
    assert "+GHPA" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "nope"], "unknown suite 'nope'; valid suites: smoke, compare"),
        (["--budget", "huge"], "unknown budget 'huge'; valid budgets: smoke, cpu, paper"),
        (["--protocol", "x"], "unknown protocol 'x'; valid protocols: clean, paper"),
        (["--dataset", "isic1999"], "unknown dataset 'isic1999'; valid datasets: isic2018"),
        (["--variants", "egeunet,nope"], "unknown model 'nope'; valid models: "),
        (["--variants", "egeunet_x2"], "variant 'egeunet_x2' is not in suite 'smoke'"),
        (["--executor", "slurm"], "unknown executor 'slurm'; valid executors: local, ray"),
        (["--seed-list", "0,a"], "--seed-list takes integers"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_unknown_names_exit_2(argv, message, capsys, tmp_path):
    assert runcli.main([*argv, "--results", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_help_mentions_everything(capsys):
    with pytest.raises(SystemExit) as e:
        runcli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--suite", "--budget", "--dataset", "--protocol", "--seeds", "--seed-list", "--data-root",
                 "--workers", "--results", "--executor", "--device", "--dry-run", "--list", "exit status"):
        assert flag in out
