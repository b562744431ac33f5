"""The Ray executor against a real local Ray cluster (skipped when Ray is not installed).

* the smoke suite through ``--executor ray`` gives the local executor's table (same config hashes,
  same metrics; wall time and code version excluded);
* a worker SIGKILLed mid-run is retried by Ray, resumes from its checkpoint, and every run of the
  suite is recorded exactly once (with the metrics of an uninterrupted run);
* Ctrl-C (SIGINT to the driver's process group) cancels cleanly, exit 130, and the same command
  then finishes the suite, resuming the interrupted runs;
* an unfinished record left in the results folder (e.g. by a killed local runner) is resumed;
* without Ray, ``--executor ray`` is a one-line error (exit 2); GPU-share rules parse.

The cluster of this module is started in-process (``ray.init(address="local", num_cpus=2)``); the
Ctrl-C test runs the CLI in a subprocess that starts (and shuts down) its own local cluster.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from studies import store
from studies import run as runcli
from studies.executors import RunTask
from studies.executors.ray_executor import GpuRule, commit_record
from studies.suites import expand

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("wall_s", "latency_ms", "commit")  # timings and the code version


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(VOLATILE)).sort_values("config_hash").reset_index(drop=True)


def _sessions(record: Path) -> list[int]:
    return [s["start_epoch"] for s in json.loads((record / "env.json").read_text())["sessions"]]


def _history_epochs(record: Path) -> list[int]:
    return pd.read_csv(record / "history.csv")["epoch"].tolist()


# ------------------------------------------------------------------------------ without a cluster


def test_gpu_rule():
    rule = GpuRule.parse("auto")
    assert rule.gpus_for(53_374) == 0.25  # EGE-UNet: 4 per GPU
    assert rule.gpus_for(1_471_921) == 0.5  # UNeXt
    assert rule.gpus_for(7_763_041) == 1.0  # UNet-32
    assert rule.gpus_for(26_273_301) == 1.0  # TransFuse-S
    assert rule.gpus_for(None) == 1.0
    assert GpuRule.parse("0.5").gpus_for(10**9) == 0.5
    assert GpuRule.parse("500K:0.1, 2e6:0.5").gpus_for(3_000_000) == 0.5  # no '*': the last share
    for bad in ("1M", "1M:x", "1.5", "-1", "abc:1", ""):
        with pytest.raises(ValueError):
            GpuRule.parse(bad)


def test_resources_per_run():
    pytest.importorskip("ray")  # the executor needs Ray importable, not a cluster
    from dataclasses import replace

    from studies.executors.ray_executor import RayExecutor

    (ege, *_) = _tasks(Path("unused"), epochs=2)
    ex = RayExecutor(cpus_per_run=0.5)
    assert ex.resources_for(ege) == (0.5, 0.0)  # CPU runs take no GPU
    assert ex.resources_for(replace(ege, device="cuda:1")) == (0.5, 0.25)  # 4 EGE-UNet runs per GPU
    from engine.train import RunConfig

    unet = RunConfig(model="unet32", dataset="synthetic", budget="smoke")
    assert ex.resources_for(replace(ege, config=unet, device="cuda")) == (0.5, 1.0)
    assert RayExecutor(gpus_per_run="0.5").resources_for(replace(ege, config=unet, device="cuda"))[1] == 0.5
    from studies.executors import ExecutorError

    with pytest.raises(ExecutorError, match="--ray-gpus-per-run"):
        RayExecutor(gpus_per_run="1M:lots")
    with pytest.raises(ExecutorError, match="GPUs per run > 0"):
        RayExecutor(gpus_per_run="0").resources_for(replace(ege, device="cuda"))


def test_without_ray_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = runcli.main(["--executor", "ray", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "needs Ray" in err and 'pip install -e ".[ray]"' in err
    assert not (tmp_path / "r" / "runs").exists()


def test_unreachable_cluster_is_one_line_error(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process: the executor would use it")
    rc = runcli.main(["--executor", "ray", "--ray-address", "127.0.0.1:1", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot reach the Ray cluster" in err


# ------------------------------------------------------------------------------ Ctrl-C (own cluster)


@pytest.mark.slow
def _as_terminal_job() -> None:
    """Run the child as a terminal's foreground job: its own process group, SIGINT at its default.
    A shell's background job (``cmd &``, nohup, some CI runners) starts with SIGINT ignored, and Python
    then keeps ignoring it, so without the reset the Ctrl-C below would be lost."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_cancels_and_the_next_invocation_resumes(tmp_path):
    pytest.importorskip("ray")
    results, staging = tmp_path / "results", tmp_path / "staging"
    # --no-fast: the plain path's slower epochs put the Ctrl-C mid-epoch; with the fast path the 2-epoch smoke
    # runs often finish just as it lands, where Ray 2.x's own cancel path once aborted (task_manager check)
    cmd = [sys.executable, "-m", "studies.run", "--suite", "smoke", "--seeds", "2", "--executor", "ray",
           "--threads", "2", "--results", str(results), "--ray-shared-dir", str(staging), "--no-fast"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_as_terminal_job)
    try:
        deadline = time.monotonic() + 150
        ckpts: list[str] = []
        while not ckpts and time.monotonic() < deadline and proc.poll() is None:
            ckpts = glob.glob(str(staging / "runs" / "*" / "checkpoints" / "latest.pt"))
            time.sleep(0.02)
        assert ckpts, "no run reached its first checkpoint"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets SIGINT
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    interrupted = Path(ckpts[0]).parents[1].name
    done_before = {p.parent.name for p in (results / "runs").glob("*/status.json")}
    assert len(done_before) < 6
    for h in done_before:  # whatever was committed is complete
        assert store.is_done(results / "runs" / h)

    second_start = datetime.now(timezone.utc)
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    table = pd.read_csv(results / "smoke" / "results.csv")
    assert len(table) == 6 and table["config_hash"].is_unique and set(table["status"]) == {"done"}
    if interrupted not in done_before:  # cut off after its first epoch: resumed, never restarted from scratch
        rec = results / "runs" / interrupted
        sessions = json.loads((rec / "env.json").read_text())["sessions"]
        resumed = sessions[-1]["start_epoch"] >= 1
        # or the cancelled attempt finished its staging record before it died: committed as is, not retrained
        finished_before = [s["start_epoch"] for s in sessions] == [0] and \
            datetime.fromisoformat(sessions[0]["time_utc"]) < second_start
        assert resumed or finished_before, sessions
        assert _history_epochs(rec) == [1, 2]
    assert not list((staging / "runs").glob("*/status.json"))  # staging cleaned after each commit


# ------------------------------------------------------------------------------ in-process cluster


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_smoke_suite_table_equals_local(ray_cluster, tmp_path):
    local, remote, staging = tmp_path / "local", tmp_path / "ray", tmp_path / "staging"
    assert runcli.main(["--suite", "smoke", "--threads", "1", "--results", str(local)]) == 0
    assert runcli.main(["--suite", "smoke", "--executor", "ray", "--results", str(remote),
                        "--ray-shared-dir", str(staging)]) == 0
    a = pd.read_csv(local / "smoke" / "results.csv")
    b = pd.read_csv(remote / "smoke" / "results.csv")
    assert len(b) == 3 and set(b["status"]) == {"done"}
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b))
    for h in b["config_hash"]:  # the records themselves: same files, same weights
        ra, rb = local / "runs" / h, remote / "runs" / h
        files = sorted(p.relative_to(ra).as_posix() for p in ra.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(rb).as_posix() for p in rb.rglob("*") if p.is_file())
        assert (ra / "checkpoints" / "best.pt").read_bytes() == (rb / "checkpoints" / "best.pt").read_bytes()
    assert not list((staging / "runs").iterdir())  # worker staging removed once committed
    # a second invocation trains nothing
    before = {p: p.stat().st_mtime_ns for p in (remote / "runs").glob("*/status.json")}
    assert runcli.main(["--suite", "smoke", "--executor", "ray", "--results", str(remote),
                        "--ray-shared-dir", str(staging)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (remote / "runs").glob("*/status.json")}


def _tasks(results: Path, epochs: int) -> list[RunTask]:
    from engine.train import RunConfig

    out = []
    for s in expand("smoke", seeds=[0]):
        cfg = RunConfig(model=s.model, dataset=s.dataset, protocol=s.protocol, budget=s.budget, seed=s.seed,
                        recipe={"epochs": epochs})
        out.append(RunTask(config=cfg, config_hash=cfg.config_hash(), results_dir=str(results),
                           label=f"{s.variant} e{epochs}"))
    return out


def test_killed_worker_is_retried_and_each_run_recorded_once(ray_cluster, tmp_path):
    from engine.train import run_training
    from studies.executors.ray_executor import RayExecutor

    results, staging = tmp_path / "results", tmp_path / "staging"
    tasks = _tasks(results, epochs=6)
    killed: dict[str, int] = {}
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the worker of the first run that has written a checkpoint
        while not stop.is_set() and not killed:
            for log in (staging / "attempts").glob("*.jsonl"):
                h = log.stem
                if (staging / "runs" / h / "checkpoints" / "latest.pt").exists():
                    pid = json.loads(log.read_text().splitlines()[0])["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed[h] = pid
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    done: list = []
    ex = RayExecutor(shared_dir=staging, max_retries=2)
    try:
        outs = ex.run(tasks, on_done=done.append)
    finally:
        stop.set()
        thread.join(5)
    assert killed, "no worker was killed"
    assert [o.status for o in outs] == ["done"] * 3, [o.reason for o in outs]
    hashes = [t.config_hash for t in tasks]
    assert sorted(o.config_hash for o in done) == sorted(hashes)  # one outcome per run
    assert ex.commits == {h: 1 for h in hashes}  # one record write per run
    (h,) = killed
    rec = results / "runs" / h
    assert store.is_done(rec)
    assert _history_epochs(rec) == list(range(1, 7))  # every epoch exactly once
    starts = _sessions(rec)
    assert len(starts) == 2 and starts[1] >= 1, starts  # the retry resumed from the checkpoint
    # ... and ends where an uninterrupted run ends
    task = next(t for t in tasks if t.config_hash == h)
    ref = run_training(task.config, tmp_path / "uninterrupted", threads=1, progress=False)
    got = json.loads((rec / "metrics.json").read_text())
    assert got["test"] == ref.metrics["test"] and got["best_epoch"] == ref.metrics["best_epoch"]
    store.add_to_manifest(results, "smoke", [
        store.ManifestEntry(t.config_hash, t.config.model, "synthetic", "clean", "smoke", 0) for t in tasks])
    table, _ = store.write_table(results, "smoke")
    assert len(table) == 3 and table["config_hash"].is_unique


def test_partial_record_in_results_is_resumed(ray_cluster, tmp_path):
    """An unfinished record in the results folder (a killed local runner) is shipped to the worker."""
    from engine.train import run_training
    from studies.executors.ray_executor import RayExecutor, read_record_files

    results, staging = tmp_path / "results", tmp_path / "staging"
    task = _tasks(results, epochs=2)[0]
    ref = run_training(task.config, tmp_path / "full", threads=1, progress=False)
    files = {k: v for k, v in read_record_files(Path(ref.record_dir)).items()
             if k not in ("status.json", "metrics.json", "per_image.csv", "complexity.json")}
    partial = store.run_dir(results, task.config_hash)
    for rel, data in files.items():
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        (partial / rel).write_bytes(data)
    (out,) = RayExecutor(shared_dir=staging).run([task])
    assert out.status == "done", out.reason
    got = json.loads((partial / "metrics.json").read_text())
    assert got["resumed_from_epoch"] == 2 and got["test"] == ref.metrics["test"]


def test_infeasible_resources_are_refused(ray_cluster, tmp_path):
    from dataclasses import replace

    from studies.executors import ExecutorError
    from studies.executors.ray_executor import RayExecutor

    (task, *_) = _tasks(tmp_path / "results", epochs=2)
    with pytest.raises(ExecutorError, match="no node of the Ray cluster can run"):
        RayExecutor(shared_dir=tmp_path / "s").run([replace(task, device="cuda")])  # this cluster has no GPU
    with pytest.raises(ExecutorError, match="3 CPU"):
        RayExecutor(cpus_per_run=3, shared_dir=tmp_path / "s").run([task])
    assert not store.is_locked(tmp_path / "results", task.config_hash)


def test_commit_record_is_complete_and_status_last(tmp_path):
    rec = store.run_dir(tmp_path, "abc")
    (rec / "checkpoints").mkdir(parents=True)
    (rec / "stale.txt").write_text("from an earlier partial attempt")
    commit_record(tmp_path, "abc", {"status.json": b'{"status": "done"}', "metrics.json": b"{}",
                                    "checkpoints/best.pt": b"w"})
    assert sorted(p.relative_to(rec).as_posix() for p in rec.rglob("*") if p.is_file()) == [
        "checkpoints/best.pt", "metrics.json", "status.json"]
    assert (rec / "status.json").stat().st_mtime_ns >= (rec / "metrics.json").stat().st_mtime_ns
    with pytest.raises(ValueError, match="unsafe path"):
        commit_record(tmp_path, "abc", {"status.json": b"{}", "../evil": b"x"})
