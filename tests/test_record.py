"""engine.record is the one reader of a run record: who may name its files, and the typed views others use."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

#: the files of ``runs/<config_hash>/`` that engine.record parses
RUN_FILES = {"config.json", "env.json", "metrics.json", "complexity.json", "status.json", "history.csv",
             "per_image.csv"}

#: modules that may name a run's files in code, and why
NAMES_ALLOWED = {
    "engine/record.py": "the owner: reads and writes every file",
    "engine/train.py": "the writer: writes the files (and compares a stored config.json with its own)",
    "studies/audit.py": "checks that every file of the layout exists; reads them through load_record",
}
#: engine.record's raw JSON helpers are for the writer side only
RAW_READERS = {"read_json", "read_json_or_empty"}
RAW_READERS_ALLOWED = {"engine/record.py", "engine/train.py"}
#: migrated separately (issue 22): the reporting package has its own owner
NOT_CHECKED = ("studies/reporting/",)


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for top in ("engine", "studies"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(NOT_CHECKED):
                out.append((rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)))
    return out


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the string constants that are statements (docstrings, bare strings): prose, not code."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}


def test_only_engine_record_names_a_runs_files():
    offenders = []
    for rel, tree in _modules():
        if rel in NAMES_ALLOWED:
            continue
        prose = _docstring_nodes(tree)
        for n in ast.walk(tree):
            if (isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose
                    and n.value.rsplit("/", 1)[-1] in RUN_FILES):
                offenders.append(f"{rel}:{n.lineno}: {n.value!r}")
    assert not offenders, "read run records through engine.record (load_record / RunRecord):\n" + "\n".join(offenders)


def test_raw_json_helpers_are_the_writers_only():
    offenders = []
    for rel, tree in _modules():
        if rel in RAW_READERS_ALLOWED:
            continue
        for n in ast.walk(tree):
            name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
            if name in RAW_READERS:
                offenders.append(f"{rel}:{n.lineno}: {name}")
            if isinstance(n, ast.ImportFrom) and n.module == "engine.record":
                offenders += [f"{rel}:{n.lineno}: import {a.name}" for a in n.names if a.name in RAW_READERS]
    assert not offenders, "use load_record / RunRecord or engine.record.read_metrics:\n" + "\n".join(offenders)


def test_the_check_sees_a_reader():
    tree = ast.parse('"""Reads metrics.json."""\nimport json\nm = json.loads((d / "metrics.json").read_text())\n')
    prose = _docstring_nodes(tree)
    hits = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in prose
            and isinstance(n.value, str) and n.value in RUN_FILES]
    assert hits == ["metrics.json"]


# ------------------------------------------------------------------------------------ status
@pytest.mark.parametrize("content, expected", [
    ({"status": "done", "reason": None}, ("done", None)),
    ({"status": "failed", "reason": "diverged", "schema": 2}, ("failed", "diverged")),
    ({"status": "running"}, None),
    (["done"], None),
    ("{not json", None),
    (b"\xff\xfe", None),
    (None, None),  # no status.json: unfinished
])
def test_store_status_is_engine_records_with_its_time(tmp_path, content, expected):
    from engine.record import read_status
    from studies import store

    rec = tmp_path / "runs" / "abc"
    rec.mkdir(parents=True)
    path = rec / "status.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    st = store.read_status(rec)
    assert (st is None) == (read_status(rec) is None) == (expected is None)
    if expected is not None:
        assert (st.status, st.reason) == expected and st.mtime == path.stat().st_mtime
        assert store.is_done(rec) == (expected[0] == "done")


def test_store_status_of_unreadable_or_absent_records(tmp_path):
    from studies import store

    assert store.read_status(tmp_path / "never-started") is None
    (tmp_path / "file").write_text("")
    assert store.read_status(tmp_path / "file") is None  # a file where a record folder should be
    (tmp_path / "rec" / "status.json").mkdir(parents=True)
    assert store.read_status(tmp_path / "rec") is None  # a folder where status.json should be


# ------------------------------------------------------------------------------- typed views
def test_config_views(tmp_path):
    from engine.record import load_record

    rec = tmp_path / "abc"
    rec.mkdir()
    (rec / "config.json").write_text(json.dumps({"model": "unet", "model_overrides": {"width": 8},
                                                 "dataset": "isic2018", "protocol": "clean",
                                                 "recipe": {"size": 256, "epochs": 300}}))
    r = load_record(rec)
    assert (r.model, r.model_overrides, r.dataset, r.protocol, r.recipe_size, r.recipe_epochs) == (
        "unet", {"width": 8}, "isic2018", "clean", 256, 300)
    (rec / "config.json").write_text(json.dumps({"model": "unet"}))  # a record before overrides were recorded
    r = load_record(rec)
    assert r.model_overrides == {} and r.protocol is None and r.recipe_size is None


def test_read_metrics(tmp_path):
    from engine.record import read_metrics

    assert read_metrics(tmp_path) == {}
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"pooled_dsc": 0.5}}))
    assert read_metrics(tmp_path) == {"test": {"pooled_dsc": 0.5}}
    (tmp_path / "metrics.json").write_text("{torn")
    assert read_metrics(tmp_path) == {}


def test_started_resume_key_is_as_written_without_fallbacks(tmp_path):
    from engine.numerics import resume_key
    from engine.record import RESUME_KEY_FIELDS, load_record

    key = resume_key("cpu", "fp32", True)
    assert tuple(key) == RESUME_KEY_FIELDS
    rec = tmp_path / "abc"
    rec.mkdir()
    (rec / "env.json").write_text(json.dumps({"sessions": [{**key, "device": "cpu"},
                                                           {**key, "precision": "amp-fp16"}]}))
    assert load_record(rec).started_resume_key == key  # the first session's, not the last
    # a version-1 session: Session derives its key, the stored key says these were never recorded
    (rec / "env.json").write_text(json.dumps({"sessions": [{"device": "cpu", "amp": False, "fast_path": True}]}))
    r = load_record(rec)
    assert r.first_session.resume_key() == {"device_type": "cpu", "precision": "fp32", "numerics_version": None,
                                            "path": "fast"}
    assert r.started_resume_key == dict.fromkeys(RESUME_KEY_FIELDS)
    (rec / "env.json").write_text(json.dumps({"sessions": ["garbled"]}))
    assert load_record(rec).started_resume_key == dict.fromkeys(RESUME_KEY_FIELDS)


def test_resume_conflict_reads_the_started_key_through_the_record(tmp_path):
    from engine.checkpoint import resume_conflict
    from engine.config import RunConfig
    from engine.fastview import uses_fast_path
    from engine.numerics import precision_mode, resume_key
    from engine.record import record_dir_for

    cfg = RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0, data="d0")
    rec = record_dir_for(tmp_path, cfg.config_hash())
    (rec / "checkpoints").mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(1)}}, rec / "checkpoints" / "latest.pt")
    key = resume_key("cpu", precision_mode("cpu", cfg.resolved_recipe().amp), uses_fast_path(cfg.model, "cpu", None))
    env = rec / "env.json"

    env.write_text(json.dumps({"sessions": [key]}))
    assert resume_conflict(cfg, tmp_path) is None
    env.write_text(json.dumps({"sessions": [{**key, "precision": "amp-fp16"}, key]}))
    assert "precision 'amp-fp16' -> 'fp32'" in resume_conflict(cfg, tmp_path)
    env.write_text(json.dumps({"sessions": [{"device": "cpu", "amp": False}]}))  # predates the key: refused
    assert "numerics_version None" in resume_conflict(cfg, tmp_path)
    env.write_text("{torn")
    problem = resume_conflict(cfg, tmp_path)
    assert str(env) in problem and "--restart" in problem and len(problem.splitlines()) == 1
    (rec / "status.json").write_text(json.dumps({"status": "done"}))
    assert resume_conflict(cfg, tmp_path) is None  # finished: nothing to resume


# ------------------------------------------------------------------------------ update_metrics
def test_update_metrics_adds_fields_and_keeps_the_rest(tmp_path):
    from engine.record import atomic_write_json, read_metrics, update_metrics
    atomic_write_json(tmp_path / "metrics.json", {"dsc": 0.9, "best_epoch": 3})
    update_metrics(tmp_path, best_checkpoint={"bytes": 10, "sha256": "ab"})
    assert read_metrics(tmp_path) == {"dsc": 0.9, "best_epoch": 3, "best_checkpoint": {"bytes": 10, "sha256": "ab"}}


@pytest.mark.parametrize("content", [None, "[1, 2]", "{not json"])
def test_update_metrics_refuses_a_missing_or_broken_file_and_leaves_it(tmp_path, content):
    from engine.record import RecordError, update_metrics
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecordError, match="metrics.json"):
        update_metrics(tmp_path, x=1)
    if content is None:
        assert not path.exists()
    else:
        assert path.read_text() == content
