"""Models from outside the package: ``package.module:callable`` names, ``egeunet.models`` entry points,
the output-contract check of outside models, keyword arguments in the run's config, and smoke suites
run end to end with the example plug-in ``examples/tinyseg`` (real ``python -m studies.run`` processes).

The entry-point tests do not need ``pip install -e examples/tinyseg``: they put a ``.dist-info``
folder declaring the entry points of ``examples/tinyseg/pyproject.toml`` on ``sys.path`` (what an
installation creates), so the registry discovers them through ``importlib.metadata`` as it would
for an installed plug-in.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from studies import run as runcli
from studies import store
from studies.suites import (
    RunSpec,
    SuiteError,
    check_models_registered,
    expand,
    parse_variant,
    split_variants,
    variant_key,
)
from zoo import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tinyseg"
TINYSEG_DS_PARAMS = 3186  # recorded by examples/tinyseg/tinyseg/registered.py


# ------------------------------------------------------------------------------------------ helpers


def write_dist_info(folder: Path, entry_points: dict[str, str], name: str = "egeunet-example-tinyseg") -> Path:
    """A ``<name>.dist-info`` under ``folder`` declaring ``entry_points`` in the ``egeunet.models`` group."""
    d = folder / f"{name.replace('-', '_')}-0.1.0.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (d / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    return folder


def example_entry_points() -> dict[str, str]:
    """The entry points the example package declares in its pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"][registry.ENTRY_POINT_GROUP])


def env_with(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    env.pop("EGEUNET_SCRATCH", None)
    return env


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studies.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry re-discovers entry points on its next use; its state is restored afterwards."""
    registry.list_models()  # the package's providers are imported once, before the snapshot
    saved = (dict(registry._REGISTRY), dict(registry._EXTERNAL), dict(registry._PLUGIN_ERRORS))
    modules = set(sys.modules)
    monkeypatch.setattr(registry, "_loaded", False)
    yield registry
    for target, old in zip((registry._REGISTRY, registry._EXTERNAL, registry._PLUGIN_ERRORS), saved):
        target.clear()
        target.update(old)
    for m in set(sys.modules) - modules:
        if m.split(".")[0] in ("tinyseg", "badmods") or m.startswith("outside_"):
            del sys.modules[m]


@pytest.fixture
def tinyseg_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for m in [m for m in sys.modules if m.split(".")[0] == "tinyseg"]:
        del sys.modules[m]


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- end to end (subprocesses)


def test_import_path_model_runs_a_smoke_suite_end_to_end(tmp_path):
    results = tmp_path / "results"
    proc = run_cli(["--suite", "smoke", "--budget", "smoke", "--variants", "tinyseg.model:build(width=4)",
                    "--threads", "1", "--results", str(results)], env_with(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(results / "smoke" / "results.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["variant"], row["model"], row["status"]) == ("tinyseg.model:build(width=4)", "tinyseg.model:build",
                                                              "done")
    sys.path.insert(0, str(EXAMPLE))
    try:
        from tinyseg.model import build

        assert row["params"] == _params(build(width=4)) != _params(build())
    finally:
        sys.path.remove(str(EXAMPLE))
    config = json.loads((store.run_dir(results, row["config_hash"]) / "config.json").read_text())
    assert config["model"] == "tinyseg.model:build" and config["model_overrides"] == {"width": 4}
    manifest = store.read_manifest(results, "smoke")
    assert [(e.model, e.overrides) for e in manifest] == [("tinyseg.model:build", {"width": 4})]


def test_entry_point_models_run_a_smoke_suite_end_to_end(tmp_path):
    eps = example_entry_points()
    assert eps == {"tinyseg": "tinyseg.model:build", "tinyseg_models": "tinyseg.registered"}
    site = write_dist_info(tmp_path / "site", eps)
    results = tmp_path / "results"
    proc = run_cli(["--suite", "smoke", "--budget", "smoke", "--variants", "tinyseg,tinyseg_ds",
                    "--threads", "1", "--results", str(results)], env_with(site, EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 done, 0 skipped" in proc.stdout
    table = pd.read_csv(results / "smoke" / "results.csv").set_index("variant")
    assert list(table.index) == ["tinyseg", "tinyseg_ds"]
    assert (table["status"] == "done").all()
    assert table.loc["tinyseg_ds", "params"] == TINYSEG_DS_PARAMS
    # without the entry points the names are unknown: one line, exit 2, nothing trained
    proc = run_cli(["--suite", "smoke", "--budget", "smoke", "--variants", "tinyseg", "--results",
                    str(tmp_path / "other")], env_with(EXAMPLE))
    assert proc.returncode == 2
    assert proc.stderr.startswith("python -m studies.run: error: unknown model 'tinyseg'; valid models: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "other" / "runs").exists()


# ------------------------------------------------------------------------------------ entry points


def test_entry_points_are_discovered(fresh_registry, tinyseg_importable, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(write_dist_info(tmp_path, example_entry_points())))
    reg = fresh_registry
    assert "tinyseg" not in reg.list_models() and "tinyseg_ds" not in reg.list_models()  # package models only
    assert {"tinyseg", "tinyseg_ds"} <= set(reg.list_models(outside=True))
    e = reg.get_entry("tinyseg")
    assert e.external and e.family == "external" and e.source == "entry point tinyseg = tinyseg.model:build"
    from tinyseg.model import build

    assert _params(reg.create_model("tinyseg", width=4)) == _params(build(width=4))
    ds = reg.get_entry("tinyseg_ds")  # registered by its module with @register_model: its facts are kept
    assert ds.external and ds.family == "tinyseg" and ds.source.startswith("entry point tinyseg_models")
    assert ds.params == TINYSEG_DS_PARAMS == _params(reg.create_model("tinyseg_ds"))
    assert reg.plugin_errors() == {}


def test_broken_entry_points_do_not_break_the_registry(fresh_registry, monkeypatch, tmp_path):
    eps = {"lost": "no_such_module_xyz:build", "lostmod": "no_such_module_xyz", "egeunet": "tinyseg.model:build"}
    monkeypatch.syspath_prepend(str(write_dist_info(tmp_path, eps, name="broken-plugin")))
    reg = fresh_registry
    assert "egeunet" in reg.list_models() and not reg.get_entry("egeunet").external  # never replaced
    errors = reg.plugin_errors()
    assert "already a registered model" in errors["egeunet"]
    assert errors["lostmod"].startswith("entry point lostmod = no_such_module_xyz failed to import: "
                                        "ModuleNotFoundError")
    with pytest.raises(reg.UnknownModelError, match="failed to import"):
        reg.get_entry("lostmod")
    with pytest.raises(reg.ExternalModelError) as e:  # a name = module:callable entry loads on first use
        reg.create_model("lost")
    assert "model 'lost': cannot load no_such_module_xyz:build: ModuleNotFoundError" in str(e.value)
    with pytest.raises(SuiteError) as e:
        check_models_registered(["lost"])
    assert "cannot load no_such_module_xyz:build" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------- import paths, contract

BAD_MODELS = '''
import torch
from torch import nn


class Conv(nn.Module):
    def __init__(self, out=1, size=None, weights=None, fail=False):
        super().__init__()
        self.conv = nn.Conv2d(3, out, 1)
        self.size, self.fail = size, fail
        if weights is not None:
            self.loss_weights = weights

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        y = self.conv(x)
        return y if self.size is None else y[..., : self.size, : self.size]


def good(width=1):
    """A one-layer model that follows the contract."""
    return Conv()


def two_channels():
    return Conv(out=2)


def half_size():
    return Conv(size=32)


def failing_forward():
    return Conv(fail=True)


def bad_weights():
    return Conv(weights=(1.0, 0.5))


def not_a_module():
    return "a string"


def returns_dict():
    class D(nn.Module):
        def forward(self, x):
            return {"logits": x[:, :1]}
    return D()


def needs_arg(depth):
    return Conv()


NOT_CALLABLE = 3
'''


@pytest.fixture
def badmods(monkeypatch, tmp_path, fresh_registry):
    (tmp_path / "badmods.py").write_text(textwrap.dedent(BAD_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return fresh_registry


@pytest.mark.parametrize("name, message", [
    ("badmods:two_channels", "logits have shape (1, 2, 64, 64); want B x 1 x H x W at input resolution "
                             "(1, 1, 64, 64)"),
    ("badmods:half_size", "logits have shape (1, 1, 32, 32)"),
    ("badmods:failing_forward", "forward on a 1x3x64x64 float image failed: RuntimeError: boom"),
    ("badmods:bad_weights", "loss_weights has 2 entries; want one per output (1 + 0 aux)"),
    ("badmods:not_a_module", "it returned a str, not a torch.nn.Module"),
    ("badmods:returns_dict", "forward returned dict; return SegOutput(logits, aux)"),
])
def test_contract_violations_are_one_line_naming_the_callable(badmods, name, message):
    with pytest.raises(badmods.ModelContractError) as e:
        badmods.create_model(name)
    text = str(e.value)
    assert text.startswith(f"model {name!r} does not follow the model contract (zoo/contract.py): ")
    assert message in text and "\n" not in text


@pytest.mark.parametrize("name, kwargs, message", [
    ("no_such_module_xyz:build", {}, "model 'no_such_module_xyz:build': cannot import module "
                                     "'no_such_module_xyz': ModuleNotFoundError"),
    ("badmods:missing", {}, "model 'badmods:missing': badmods has no attribute 'missing'"),
    ("badmods:NOT_CALLABLE", {}, "NOT_CALLABLE is a int, not a callable returning an nn.Module"),
    ("badmods:needs_arg", {}, "model 'badmods:needs_arg': calling it with () failed: TypeError"),
    ("badmods:good", {"nope": 1}, "calling it with (nope=1) failed: TypeError"),
])
def test_import_failures_are_one_line(badmods, name, kwargs, message):
    with pytest.raises(badmods.ExternalModelError) as e:
        badmods.create_model(name, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_good_import_path_model_is_built_and_described(badmods):
    m = badmods.create_model("badmods:good", width=3)
    assert m.training  # the probe restores the training mode
    e = badmods.get_entry("badmods:good")
    assert (e.external, e.family, e.source, e.description) == (True, "external", "badmods:good",
                                                               "A one-layer model that follows the contract.")
    assert "badmods:good" not in badmods.list_models(outside=True)  # imported on demand, never listed


def test_a_contract_violation_stops_the_suite_before_training(badmods, tmp_path, capsys):
    results = tmp_path / "r"
    assert runcli.main(["--variants", "egeunet,badmods:two_channels", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m studies.run: error: model 'badmods:two_channels' does not follow the model "
                          "contract") and len(err.splitlines()) == 1
    assert not (results / "runs").exists()


# ---------------------------------------------------------------------------- variants with arguments


def test_variants_split_at_top_level_commas_and_parse_to_a_canonical_key():
    text = "egeunet, pkg.m:build(width=8, dims=[1, 2]), pkg.m:build(mode='a,b')"
    assert split_variants(text) == ["egeunet", "pkg.m:build(width=8, dims=[1, 2])", "pkg.m:build(mode='a,b')"]
    assert parse_variant("pkg.m:build( width = 8, dims=(1, 2) )") == ("pkg.m:build", {"width": 8, "dims": [1, 2]})
    model, kw = parse_variant("pkg.m:build(width=8, flag=True, name='x')")
    assert variant_key(model, kw) == "pkg.m:build(flag=True, name='x', width=8)"
    assert parse_variant(variant_key(model, kw)) == (model, kw)
    assert parse_variant("egeunet") == ("egeunet", {})


@pytest.mark.parametrize("text, message", [
    ("pkg.m:build(width=", "unbalanced parentheses"),
    ("pkg.m:build(8)", "only keyword arguments (k=v) are allowed"),
    ("pkg.m:build(width=eight)", "the value of width is not a Python literal"),
    ("pkg.m:build(w=float('nan'))", "the value of w is not a Python literal"),
    ("pkg.m:build(w=1e999)", "keyword argument w: inf is not a finite number"),
    ("pkg.m:build(w={1: 2})", "keyword argument w: table keys must be strings"),
])
def test_bad_variant_arguments(text, message):
    with pytest.raises(SuiteError) as e:
        parse_variant(text)
    assert message in str(e.value)


def test_outside_models_join_any_suite_with_their_arguments(tinyseg_importable):
    runs = expand("ablation_macro", budget="smoke", variants=["+GHPA", "tinyseg.model:build(width=4)",
                                                               "egeunet", "tinyseg.model:build"])
    assert [(r.variant, r.model, r.overrides) for r in runs] == [
        ("+GHPA", "egeunet_no_gab", {}),
        ("+GHPA+GAB", "egeunet", {}),
        ("tinyseg.model:build(width=4)", "tinyseg.model:build", {"width": 4}),
        ("tinyseg.model:build", "tinyseg.model:build", {}),
    ]
    assert runs[2].key == "tinyseg.model:build(width=4)"
    with pytest.raises(SuiteError, match="variant 'egeunet_x2' is not in suite 'ablation_macro'"):
        expand("ablation_macro", variants=["egeunet_x2"])  # package models join no suite they are not in


def test_package_models_given_bad_arguments_fail_before_training():
    check_models_registered(["egeunet(bridge=False)", "egeunet(gab_mask=False)"])
    with pytest.raises(SuiteError) as e:
        check_models_registered([RunSpec("s", "v", "egeunet", "synthetic", "clean", "smoke", 0, {"nope": 1})])
    assert str(e.value).startswith("model 'egeunet': calling it with (nope=1) failed: TypeError")


def test_arguments_are_part_of_the_config_and_its_hash():
    from engine.train import RunConfig

    def spec(**kw):
        return RunSpec("smoke", "v", "pkg.m:build", "synthetic", "clean", "smoke", 0, kw)

    hashes = {store.config_hash(store.make_config(spec(**kw))) for kw in ({}, {"width": 4}, {"width": 8})}
    assert len(hashes) == 3
    assert store.make_config(spec(width=4)).model_overrides == {"width": 4}
    assert store.config_hash(store.make_config(spec(width=4))) == store.config_hash(store.make_config(spec(width=4)))
    # a variant without arguments keeps the hash it always had
    plain = expand("smoke", budget="smoke")[0]
    direct = RunConfig(model=plain.model, dataset="synthetic", protocol="clean", budget="smoke", seed=0)
    assert store.config_hash(store.make_config(plain)) == store.config_hash(direct)


def test_table_rows_of_one_model_with_different_arguments_are_different_variants(tmp_path):
    from studies.suitefile import suite_from_dict

    suite = suite_from_dict({"name": "t", "variants": [{"model": "egeunet", "kwargs": {"bridge": False},
                                                        "label": "no bridge"}, "egeunet"]}, "t.toml")
    entries = [store.ManifestEntry("aaaaaaaaaaaa", "egeunet", "synthetic", "clean", "smoke", 0),
               store.ManifestEntry("bbbbbbbbbbbb", "egeunet", "synthetic", "clean", "smoke", 0, {"bridge": False})]
    store.add_to_manifest(tmp_path, "t", entries)
    lines = (tmp_path / "t" / "manifest.jsonl").read_text().splitlines()
    assert "overrides" not in json.loads(lines[0]) and json.loads(lines[1])["overrides"] == {"bridge": False}
    for e in entries:
        rec = store.run_dir(tmp_path, e.config_hash)
        rec.mkdir(parents=True)
        (rec / "status.json").write_text(json.dumps({"status": "failed", "reason": "x"}))
    table = store.build_table(tmp_path, suite)
    assert list(table["variant"]) == ["no bridge", "egeunet"]  # the suite's order, one label each
    assert list(table["config_hash"]) == ["bbbbbbbbbbbb", "aaaaaaaaaaaa"]


def test_profile_and_budget_take_an_outside_model(tinyseg_importable, tmp_path, capsys):
    from studies.budget import main as budget_main
    from studies.profile import main as profile_main

    from zoo.registry import create_model

    model = create_model("tinyseg.model:build")
    assert budget_main(["--models", "tinyseg.model:build", "--max-params", str(_params(model)),
                        "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], int(r["params"]), r["ok"]) for r in rows] == [
        ("tinyseg.model:build", _params(model), "True")]
    with pytest.raises(SystemExit) as e:  # one parameter under its count: the gate fails
        budget_main(["--models", "tinyseg.model:build", "--max-params", str(_params(model) - 1)])
    assert e.value.code == 1
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert profile_main(["--models", "tinyseg.model:build", "--no-latency", "--csv", str(out)]) == 0
    prof = list(csv.DictReader(open(out)))
    assert prof[0]["model"] == "tinyseg.model:build" and int(prof[0]["params"]) == _params(model)
    with pytest.raises(SystemExit) as e:  # a module that is not there: one line, exit 2
        budget_main(["--models", "no_such_module_xyz:build"])
    assert e.value.code == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
