"""studies.audit on fixture records: each violation it names is caught; a clean folder passes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    # the smoke suite declares one seed; a table of the ablation_ghpa name whose rows say budget cpu declares 3
    shutil.copytree(results2 / "smoke", results2 / "ablation_ghpa")
    table = results2 / "ablation_ghpa" / "results.csv"
    df = pd.read_csv(table)
    df.assign(budget="cpu").to_csv(table, index=False)
    findings, _, _ = audit(results2)
    assert any(f.check == "seeds" and f.warning for f in findings)
    assert main(["--results", str(results2)]) == 0
    assert main(["--results", str(results2), "--strict"]) == 1


def test_suite_filter_checks_only_those_tables_and_their_records(clean_results, tmp_path, capsys):
    results, recs = _copy(clean_results, tmp_path)
    shutil.copytree(results / "smoke", results / "ablation_ghpa")  # a second table that is 2 seeds short at cpu
    table = results / "ablation_ghpa" / "results.csv"
    pd.read_csv(table).assign(budget="cpu").to_csv(table, index=False)
    stray = results / "runs" / "0123456789ab"  # an incomplete record no table names
    stray.mkdir()
    shutil.copy(recs[0] / "config.json", stray / "config.json")
    assert main(["--results", str(results), "--strict"]) == 1
    assert main(["--results", str(results), "--strict", "--suite", "smoke"]) == 0
    assert f"{len(recs)} run records, 1 tables" in capsys.readouterr().out
    assert main(["--results", str(results), "--strict", "--suite", "ablation_ghpa"]) == 1
    assert main(["--results", str(results), "--suite", "smoke,nope"]) == 2
    assert "nope/results.csv" in capsys.readouterr().err


def test_bad_results_folder_exits_2(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ checkpoints (2 MB rule)


def _checkpoint_errors(results: Path) -> list[tuple[str, str]]:
    findings, _, _ = audit(results)
    return [(f.where, f.message) for f in findings if f.check == "checkpoint"]


def _big_checkpoint(rec: Path, size: int = 2_500_000) -> str:
    """Replace the run's best.pt by a file over 2 MB and record its size and SHA-256, as the trainer does."""
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (rec / "checkpoints" / "best.pt").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    _edit_json(rec / "metrics.json", lambda m: m.update(best_checkpoint={"bytes": size, "sha256": sha}))
    return sha


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_smoke_checkpoints_follow_the_2_mb_rule(clean_results):
    from engine.record import load_record

    for rec in sorted((clean_results / "runs").iterdir()):
        r = load_record(rec)
        assert 0 < r.best_checkpoint_bytes <= 2_000_000 and r.best_checkpoint_sha256
    assert _checkpoint_errors(clean_results) == []


def test_missing_small_checkpoint_is_caught(clean_results, tmp_path, capsys):
    results, recs = _copy(clean_results, tmp_path)
    (recs[0] / "checkpoints" / "best.pt").unlink()  # recorded as 0.3 MB: it should have been committed
    errors = _checkpoint_errors(results)
    assert len(errors) == 1 and errors[0][0] == f"runs/{recs[0].name}"
    assert "best.pt is missing, yet 0.3 MB" in errors[0][1]
    assert main(["--results", str(results)]) == 1
    assert "[checkpoint] best.pt is missing" in capsys.readouterr().out


def test_absent_large_checkpoint_with_its_sha256_passes(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    _big_checkpoint(recs[1])
    (recs[1] / "checkpoints" / "best.pt").unlink()  # a clone: over 2 MB, it is not in git
    assert _checkpoint_errors(results) == []
    assert main(["--results", str(results)]) == 0
    _edit_json(recs[1] / "metrics.json", lambda m: m.pop("best_checkpoint"))  # a record that keeps no SHA-256
    assert _checkpoint_errors(results) == [
        (f"runs/{recs[1].name}", "best.pt is missing and the record stores no SHA-256: a recreated checkpoint "
                                 "cannot be checked")]


def test_stamp_checkpoints_fills_schema_1_records_only(clean_results, tmp_path, capsys):
    """--stamp-checkpoints stores size and SHA-256 of a record's own best.pt where a schema-1 record has none, and
    leaves a record whose best.pt is another run's, an unfinished record and a stamped one as they are."""
    results, recs = _copy(clean_results, tmp_path)
    before = {r.name: json.loads((r / "metrics.json").read_text()) for r in recs}
    for r in recs:
        _edit_json(r / "metrics.json", lambda m: m.pop("best_checkpoint"))
    shutil.copy(recs[0] / "checkpoints" / "best.pt", recs[2] / "checkpoints" / "best.pt")  # another run's weights
    (recs[1] / "status.json").rename(recs[1] / "status.json.off")  # unfinished
    assert main(["--results", str(results), "--stamp-checkpoints"]) == 1  # recs[1] is now incomplete
    err = capsys.readouterr().err
    assert f"stamped runs/{recs[0].name}" in err and recs[1].name not in err and recs[2].name not in err
    assert json.loads((recs[0] / "metrics.json").read_text()) == before[recs[0].name]
    assert "best_checkpoint" not in json.loads((recs[2] / "metrics.json").read_text())
    assert "best_checkpoint" not in json.loads((recs[1] / "metrics.json").read_text())
    (recs[1] / "status.json.off").rename(recs[1] / "status.json")
    main(["--results", str(results), "--stamp-checkpoints"])
    assert f"stamped runs/{recs[1].name}" in capsys.readouterr().err
    assert json.loads((recs[1] / "metrics.json").read_text()) == before[recs[1].name]
    main(["--results", str(results), "--stamp-checkpoints"])  # nothing left to stamp
    assert "stamped" not in capsys.readouterr().err


def test_present_checkpoint_must_match_its_sha256(clean_results, tmp_path):
    results, recs = _copy(clean_results, tmp_path)
    shutil.copy(recs[0] / "checkpoints" / "best.pt", recs[2] / "checkpoints" / "best.pt")  # another run's weights
    errors = _checkpoint_errors(results)
    assert [w for w, _ in errors] == [f"runs/{recs[2].name}"]
    assert errors[0][1].startswith("best.pt differs from the SHA-256 its record stores")


def test_large_checkpoint_must_stay_out_of_git(clean_results, tmp_path):
    """In a git work tree: a best.pt over 2 MB is fine once git ignores it, a violation while git would commit it
    or has it in its index; a small best.pt that git ignores is a violation (it belongs with its run)."""
    repo = tmp_path / "repo"
    results, recs = _copy(clean_results, repo)
    _git(repo, "init", "-q")
    big = recs[0]
    _big_checkpoint(big)
    where = f"runs/{big.name}"

    # not ignored: `git add results` would commit it
    assert [(w, m.split(":")[0]) for w, m in _checkpoint_errors(results)] == [
        (where, "best.pt of 2.5 MB is over the 2.0 MB committed with a run and git does not ignore it")]
    # ignored next to the small ones (the repository's own .gitignore lines)
    (repo / ".gitignore").write_text(f"*.pt\n!results/runs/*/checkpoints/best.pt\n"
                                     f"results/runs/{big.name}/checkpoints/best.pt\n")
    assert _checkpoint_errors(results) == []
    assert main(["--results", str(results)]) == 0
    # committed anyway (forced into the index)
    _git(repo, "add", "-f", f"results/runs/{big.name}/checkpoints/best.pt")
    errors = _checkpoint_errors(results)
    assert len(errors) == 1 and errors[0][0] == where
    assert errors[0][1].startswith("best.pt of 2.5 MB is committed, over the 2.0 MB limit: `git rm --cached")
    assert main(["--results", str(results)]) == 1
    _git(repo, "rm", "-q", "--cached", f"results/runs/{big.name}/checkpoints/best.pt")
    assert _checkpoint_errors(results) == []
    # a small best.pt that git ignores would never be committed
    small = recs[1]
    with open(repo / ".gitignore", "a") as f:
        f.write(f"results/runs/{small.name}/checkpoints/best.pt\n")
    assert _checkpoint_errors(results) == [
        (f"runs/{small.name}", "best.pt of 0.3 MB is ignored by git: a best.pt of at most 2.0 MB is committed with "
                               "its run")]
    # the small ones committed are fine
    _git(repo, "add", "-f", f"results/runs/{small.name}/checkpoints/best.pt",
         f"results/runs/{recs[2].name}/checkpoints/best.pt")
    assert _checkpoint_errors(results) == []


def test_a_committed_resume_state_of_a_finished_run_is_a_warning(clean_results, tmp_path):
    """An unfinished run's latest.pt may be committed to carry it to another checkout (docs/campaign.md); once
    the run is done, the audit says to take it out of the index again."""
    repo = tmp_path / "repo"
    results, recs = _copy(clean_results, repo)
    _git(repo, "init", "-q")
    latest = recs[0] / "checkpoints" / "latest.pt"
    latest.write_bytes(b"resume state")
    assert not [f for f in audit(results)[0] if "latest.pt" in f.message]
    _git(repo, "add", "-f", str(latest.relative_to(repo)))
    found = [f for f in audit(results)[0] if "latest.pt" in f.message]
    assert len(found) == 1 and found[0].warning and found[0].where == f"runs/{recs[0].name}"
    assert f"git rm --cached results/runs/{recs[0].name}/checkpoints/latest.pt" in found[0].message
    assert main(["--results", str(results)]) == 0  # a warning: the audit still passes
