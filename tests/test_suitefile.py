"""Suite files (``python -m studies.run --suite PATH.toml``): the format, the built-in suites written as
files, one-line errors for every kind of mistake, and a suite file with outside models run end to end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from studies import run as runcli
from studies.suitefile import SuiteFileError, dump_suite, load_suite
from studies.suitefile import main as suitefile_main
from studies.suites import SUITES, Suite, SuiteError, expand, get_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE_FILES = ROOT / "examples" / "suites"
EXAMPLE = ROOT / "examples" / "tinyseg"


def write(tmp_path: Path, text: str, name: str = "my_suite.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def tinyseg_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for m in [m for m in sys.modules if m.split(".")[0] == "tinyseg"]:
        del sys.modules[m]


# ------------------------------------------------------------------------------- the built-in suites


@pytest.mark.parametrize("name", list(SUITES))
def test_each_built_in_suite_written_as_a_file_loads_equal(name):
    path = SUITE_FILES / f"{name}.toml"
    assert path.is_file(), f"{path} is missing: python -m studies.suitefile {name} > {path}"
    assert load_suite(path) == SUITES[name]
    assert get_suite(str(path)) == SUITES[name]  # what --suite PATH.toml uses


def test_the_ghpa_ablation_file_declares_what_the_built_in_declares():
    suite = load_suite(SUITE_FILES / "ablation_ghpa.toml")
    built_in = SUITES["ablation_ghpa"]
    assert (suite.variants, suite.datasets, suite.seeds, suite.budget) == (
        built_in.variants, ("isic2018",), 5, "cpu")
    assert [r.model for r in expand(suite, budget="smoke")] == list(built_in.variants)


def test_the_suitefile_command_prints_a_suite_that_loads_back(capsys, tmp_path):
    assert suitefile_main(["compare"]) == 0
    path = write(tmp_path, capsys.readouterr().out, "compare.toml")
    assert load_suite(path) == SUITES["compare"]
    assert suitefile_main([str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such suite file" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(SUITES))
def test_the_example_files_are_what_suitefile_writes_within_80_columns(name):
    text = (SUITE_FILES / f"{name}.toml").read_text(encoding="utf-8")
    assert text == dump_suite(SUITES[name]), f"regenerate: python -m studies.suitefile {name} > {name}.toml"
    wide = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not wide, wide


@pytest.mark.parametrize("description, fits", [
    ("short", True),
    ("a description long enough to need more than one line of a suite file at eighty columns, " * 2 + "twice",
     True),
    ('quotes "like this", a back\\slash, two  spaces,\ta tab and ünïcode ☃ in a description that is too long',
     True),
    ("x" * 100, False),  # one word: cannot be split
    (" leading and trailing spaces in a description much longer than eighty columns, kept on one line ", False),
])
def test_long_descriptions_are_wrapped_and_read_back_equal(tmp_path, description, fits):
    s = Suite("wrapped", description, ("egeunet",), datasets=("synthetic",), seeds=1, budget="smoke")
    text = dump_suite(s)
    assert load_suite(write(tmp_path, text, "wrapped.toml")) == s
    assert fits == all(len(ln) <= 80 for ln in text.splitlines())


# ----------------------------------------------------------------------------------- a user's file

USER_SUITE = """\
    name = "tiny_bench"
    description = "TinySeg widths against EGE-UNet"
    datasets = ["synthetic"]
    seeds = 2
    budget = "smoke"
    reference = "EGE-UNet"

    variants = [
        { model = "egeunet", label = "EGE-UNet" },
        "tinyseg.model:build(width=4)",
        { model = "tinyseg.model:build", kwargs = { width = 8, deep_supervision = true }, label = "TinySeg-8 DS" },
        { model = "egeunet_x2", budgets = ["cpu", "paper"] },
    ]
"""


def test_a_user_suite_file(tmp_path, tinyseg_importable):
    s = load_suite(write(tmp_path, USER_SUITE))
    key8 = "tinyseg.model:build(deep_supervision=True, width=8)"
    assert s == Suite(
        "tiny_bench", "TinySeg widths against EGE-UNet",
        ("egeunet", "tinyseg.model:build(width=4)", key8),
        datasets=("synthetic",), seeds=2, seeds_at_budget={}, budget="smoke",  # a file's seeds hold at every budget
        labels={"egeunet": "EGE-UNet", key8: "TinySeg-8 DS"},
        extra_at_budget={"cpu": ("egeunet_x2",), "paper": ("egeunet_x2",)},
        models={"tinyseg.model:build(width=4)": "tinyseg.model:build", key8: "tinyseg.model:build"},
        overrides={"tinyseg.model:build(width=4)": {"width": 4}, key8: {"width": 8, "deep_supervision": True}},
        reference="egeunet",  # given by its label
    )
    runs = expand(s)  # the suite's budget: smoke, one seed
    assert [(r.variant, r.model, r.overrides) for r in runs] == [
        ("EGE-UNet", "egeunet", {}),
        ("tinyseg.model:build(width=4)", "tinyseg.model:build", {"width": 4}),
        ("TinySeg-8 DS", "tinyseg.model:build", {"width": 8, "deep_supervision": True}),
    ]
    assert len(expand(s, budget="cpu")) == 4 * 2
    assert [r.variant for r in expand(s, variants=["TinySeg-8 DS", "egeunet"])] == ["EGE-UNet", "TinySeg-8 DS"]
    assert load_suite(write(tmp_path, dump_suite(s), "again.toml")) == s  # dump_suite writes what it read


def test_defaults_and_array_of_tables(tmp_path):
    s = load_suite(write(tmp_path, """\
        [[variants]]
        model = "egeunet"

        [[variants]]
        model = "egeunet_no_gab"
        label = "+GHPA"
    """, "defaults.toml"))
    assert (s.name, s.variants, s.datasets, s.seeds, s.budget, s.reference) == (
        "defaults", ("egeunet", "egeunet_no_gab"), ("isic2018",), 5, "cpu", None)
    assert s.labels == {"egeunet_no_gab": "+GHPA"} and s.description == "suite file defaults.toml"


def test_list_and_dry_run_take_a_suite_file(tmp_path, tinyseg_importable, capsys):
    path = write(tmp_path, USER_SUITE)
    assert runcli.main(["--list", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tiny_bench: TinySeg widths against EGE-UNet" in out and "TinySeg-8 DS" in out
    assert "reference EGE-UNet" in " ".join(out.split())
    assert runcli.main(["--list", str(path), "--format", "csv"]) == 0
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(rows["label"]) == ["EGE-UNet", "tinyseg.model:build(width=4)", "TinySeg-8 DS", "egeunet_x2"]
    assert list(rows["budgets"]) == ["all", "all", "all", "cpu, paper"]
    assert runcli.main(["--suite", str(path), "--dry-run", "--results", str(tmp_path / "r"), "--format", "csv"]) == 0
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(rows["variant"]) == ["EGE-UNet", "tinyseg.model:build(width=4)", "TinySeg-8 DS"]
    assert set(rows["suite"]) == {"tiny_bench"} and rows["config_hash"].nunique() == 3


# ----------------------------------------------------------------------------------------- mistakes

GOOD = 'variants = ["egeunet", "egeunet_no_gab"]\n'


@pytest.mark.parametrize("text, message", [
    # unknown keys
    ("seed = 1\n" + GOOD,
     "unknown key 'seed'; allowed keys: name, description, variants, datasets, seeds, seeds_at_budget, budget, "
     "reference"),
    ('variants = [{ model = "egeunet", kwarg = { width = 8 } }]\n',
     "variants[0]: unknown key 'kwarg'; allowed keys: model, kwargs, label, budgets"),
    # wrong types
    ('seeds = "3"\n' + GOOD, 'seeds: must be an integer >= 1 (seeds per variant and dataset), got a string ("3")'),
    ("seeds = 0\n" + GOOD, "seeds: must be an integer >= 1 (seeds per variant and dataset), got an integer (0)"),
    ("seeds_at_budget = { gpu = 3 }\n" + GOOD,
     "seeds_at_budget: unknown budget 'gpu'; valid budgets: smoke, cpu, paper"),
    ("seeds_at_budget = { cpu = 0 }\n" + GOOD, "seeds_at_budget: cpu must be an integer >= 1, got an integer (0)"),
    ("seeds_at_budget = 3\n" + GOOD, "seeds_at_budget: must be a table of budget = seeds, e.g. { cpu = 3 }; "
                                     "got an integer (3)"),
    ('datasets = "synthetic"\n' + GOOD, "datasets: must be a list of dataset names from isic2018, isic2017, ph2, "
                                        "synthetic"),
    ("budget = 3\n" + GOOD, "budget: must be a string, one of smoke, cpu, paper; got an integer (3)"),
    ('variants = "egeunet"\n', "variants: must be a list of models"),
    ("variants = [3]\n", "variants[0]: must be a model name or a table"),
    ('variants = [{ model = "egeunet", label = 3 }]\n', "variants[0].label: must be a non-empty string"),
    ('variants = [{ model = "egeunet", kwargs = 8 }]\n',
     "variants[0].kwargs: must be a table of keyword arguments, e.g. { width = 8 }; got an integer (8)"),
    ('variants = [{ model = "egeunet", kwargs = { when = 1979-05-27 } }]\n',
     "variants[0].kwargs: keyword argument when: a date value is not allowed"),
    ('variants = [{ model = "egeunet", budgets = "paper" }]\n',
     "variants[0].budgets: must be a non-empty list of budgets from smoke, cpu, paper"),
    ('name = "my results"\n' + GOOD, "name: must be a folder name"),
    # unknown names
    ('variants = ["egeunet", "egeunet_foo"]\n', "variants[1]: unknown model 'egeunet_foo'; valid models: "),
    ('variants = [{ model = "egeunet_foo" }]\n', "variants[0].model: unknown model 'egeunet_foo'; valid models: "),
    ('variants = ["no_such_module_xyz:build"]\n',
     "variants[0]: model 'no_such_module_xyz:build': cannot import module 'no_such_module_xyz'"),
    ('variants = ["egeunet(width=)"]\n', "variants[0]: variant 'egeunet(width=)': the arguments are not k=v, ... with Python literal values"),
    ('datasets = ["synthetic", "isic2019"]\n' + GOOD,
     "datasets[1]: unknown dataset 'isic2019'; valid datasets: isic2018, isic2017, ph2, synthetic"),
    ('budget = "huge"\n' + GOOD, "budget: unknown budget 'huge'; valid budgets: smoke, cpu, paper"),
    ('variants = [{ model = "egeunet", budgets = ["fast"] }]\n',
     "variants[0].budgets: unknown budget 'fast'; valid budgets: smoke, cpu, paper"),
    # missing or empty variants
    ('datasets = ["synthetic"]\n', "missing key 'variants': a list of models"),
    ("variants = []\n", "variants: is empty; list at least one model"),
    ('variants = [{ label = "x" }]\n', "variants[0]: missing key 'model'"),
    # duplicates, reference, names of built-in suites
    ('variants = ["egeunet", { model = "egeunet", label = "again" }]\n',
     "variants[1]: variant 'egeunet' is already declared by variants[0]"),
    ('variants = [{ model = "egeunet", label = "A" }, { model = "egeunet_no_gab", label = "A" }]\n',
     "variants[1]: label 'A' is already declared by variants[0]"),
    ('reference = "unet32"\n' + GOOD, "reference: 'unet32' is not a variant of this suite; its variants: egeunet, "
                                      "egeunet_no_gab"),
    ("reference = 1\n" + GOOD, "reference: must be a string (a variant or its label), got an integer (1)"),
    ('name = "smoke"\n' + GOOD, "name: 'smoke' is a built-in suite, declared differently"),
    # syntax
    ("variants = [\"egeunet\"\nseeds = 2\n", "is not valid TOML: "),
    ("seeds = = 2\n", "is not valid TOML: Invalid value (at line 1, column 9)"),
])
def test_every_mistake_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SuiteFileError) as e:
        load_suite(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert runcli.main(["--suite", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m studies.run: error: {e.value}\n"


def test_missing_and_unreadable_files(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert runcli.main(["--suite", str(missing), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m studies.run: error: {missing}: no such suite file (give the path of a .toml "
                          "suite file, or a built-in suite: smoke, compare") and err.count("\n") == 1
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(SuiteFileError, match="dir.toml: is a folder, not a suite file"):
        load_suite(folder)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"variants = [\"\xff\"]\n")
    with pytest.raises(SuiteFileError, match="bin.toml: is not UTF-8 text"):
        load_suite(binary)
    assert issubclass(SuiteFileError, SuiteError)  # every CLI that knows SuiteError exits 2 on it


def test_a_path_like_unknown_suite_says_how_files_are_named(capsys):
    with pytest.raises(SuiteError) as e:
        get_suite("suites/mine.tml")
    assert str(e.value).endswith("; a suite file is a path ending in .toml")


def test_a_bad_file_from_the_command_line_is_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "variants = [\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "studies.run", "--suite", str(path), "--results", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"python -m studies.run: error: {path}: is not valid TOML: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ end to end


def test_a_suite_file_with_outside_models_runs_end_to_end(tmp_path):
    path = write(tmp_path, """\
        name = "tiny_e2e"
        datasets = ["synthetic"]
        seeds = 1
        budget = "smoke"
        reference = "TinySeg-4"
        variants = [
            { model = "tinyseg.model:build", kwargs = { width = 4 }, label = "TinySeg-4" },
            { model = "tinyseg.model:build", kwargs = { width = 6 }, label = "TinySeg-6" },
        ]
    """)
    results = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "studies.run", "--suite", str(path), "--threads", "1",
                           "--results", str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "suite tiny_e2e: 2 runs" in proc.stdout and "reference TinySeg-4" in proc.stdout
    table = pd.read_csv(results / "tiny_e2e" / "results.csv")
    assert list(table["variant"]) == ["TinySeg-4", "TinySeg-6"]
    assert (table["status"] == "done").all() and table["config_hash"].nunique() == 2
    assert table["params"].iloc[0] < table["params"].iloc[1]


def test_seeds_per_budget_in_a_file(tmp_path):
    plain = load_suite(write(tmp_path, 'name = "a"\n' + GOOD))
    assert [plain.default_seed_count(b) for b in ("smoke", "cpu", "paper")] == [1, 3, 5]  # the built-in rule
    given = load_suite(write(tmp_path, 'name = "b"\nseeds = 4\n' + GOOD))
    assert [given.default_seed_count(b) for b in ("cpu", "paper")] == [4, 4]
    both = load_suite(write(tmp_path, 'name = "c"\nseeds = 2\nseeds_at_budget = { paper = 6 }\n' + GOOD))
    assert [both.default_seed_count(b) for b in ("cpu", "paper")] == [2, 6]
    assert both.seeds_text() == "2 seeds at cpu, 6 at paper" and given.seeds_text() == "4 seeds"
    alike = load_suite(write(tmp_path, 'name = "d"\nseeds = 5\nseeds_at_budget = { cpu = 4, paper = 4 }\n' + GOOD))
    assert alike.seeds_text() == "4 seeds"  # the count every budget runs, not the unused default
