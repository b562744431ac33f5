"""studies.audit on fixture records: each violation it names is caught; a clean folder passes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studies.audit import audit, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory):
    """The smoke suite's three real runs, marked as launched from a clean commit (what a campaign records)."""
    results = tmp_path_factory.mktemp("audit") / "results"
    res = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--results", str(results)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for env_path in (results / "runs").glob("*/env.json"):
        env = json.loads(env_path.read_text())
        env["git_dirty"] = False
        for s in env["sessions"]:
            s["git_commit"], s["git_dirty"] = "0123456789abcdef", False
        env_path.write_text(json.dumps(env))
    return results


def _copy(clean_results, tmp_path) -> tuple[Path, list[Path]]:
    results = tmp_path / "results"
    shutil.copytree(clean_results, results)
    return results, sorted((results / "runs").iterdir())


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _errors(results: Path) -> list[tuple[str, str]]:
    findings, _, _ = audit(results)
    return [(f.check, f.where) for f in findings if not f.warning]


def test_clean_results_pass(clean_results, capsys):
    assert _errors(clean_results) == []
    assert main(["--results", str(clean_results)]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and all(len(line) <= 80 for line in out.splitlines())


def test_mixed_device_table_is_caught(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    _edit_json(recs[0] / "env.json", lambda e: e["sessions"][0].update(device_type="cuda", precision="amp-fp16"))
    errors = _errors(results)
    assert ("one numerics", "smoke/results.csv") in errors
    assert main(["--results", str(results)]) == 1


def test_resume_across_devices_is_caught(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    _edit_json(recs[1] / "env.json", lambda e: e["sessions"].append({**e["sessions"][0], "device_type": "cuda"}))
    assert ("one device", f"runs/{recs[1].name}") in _errors(results)


def test_recomputation_mismatch_is_caught(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    _edit_json(recs[0] / "metrics.json", lambda m: m["test"].update(pooled_dsc=m["test"]["pooled_dsc"] + 0.01))
    errors = _errors(results)
    assert ("recompute", f"runs/{recs[0].name}") in errors
    assert ("traceable", "smoke/results.csv") in errors  # the table no longer equals its record either


def test_dirty_run_is_caught(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    _edit_json(recs[2] / "env.json", lambda e: e["sessions"][0].update(git_dirty=True))
    assert _errors(results) == [("clean", f"runs/{recs[2].name}")]


def test_missing_record_is_caught(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    shutil.rmtree(recs[1])
    assert _errors(results) == [("traceable", "smoke/results.csv")]


def test_incomplete_record_and_seed_shortfall(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    (recs[0] / "per_image.csv").unlink()
    assert ("complete", f"runs/{recs[0].name}") in _errors(results)
    results2, _ = _copy(clean_results, tmp_path / "b")
    # the smoke suite declares one seed; declare more through a copied table of the ablation_ghpa name
    shutil.copytree(results2 / "smoke", results2 / "ablation_ghpa")
    findings, _, _ = audit(results2)
    assert any(f.check == "seeds" and f.warning for f in findings)
    assert main(["--results", str(results2)]) == 0
    assert main(["--results", str(results2), "--strict"]) == 1


def test_bad_results_folder_exits_2(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
