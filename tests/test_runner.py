"""The suite runner: skip-finished, kill-and-rerun, concurrent runners, dry run, exit codes.

Every training here is the engine's ``smoke`` budget on the synthetic dataset. One uninterrupted
reference run of the smoke suite (2 seeds = 6 runs) is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from studies import store
from studies import run as runcli
from studies.executors import ExecutorError, RunTask, execute_task, get_executor
from studies.suites import expand

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ARGS = ["--suite", "smoke", "--seeds", "2", "--threads", "1"]
N_SMOKE = 6
# compared between tables: everything but timings and the code version
VOLATILE = ("wall_s", "latency_ms", "commit")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "studies.run", *args]


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(VOLATILE)).sort_values("config_hash").reset_index(drop=True)


def _finished(results: Path) -> list[Path]:
    return sorted(p.parent for p in (results / "runs").glob("*/status.json"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke suite (in process): (results folder, table, stdout)."""
    results = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(_cli(*SMOKE_ARGS, "--results", str(results)), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(results / "smoke" / "results.csv")
    return results, table, proc.stdout


def test_reference_table(reference):
    results, table, out = reference
    assert len(table) == N_SMOKE and table["config_hash"].is_unique
    assert set(table["status"]) == {"done"}
    assert list(table.columns) == list(store.TABLE_COLUMNS)
    assert table["synthetic"].all()
    assert set(table["device"]) == {"cpu"}  # from each record's env.json
    assert table[list(store.METRIC_COLUMNS)].notna().all().all()
    assert (table["params"] > 0).all() and table["epochs"].ge(1).all()
    assert pd.read_parquet(results / "smoke" / "results.parquet").shape == table.shape
    assert "SYNTHETIC DATA" in out
    assert f"{N_SMOKE} done" in out


def test_second_invocation_trains_nothing(reference, tmp_path):
    results, table, _ = reference
    before = {p: (p / "status.json").stat().st_mtime_ns for p in _finished(results)}
    assert runcli.main([*SMOKE_ARGS, "--results", str(results)]) == 0
    after = {p: (p / "status.json").stat().st_mtime_ns for p in _finished(results)}
    assert before == after
    again = pd.read_csv(results / "smoke" / "results.csv")
    pd.testing.assert_frame_equal(_comparable(again), _comparable(table))


def test_dry_run(reference, tmp_path, capsys):
    results, _, _ = reference
    assert runcli.main([*SMOKE_ARGS, "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{N_SMOKE} done (would be skipped), 0 would run" in out
    fresh = tmp_path / "fresh"
    assert runcli.main([*SMOKE_ARGS, "--seeds", "3", "--results", str(fresh), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 done (would be skipped), 9 would run" in out
    assert "egeunet_no_gab" in out
    assert not fresh.exists() or not any(fresh.iterdir())  # a dry run writes nothing


def test_shared_runs_are_reused_across_suites(reference, tmp_path, capsys):
    """A run that two suites share is one record: the smoke suite's egeunet runs count as done for
    an ablation suite restricted to the same dataset, budget and seeds."""
    results, _, _ = reference
    rc = runcli.main(["--suite", "ablation_ds", "--variants", "egeunet,egeunet_no_ds", "--dataset", "synthetic",
                      "--budget", "smoke", "--seeds", "2", "--results", str(results), "--dry-run"])
    assert rc == 0
    assert "4 done (would be skipped), 0 would run" in capsys.readouterr().out


def test_kill_and_rerun_matches_uninterrupted(reference, tmp_path):
    _, ref_table, _ = reference
    results = tmp_path / "killed"
    cmd = _cli(*SMOKE_ARGS, "--results", str(results))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_finished(results)) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # kill in the middle of the next run (its record exists, unfinished), else right away
        t_next = time.monotonic() + 3
        while time.monotonic() < t_next and proc.poll() is None:
            started = [p for p in (results / "runs").iterdir() if p.is_dir() and not (p / "status.json").exists()]
            if started and any((p / "history.csv").exists() for p in started):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the suite finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    n_killed = len(_finished(results))
    assert 1 <= n_killed < N_SMOKE
    partial = [p for p in (results / "runs").iterdir()
               if p.is_dir() and not (p / "status.json").exists() and (p / "checkpoints" / "latest.pt").exists()]

    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{N_SMOKE - n_killed} done, {n_killed} skipped" in rerun.stdout
    table = pd.read_csv(results / "smoke" / "results.csv")
    assert len(table) == N_SMOKE and table["config_hash"].is_unique
    pd.testing.assert_frame_equal(_comparable(table), _comparable(ref_table), check_exact=False, rtol=1e-6)
    for p in partial:  # a run killed after an epoch was resumed, not restarted
        assert store._read_json(p / "metrics.json").get("resumed_from_epoch") == 1


def test_two_concurrent_runners_train_each_run_once(reference, tmp_path):
    _, ref_table, _ = reference
    results = tmp_path / "shared"
    cmd = _cli(*SMOKE_ARGS, "--results", str(results))
    # one runner in-process, the other with a pool of 2 worker processes
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in (cmd, [*cmd, "--workers", "2"])]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    trained = [line.split()[1:3] for out in outs for line in out.splitlines() if line.strip().startswith("done ")]
    # every run trained by exactly one of the two runners
    labels = [" ".join(t) for t in trained]
    assert len(labels) == N_SMOKE, outs
    assert len(_finished(results)) == N_SMOKE
    assert not (results / "runs_failed").exists()
    table = pd.read_csv(results / "smoke" / "results.csv")
    pd.testing.assert_frame_equal(_comparable(table), _comparable(ref_table), check_exact=False, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- locks


LOCK_HOLDER = """
import sys, time
from studies.store import RunLock
lock = RunLock(sys.argv[1], "abc")
assert lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_released_when_holder_is_sigkilled(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert store.is_locked(tmp_path, "abc")
        assert not store.RunLock(tmp_path, "abc").acquire(blocking=False)
        assert not store.RunLock(tmp_path, "abc").acquire(blocking=True, timeout=0.3)
        assert store.run_state(tmp_path, "abc") == "running"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        lock = store.RunLock(tmp_path, "abc")
        assert lock.acquire(blocking=True, timeout=10)
        lock.release()
        assert not store.is_locked(tmp_path, "abc")
    finally:
        if holder.poll() is None:
            holder.kill()


def test_execute_task_skips_done_and_defers_busy(tmp_path):
    h = "0" * 16
    rec = store.run_dir(tmp_path, h)
    task = RunTask(config=None, config_hash=h, results_dir=str(tmp_path), label="x")
    lock = store.RunLock(tmp_path, h)
    assert lock.acquire()
    try:
        assert execute_task(task).status == "busy"  # another holder: never trained twice
    finally:
        lock.release()
    rec.mkdir(parents=True)
    (rec / "status.json").write_text('{"status": "done", "reason": null}')
    out = execute_task(task)
    assert out.status == "skipped" and out.reason == "already done"


def test_failed_run_is_reported_and_retried_only_on_request(tmp_path):
    from engine.train import RunConfig

    cfg = RunConfig(model="egeunet_no_gab", dataset="synthetic", budget="smoke", seed=0)
    h = cfg.config_hash()
    rec = store.run_dir(tmp_path, h)
    rec.mkdir(parents=True)
    (rec / "status.json").write_text('{"status": "failed", "reason": "diverged"}')
    old = time.time() - 3600
    os.utime(rec / "status.json", (old, old))
    task = RunTask(config=cfg, config_hash=h, results_dir=str(tmp_path), label="x", threads=1)
    out = execute_task(task)
    assert out.status == "failed" and "diverged" in out.reason and "--retry-failed" in out.reason
    assert store.run_state(tmp_path, h) == "failed"
    out = execute_task(RunTask(config=cfg, config_hash=h, results_dir=str(tmp_path), label="x", threads=1,
                               retry_failed=True))
    assert out.status == "done", out.reason
    assert store.is_done(rec)
    assert len(list((tmp_path / "runs_failed").iterdir())) == 1  # the failed record kept aside


def test_failed_run_of_a_peer_is_not_repeated(tmp_path):
    h = "1" * 16
    rec = store.run_dir(tmp_path, h)
    rec.mkdir(parents=True)
    (rec / "status.json").write_text('{"status": "failed", "reason": "boom"}')
    task = RunTask(config=None, config_hash=h, results_dir=str(tmp_path), label="x", session_start=time.time() - 60,
                   retry_failed=True)
    out = execute_task(task)
    assert out.status == "failed" and "boom" in out.reason and "another runner" in out.reason


def test_executor_factory():
    assert get_executor("local", workers=2, threads=4).threads_per_worker == 2
    assert get_executor("local", workers=4, threads=2).threads_per_worker == 1
    with pytest.raises(ExecutorError, match="unknown executor 'slurm'; valid executors: local, ray"):
        get_executor("slurm")


def test_table_rebuilt_not_appended(reference, tmp_path):
    results, table, _ = reference
    for _ in range(2):
        df, path = store.write_table(results, "smoke")
    assert len(pd.read_csv(path)) == len(table) == len(df)
    # a manifest listing a run twice (two runners appending at once) still gives one row per run
    entries = store.read_manifest(results, "smoke")
    store.add_to_manifest(results, "smoke", entries)
    assert len(store.read_manifest(results, "smoke")) == N_SMOKE
    assert len(expand("smoke", seeds=[0, 1])) == N_SMOKE


def test_missing_isic_falls_back_to_synthetic_loudly(tmp_path, capsys):
    empty = tmp_path / "nodata"
    empty.mkdir()
    args = ["--suite", "ablation_ghpa", "--budget", "smoke", "--data-root", str(empty),
            "--results", str(tmp_path / "r"), "--dry-run"]
    assert runcli.main(args) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC DATA" in out and "isic2018 not found" in out
    assert out.count(" synthetic ") >= 9  # every run of the dry-run table is on synthetic data
    assert runcli.main([*args, "--strict-data"]) == 2
    assert "dataset 'isic2018' not found under" in capsys.readouterr().err
    assert runcli.main([*args, "--dataset", "isic2018"]) == 2  # an explicit dataset never falls back


def test_exit_status_2_from_the_command_line(tmp_path):
    proc = subprocess.run(_cli("--suite", "nope", "--results", str(tmp_path)), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("python -m studies.run: error: unknown suite 'nope'; valid suites: smoke, compare, "
                                   "ablation_macro, ablation_ghpa, ablation_gab, ablation_ds, width")


def test_a_failed_run_gives_exit_1_after_the_others(reference, tmp_path):
    src, ref_table, _ = reference
    results = tmp_path / "copy"
    shutil.copytree(src, results)
    first, second = ref_table["config_hash"].iloc[0], ref_table["config_hash"].iloc[1]
    status = store.run_dir(results, first) / "status.json"
    status.write_text(json.dumps({"status": "failed", "reason": "diverged at epoch 2"}))
    os.utime(status, (time.time() - 60, time.time() - 60))
    shutil.rmtree(store.run_dir(results, second))  # must still be trained after the failure
    proc = subprocess.run(_cli(*SMOKE_ARGS, "--results", str(results)), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"1 done, {N_SMOKE - 2} skipped (already done), 1 failed" in proc.stdout
    assert "diverged at epoch 2" in proc.stdout
    table = pd.read_csv(results / "smoke" / "results.csv").set_index("config_hash")
    assert table.loc[first, "status"] == "failed" and table.loc[first, "reason"] == "diverged at epoch 2"
    assert table.loc[second, "status"] == "done" and len(table) == N_SMOKE


def test_device_label_names_every_device_a_run_trained_on(tmp_path):
    from engine.record import RunRecord

    def label(env):
        return RunRecord(tmp_path, None, None, env, None, None).device_label

    assert label({}) is None
    assert label({"device": "cpu", "sessions": [{"device": "cpu"}, {"device": "cpu"}]}) == "cpu"
    assert label({"device": "cuda", "device_name": "NVIDIA H200", "sessions": [{"device": "cuda"}]}) \
        == "cuda (NVIDIA H200)"
    resumed = {"device": "cpu", "device_name": "AMD EPYC", "sessions": [{"device": "cuda"}, {"device": "cpu"}]}
    assert label(resumed) == "cuda -> cpu"
