"""Kill-and-resume (a real SIGKILLed subprocess) and record atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import record
from engine.record import atomic_write_json, atomic_write_text, is_finished, load_record
from engine.train import RunConfig, run_training

THREADS = 1
REPO = Path(__file__).resolve().parents[1]
# 8 epochs of 24 images: long enough to be killed twice mid-run (fast-path epochs are short), short enough
CFG = {"model": "egeunet", "dataset": "synthetic", "budget": "smoke", "seed": 7,
       "recipe": {"epochs": 8, "max_train_images": 24}}

SCRIPT = """
import json, os, signal, sys
import engine.train
from engine.train import RunConfig, run_training
kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
if kill_at is not None:  # SIGKILL this process right after latest.pt for epoch kill_at is on disk
    save = engine.train.save_latest

    def save_then_die(ckpt_dir, state):
        save(ckpt_dir, state)
        if int(state["epoch"]) >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    engine.train.save_latest = save_then_die
cfg = RunConfig(**json.loads(sys.argv[2]))
res = run_training(cfg, sys.argv[1], threads=int(sys.argv[3]), progress=False, profile=False)
print(res.status, res.resumed_from_epoch)
"""


def _spawn(results: Path, kill_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(THREADS)}
    args = [str(results), json.dumps(CFG), str(THREADS)] + ([str(kill_at)] if kill_at is not None else [])
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epoch_of(latest: Path) -> int | None:
    try:
        return int(torch.load(latest, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - absent (atomic writes: never partial)
        return None


def _kill_after_epoch(results: Path, record_dir: Path, epoch: int, timeout: float = 240) -> int:
    """Run a training subprocess that SIGKILLs itself as soon as ``latest.pt`` holds ``epoch`` (a fixed point,
    so the test cannot race the training); return the epoch ``latest.pt`` holds afterwards."""
    proc = _spawn(results, kill_at=epoch)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the training subprocess did not reach its kill point in time")
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {out}\n{err[-2000:]}"
    got = _epoch_of(record_dir / "checkpoints" / "latest.pt")
    assert got == epoch, f"latest.pt holds epoch {got}, expected {epoch}"
    return got


def _model_state(record_dir: Path, name: str) -> dict:
    return torch.load(record_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _strip_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (same config, seed and threads)."""
    res = run_training(RunConfig(**CFG), tmp_path_factory.mktemp("reference"), threads=THREADS, progress=False,
                       profile=False)
    assert res.status == "done", res.reason
    return res


def test_sigkilled_run_resumes_to_the_same_result(reference, tmp_path):
    cfg = RunConfig(**CFG)
    record_dir = tmp_path / "runs" / cfg.config_hash()
    first = _kill_after_epoch(tmp_path, record_dir, 1)
    assert not is_finished(record_dir), "the run finished before it could be killed"
    assert first < cfg.resolved_recipe().epochs
    # second session, killed again after the next epoch: resumes more than once
    second = _kill_after_epoch(tmp_path, record_dir, first + 1)
    assert not is_finished(record_dir) and second == first + 1
    # third session finishes (in a subprocess as well)
    proc = _spawn(tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.split()[0] == "done"
    assert is_finished(record_dir)
    rec, ref = load_record(record_dir), load_record(reference.record_dir)
    assert rec.metrics["test"] == ref.metrics["test"]
    assert rec.metrics["best_epoch"] == ref.metrics["best_epoch"]
    assert rec.metrics["resumed_from_epoch"] is not None
    assert _strip_seconds(rec.history) == _strip_seconds(ref.history)
    assert rec.per_image == ref.per_image
    for name in ("latest", "best"):
        assert _same_state(_model_state(record_dir, name), _model_state(reference.record_dir, name)), name
    assert len(rec.env["sessions"]) == 3
    assert not list(record_dir.rglob("*.tmp"))


def test_failed_final_write_leaves_unfinished_record_then_resumes(reference, tmp_path, monkeypatch):
    import engine.train as train

    real = train.atomic_write_json

    def failing(path, obj):
        if Path(path).name == "metrics.json":
            raise OSError(28, "No space left on device (simulated)")
        return real(path, obj)

    monkeypatch.setattr(train, "atomic_write_json", failing)
    cfg = RunConfig(**CFG)
    with pytest.raises(OSError):
        run_training(cfg, tmp_path, threads=THREADS, progress=False, profile=False)
    record_dir = tmp_path / "runs" / cfg.config_hash()
    assert not (record_dir / "status.json").exists() and not is_finished(record_dir)
    assert not (record_dir / "metrics.json").exists()
    monkeypatch.setattr(train, "atomic_write_json", real)
    res = run_training(cfg, tmp_path, threads=THREADS, progress=False, profile=False)
    assert res.status == "done" and res.resumed_from_epoch == cfg.resolved_recipe().epochs
    assert res.metrics["test"] == reference.metrics["test"]
    assert _same_state(_model_state(record_dir, "best"), _model_state(reference.record_dir, "best"))


def test_atomic_writes_never_leave_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    # an object that cannot be serialised: nothing is touched
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    # non-finite floats become null (strict JSON)
    atomic_write_json(tmp_path / "n.json", {"v": float("nan")})
    assert json.loads((tmp_path / "n.json").read_text()) == {"v": None}

    # a failure in the middle of the write (e.g. disk full at fsync): old file intact, no temp file left
    def boom(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(record.os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "partial")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json", "x.json"]


def test_status_is_written_last(reference):
    d = reference.record_dir
    status_t = (d / "status.json").stat().st_mtime_ns
    for name in ("config.json", "env.json", "history.csv", "metrics.json", "per_image.csv", "complexity.json",
                 "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (d / name).stat().st_mtime_ns <= status_t, name
    assert not is_finished(d / "nonexistent")
