"""engine.packed: K runs of one architecture in lockstep give the records K separate runs give.

Tolerance: one packed step's losses and gradients equal each run's own to 1e-4 (relative to the largest
gradient of the tensor; grouped convolutions round differently). Over a whole smoke run the records agree
in form exactly and in values to 0.02 (losses, DSC): a few Adam steps on 16 images amplify float32
round-off, and a change of thread count or the fast path moves the same metrics by the same order
(measured while writing this test: up to 9e-3 val loss). Resumed packed runs are bit-identical to
uninterrupted ones (CPU, deterministic algorithms, same threads).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from engine.checkpoint import ResumeRefused, resume_conflict
from engine.packed import PackedStep, pack_problem, run_packed
from engine.record import load_record
from engine.train import RunConfig, run_training
from zoo.contract import as_seg_output, loss_weights_of
from zoo.registry import create_model
from engine.losses import model_loss

SEEDS = (0, 1)
METRICS = ["train_loss", "val_loss", "val_pooled_dsc", "val_pooled_miou"]


def _cfgs(model: str = "egeunet") -> list[RunConfig]:
    return [RunConfig(model=model, dataset="synthetic", budget="smoke", seed=s) for s in SEEDS]


def _history(rec) -> pd.DataFrame:
    return pd.read_csv(rec.record_dir / "history.csv")


@pytest.fixture(scope="module")
def packed_and_separate(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    packed = run_packed(_cfgs(), root / "packed", threads=1, progress=False, profile=False)
    separate = [run_training(c, root / "separate", threads=1, progress=False, profile=False, fast=False)
                for c in _cfgs()]
    return root, packed, separate


def test_one_packed_step_equals_each_runs_own_step():
    torch.manual_seed(0)
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        models.append(create_model("egeunet"))
    weights = loss_weights_of(models[0])
    x = torch.rand(len(SEEDS), 2, 3, 64, 64) * 255
    y = (torch.rand(len(SEEDS), 2, 1, 64, 64) > 0.5).float()
    grads, losses = PackedStep(models[0], weights).gradients(models, x, y)
    for k, m in enumerate(models):
        loss = model_loss(as_seg_output(m(x[k])), y[k], weights)
        loss.backward()
        assert losses[k].item() == pytest.approx(loss.item(), rel=1e-5)
        for n, p in m.named_parameters():
            scale = p.grad.abs().max().clamp_min(1e-12)
            assert ((grads[n][k] - p.grad).abs().max() / scale).item() < 1e-4, n


def test_packed_records_match_separate_runs(packed_and_separate):
    _, packed, separate = packed_and_separate
    assert [r.status for r in packed] == ["done"] * len(SEEDS)
    for a, b in zip(packed, separate):
        ra, rb = load_record(a.record_dir), load_record(b.record_dir)
        assert ra.config_hash == rb.config_hash  # the same run: packing is not part of its identity
        assert sorted(p.name for p in a.record_dir.rglob("*") if p.is_file()) == \
            sorted(p.name for p in b.record_dir.rglob("*") if p.is_file())
        assert ra.first_session.path == "packed" and rb.first_session.path == "plain"
        ha, hb = _history(ra), _history(rb)
        assert list(ha.columns) == list(hb.columns) and list(ha["epoch"]) == list(hb["epoch"])
        assert ha["train_loss"][0] == pytest.approx(hb["train_loss"][0], rel=1e-4)
        assert (ha[METRICS] - hb[METRICS]).abs().max().max() < 0.02
        pa, pb = ra.per_image_frame(), rb.per_image_frame()
        assert list(pa["id"]) == list(pb["id"])
        for k in ("pooled_dsc", "pooled_miou"):
            assert math.isfinite(ra.test_metrics[k]) and abs(ra.test_metrics[k] - rb.test_metrics[k]) < 0.02


def test_a_finished_pack_is_reused(packed_and_separate):
    root, packed, _ = packed_and_separate
    again = run_packed(_cfgs(), root / "packed", threads=1, progress=False, profile=False)
    assert all(r.reused for r in again) and [r.record_dir for r in again] == [r.record_dir for r in packed]


def _interrupt_after(n_calls: int):
    calls = []

    def callback(**row):
        calls.append(row["epoch"])
        if len(calls) == n_calls:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("stop_after", [1, 2])
def test_interrupted_pack_resumes_to_the_uninterrupted_records(packed_and_separate, tmp_path, stop_after):
    """stop_after=2: both runs finished epoch 1; stop_after=1: only the first did, so the second catches up
    alone before the two are packed again."""
    _, packed, _ = packed_and_separate
    with pytest.raises(KeyboardInterrupt):
        run_packed(_cfgs(), tmp_path, threads=1, progress=_interrupt_after(stop_after), profile=False)
    assert not any(load_record(d).finished for d in (tmp_path / "runs").iterdir())
    resumed = run_packed(_cfgs(), tmp_path, threads=1, progress=False, profile=False)
    assert [r.status for r in resumed] == ["done"] * len(SEEDS)
    for j, (a, b) in enumerate(zip(resumed, packed)):
        ra, rb = load_record(a.record_dir), load_record(b.record_dir)
        starts = [s.start_epoch for s in ra.sessions]
        assert starts == [0, 1 if (stop_after == 2 or j == 0) else 0]
        if stop_after == 2 or j == 0:  # trained in the same packs as the uninterrupted run: bit-identical
            pd.testing.assert_frame_equal(_history(ra).drop(columns="seconds"), _history(rb).drop(columns="seconds"))
            assert ra.test_metrics["pooled_dsc"] == rb.test_metrics["pooled_dsc"]
        else:  # its first epoch ran in a pack of one
            assert (_history(ra)[METRICS] - _history(rb)[METRICS]).abs().max().max() < 0.02


def test_paths_do_not_mix_on_resume(tmp_path):
    plain = _cfgs()[:1]
    with pytest.raises(KeyboardInterrupt):
        run_training(plain[0], tmp_path, threads=1, progress=_interrupt_after(1), profile=False, fast=False)
    with pytest.raises(ResumeRefused, match="path 'plain' -> 'packed'"):
        run_packed(plain, tmp_path, threads=1, progress=False, profile=False)
    res = run_packed(plain, tmp_path, threads=1, progress=False, profile=False, restart=True)
    assert res[0].status == "done" and load_record(res[0].record_dir).first_session.path == "packed"


def test_packed_record_refuses_an_unpacked_resume(tmp_path):
    cfg = _cfgs()[:1]
    with pytest.raises(KeyboardInterrupt):
        run_packed(cfg, tmp_path, threads=1, progress=_interrupt_after(1), profile=False)
    problem = resume_conflict(cfg[0], tmp_path, device="cpu", fast=False)
    assert problem and "path 'packed' -> 'plain'" in problem
    assert resume_conflict(cfg[0], tmp_path, device="cpu", packed=True) is None


def test_what_cannot_be_packed():
    assert "buffer" in pack_problem(_cfgs("unet32"))  # BatchNorm running statistics
    mixed = [RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0),
             RunConfig(model="egeunet_no_xy", dataset="synthetic", budget="smoke", seed=1)]
    assert "more than the seed" in pack_problem(mixed)
    assert "repeat" in pack_problem([_cfgs()[0], _cfgs()[0]])
    assert "AMP" in pack_problem(_cfgs(), "cuda")
    assert pack_problem(_cfgs()) is None
    with pytest.raises(ValueError, match="cannot pack"):
        run_packed(_cfgs("unet32"), "/nonexistent-never-created", progress=False)


# ------------------------------------------------------------------------------ the local executor


def _tasks(results, models=("egeunet",), seeds=SEEDS):
    from studies.executors import RunTask

    out = []
    for m in models:
        for s in seeds:
            cfg = RunConfig(model=m, dataset="synthetic", budget="smoke", seed=s)
            out.append(RunTask(config=cfg, config_hash=cfg.config_hash(), results_dir=str(results),
                               label=f"{m} s{s}", threads=1))
    return out


def test_pack_groups_put_only_seeds_of_one_variant_together(tmp_path):
    from studies.executors import pack_groups

    tasks = _tasks(tmp_path, models=("egeunet", "egeunet_no_xy", "unet32"), seeds=(0, 1, 2))
    groups = pack_groups(tasks, 2)
    labels = [[t.label for t in g] for g in groups]
    assert labels == [["egeunet s0", "egeunet s1"], ["egeunet s2"], ["egeunet_no_xy s0", "egeunet_no_xy s1"],
                      ["egeunet_no_xy s2"], ["unet32 s0"], ["unet32 s1"], ["unet32 s2"]]


def test_local_executor_packs_and_then_skips(packed_and_separate, tmp_path):
    from studies.executors import get_executor

    _, packed, _ = packed_and_separate
    done = []
    outs = get_executor("local", threads=1, pack=2).run(_tasks(tmp_path), on_done=done.append)
    assert [o.status for o in outs] == ["done", "done"] and len(done) == 2
    for o, ref in zip(outs, packed):  # the same packed computation as engine.packed.run_packed
        pd.testing.assert_frame_equal(_history(load_record(o.record_dir)).drop(columns="seconds"),
                                      _history(load_record(ref.record_dir)).drop(columns="seconds"))
    again = get_executor("local", threads=1, pack=2).run(_tasks(tmp_path))
    assert [o.status for o in again] == ["skipped", "skipped"]
    with pytest.raises(ValueError, match="one worker"):
        get_executor("local", workers=2, pack=2)


def test_studies_run_pack_option(tmp_path, capsys):
    from studies import run as runcli

    base = ["--suite", "smoke", "--variants", "egeunet", "--seeds", "2", "--results", str(tmp_path),
            "--no-latency", "--threads", "1"]
    assert runcli.main([*base, "--pack", "2"]) == 0
    recs = [load_record(d) for d in (tmp_path / "runs").iterdir()]
    assert len(recs) == 2 and all(r.done and r.first_session.path == "packed" for r in recs)
    capsys.readouterr()
    for bad, why in ((["--pack", "0"], "--pack must be >= 1"), (["--pack", "2", "--workers", "2"], "one worker")):
        err = capsys.readouterr().err if runcli.main([*base, *bad]) == 2 else "(not exit 2)"
        assert why in err and len(err.strip().splitlines()) == 1
