"""Records that cannot be confounded: data identity, resume refusal across numerics, clean git_dirty."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "100", **(env or {})}
    return subprocess.run([sys.executable, "-m", "studies.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=full_env)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_data_roots_give_two_runs_never_a_skip(fake_isic, tmp_path):
    root_a, _ = fake_isic(n=4, dataset="isic2017", root_name="a")
    root_b, base_b = fake_isic(n=4, dataset="isic2017", root_name="b")
    # same file names, other bytes: one mask of the second copy is broken (all background)
    first_mask = sorted(base_b.rglob("*_segmentation.png"))[0]
    fake_isic.write_mask(first_mask, value=0)
    results = tmp_path / "results"
    common = ("--suite", "smoke", "--variants", "egeunet", "--dataset", "isic2017", "--budget", "smoke",
              "--results", str(results))
    env = {"EGEUNET_CACHE": str(tmp_path / "cache")}
    a = _run(*common, "--data-root", str(root_a), env=env)
    assert a.returncode == 0, a.stderr
    b = _run(*common, "--data-root", str(root_b), env=env)
    assert b.returncode == 0, b.stderr
    assert "1 runs (0 already done)" in b.stdout and "1 done, 0 skipped" in b.stdout
    records = sorted((results / "runs").iterdir())
    assert len(records) == 2
    data_ids = {json.loads((r / "config.json").read_text())["data"] for r in records}
    assert len(data_ids) == 2
    table = pd.read_csv(results / "smoke" / "results.csv")
    assert len(table) == 2 and set(table["data"]) == data_ids
    # the same data again is a skip
    again = _run(*common, "--data-root", str(root_a), env=env)
    assert again.returncode == 0 and "1 runs (1 already done)" in again.stdout


@pytest.fixture(scope="module")
def partial_record(tmp_path_factory):
    """A real smoke record made unfinished (status.json removed): what a killed run leaves."""
    results = tmp_path_factory.mktemp("partial") / "results"
    res = _run("--suite", "smoke", "--variants", "egeunet", "--results", str(results))
    assert res.returncode == 0, res.stderr
    (rec,) = (results / "runs").iterdir()
    (rec / "status.json").unlink()
    return results, rec


@pytest.mark.parametrize("key, value", [("device_type", "cuda"), ("precision", "amp-fp16"),
                                        ("numerics_version", 0), ("path", "plain")])
def test_resume_refused_across_device_precision_numerics_and_path(partial_record, tmp_path, key, value):
    src_results, src_rec = partial_record
    results = tmp_path / "results"
    shutil.copytree(src_results, results)
    rec = results / "runs" / src_rec.name
    env_path = rec / "env.json"
    env = json.loads(env_path.read_text())
    env["sessions"][0][key] = value
    env_path.write_text(json.dumps(env))
    before = _tree_digest(rec)
    res = _run("--suite", "smoke", "--variants", "egeunet", "--results", str(results))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and rec.name in lines[0] and key in lines[0] and "--restart" in lines[0]
    assert _tree_digest(rec) == before  # the record is untouched
    again = _run("--suite", "smoke", "--variants", "egeunet", "--results", str(results), "--restart")
    assert again.returncode == 0, again.stderr
    assert (rec / "status.json").exists()
    fresh = json.loads(env_path.read_text())
    assert len(fresh["sessions"]) == 1 and fresh["sessions"][0][key] != value


def test_corrupt_latest_checkpoint_is_named_and_restart_recovers(partial_record, tmp_path):
    src_results, src_rec = partial_record
    results = tmp_path / "results"
    shutil.copytree(src_results, results)
    latest = results / "runs" / src_rec.name / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    res = _run("--suite", "smoke", "--variants", "egeunet", "--results", str(results))
    assert res.returncode == 2
    assert str(latest) in res.stderr and "--restart" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _run("--suite", "smoke", "--variants", "egeunet", "--results", str(results),
                "--restart").returncode == 0


def test_git_dirty_is_false_for_a_run_in_a_clean_clone(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    from engine.env import CODE_PATHS

    code_changes = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=REPO,
                                  capture_output=True, text=True).stdout
    if code_changes.strip():
        pytest.skip("this checkout has uncommitted code changes: its clone would not hold the code under test")
    runs = clone / "results" / "runs"
    committed = set(runs.iterdir()) if runs.is_dir() else set()
    res = _run("--suite", "smoke", "--variants", "egeunet", "--results", str(clone / "results"), cwd=clone,
               env={"PYTHONPATH": str(clone)})
    assert res.returncode == 0, res.stderr
    (rec,) = set(runs.iterdir()) - committed
    env = json.loads((rec / "env.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    assert env["git_commit"] == head and env["git_dirty"] is False
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True,
                          text=True).stdout.strip()  # the suite did write into the checkout


def test_run_record_reads_old_records_and_names_a_corrupt_file(tmp_path):
    from engine.record import RECORD_SCHEMA, RecordError, load_record, write_status

    rec = tmp_path / "runs" / "abc"
    rec.mkdir(parents=True)
    # a version-1 record: no schema in status.json, sessions without device_type / precision / numerics
    (rec / "status.json").write_text(json.dumps({"status": "done", "reason": None}))
    (rec / "env.json").write_text(json.dumps({"device": "cpu", "git_commit": "c0ffee", "git_dirty": True,
                                              "sessions": [{"device": "cuda:0", "amp": True, "fast_path": False},
                                                           {"device": "cpu", "amp": False, "fast_path": True}]}))
    (rec / "metrics.json").write_text(json.dumps({"test": {"pooled_dsc": 0.5}, "epochs": 3}))
    r = load_record(rec)
    assert r.schema == 1 and r.done and r.test_metrics["pooled_dsc"] == 0.5 and r.epochs == 3
    assert [s.resume_key() for s in r.sessions] == [
        {"device_type": "cuda", "precision": "amp-fp16", "numerics_version": None, "path": "plain"},
        {"device_type": "cpu", "precision": "fp32", "numerics_version": None, "path": "fast"}]
    assert r.device_label == "cuda:0 -> cpu" and r.commit == "c0ffee+dirty" and r.data_id is None
    write_status(rec, "done")
    assert load_record(rec).schema == RECORD_SCHEMA
    (rec / "metrics.json").write_text("{not json")
    with pytest.raises(RecordError, match=str(rec / "metrics.json")):
        load_record(rec)
    (rec / "metrics.json").unlink()
    (rec / "status.json").write_text(json.dumps({"status": "done", "schema": RECORD_SCHEMA + 1}))
    with pytest.raises(RecordError, match="newer"):
        load_record(rec)
