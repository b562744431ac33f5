"""Training engine: recipe, budgets, config hash, run records, determinism, failures, evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.record import is_finished, load_record, read_status
from engine.train import BUDGETS, HISTORY_COLUMNS, Recipe, RunConfig, lr_at_epoch, run_training

THREADS = 1
FAST = {"threads": THREADS, "progress": False, "profile": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- recipe, schedule, budgets, config
def test_recipe_defaults_are_the_official_code():
    r = Recipe()
    assert (r.lr, r.weight_decay, r.betas, r.eps) == (1e-3, 1e-2, (0.9, 0.999), 1e-8)
    assert (r.t_max, r.eta_min, r.epochs, r.batch_size, r.size) == (50, 1e-5, 300, 8, 256)
    assert r.amp and not r.paper_quirks and r.selection == "val_loss"
    assert BUDGETS["paper"].apply(Recipe()) == Recipe()


def test_periodic_cosine_schedule_matches_protocol():
    r = Recipe()
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r.t_max, eta_min=r.eta_min)
    lrs = []
    for _ in range(r.epochs):  # the lr used in epoch e, then one step after the epoch
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[1] == pytest.approx(0.0009990232305719944, abs=1e-15)  # epoch 2, the author's log
    for e in (1, 101, 201):
        assert lrs[e - 1] == pytest.approx(1e-3, abs=1e-12)
    for e in (51, 151, 251):
        assert lrs[e - 1] == pytest.approx(1e-5, abs=1e-12)
    assert lrs[299] == pytest.approx(9.990e-4, abs=1e-6)
    assert max(abs(lr - lr_at_epoch(r, e + 1)) for e, lr in enumerate(lrs)) < 1e-15


def test_budgets_and_overrides():
    assert set(BUDGETS) == {"smoke", "cpu", "paper"}
    smoke = RunConfig(dataset="synthetic", budget="smoke").resolved_recipe()
    assert smoke.size == 64 and smoke.epochs <= 3
    cpu = RunConfig(budget="cpu").resolved_recipe()
    assert cpu.size % 32 == 0 and cpu.epochs >= 30 and cpu.lr == 1e-3
    over = RunConfig(budget="cpu", recipe={"epochs": 7, "betas": [0.5, 0.9]}).resolved_recipe()
    assert over.epochs == 7 and over.betas == (0.5, 0.9) and over.size == cpu.size
    with pytest.raises(ValueError, match="unknown recipe field"):
        RunConfig(recipe={"learning_rate": 1})
    with pytest.raises(ValueError):
        RunConfig(budget="huge")
    with pytest.raises(ValueError):
        RunConfig(protocol="weird")
    assert RunConfig(protocol="official").protocol == "paper"


def test_config_hash():
    a = RunConfig(dataset="synthetic", budget="smoke", seed=1)
    h = a.config_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert RunConfig(dataset="synthetic", budget="smoke", seed=1).config_hash() == h
    # an override equal to the resolved value is the same run
    assert RunConfig(dataset="synthetic", budget="smoke", seed=1, recipe={"size": 64}).config_hash() == h
    others = [
        RunConfig(dataset="synthetic", budget="smoke", seed=2),
        RunConfig(dataset="synthetic", budget="smoke", seed=1, recipe={"lr": 2e-3}),
        RunConfig(dataset="synthetic", budget="smoke", seed=1, model_overrides={"gab_mask": False}),
        RunConfig(dataset="synthetic", budget="smoke", seed=1, protocol="paper"),
        RunConfig(dataset="synthetic", budget="cpu", seed=1),
        RunConfig(model="egeunet_no_ds", dataset="synthetic", budget="smoke", seed=1),
    ]
    assert len({h, *(o.config_hash() for o in others)}) == 1 + len(others)
    d = a.to_dict()
    assert d["recipe"]["size"] == 64 and d["recipe"]["epochs"] == BUDGETS["smoke"].recipe["epochs"]
    assert RunConfig.from_dict(json.loads(json.dumps(d))).config_hash() == h
    # tuples and lists in overrides hash alike (JSON form)
    assert (RunConfig(model_overrides={"widths": (8, 16, 24, 32, 48, 64)}).config_hash()
            == RunConfig(model_overrides={"widths": [8, 16, 24, 32, 48, 64]}).config_hash())


# ---------------------------------------------------------------- a finished run record
def test_smoke_run_record(smoke_run, smoke_config):
    d = smoke_run.record_dir
    cfg = smoke_config()
    assert d.name == cfg.config_hash() and d.parent.name == "runs"
    for name in ("config.json", "env.json", "history.csv", "metrics.json", "per_image.csv", "complexity.json",
                 "status.json", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (d / name).is_file(), name
    assert not list(d.rglob("*.tmp"))
    assert is_finished(d) and read_status(d)["status"] == "done"
    rec = load_record(d)
    assert rec.finished and rec.config == cfg.to_dict()
    epochs = cfg.resolved_recipe().epochs
    assert [h["epoch"] for h in rec.history] == list(range(1, epochs + 1))
    assert tuple(rec.history[0]) == HISTORY_COLUMNS
    assert rec.history[0]["lr"] == pytest.approx(1e-3)
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in rec.history)
    m = rec.metrics
    assert m["synthetic"] is True and m["protocol"] == "clean" and m["selection"]["on_test_set"] is False
    assert m["best_epoch"] == m["selection"]["epoch"] and 1 <= m["best_epoch"] <= epochs
    best_hist = rec.history[m["best_epoch"] - 1]
    assert best_hist["val_loss"] == min(h["val_loss"] for h in rec.history)
    for key in ("pooled_miou", "pooled_dsc", "pooled_acc", "pooled_sen", "pooled_spe", "per_image_dsc_mean",
                "per_image_dsc_std", "per_image_iou_mean", "per_image_iou_std", "isic_tjaccard"):
        assert 0.0 <= m["test"][key] <= 1.0
    n_test = cfg.resolved_recipe().max_eval_images
    assert m["test"]["n_images"] == n_test == len(rec.per_image)
    assert set(rec.per_image[0]) >= {"id", "tn", "fp", "fn", "tp", "dsc", "iou"}
    assert all(isinstance(r["id"], str) for r in rec.per_image)
    px = 64 * 64
    assert all(r["tn"] + r["fp"] + r["fn"] + r["tp"] == px for r in rec.per_image)
    assert rec.complexity["params"] == 53_374 == m["params"]
    assert rec.complexity.get("macs") == 72_096_256 or "note" in rec.complexity  # engine.profile at 256 x 256
    assert rec.env["torch"] == torch.__version__ and rec.env["threads"] == THREADS and "git_commit" in rec.env
    best = torch.load(d / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == m["best_epoch"]
    # progress callback: once per epoch, with the documented keywords
    assert [c["epoch"] for c in smoke_run.progress_calls] == list(range(1, epochs + 1))
    assert {"epochs", "train_loss", "val_loss", "val_dsc", "lr", "seconds", "eta_s"} <= set(smoke_run.progress_calls[0])


def test_finished_record_is_reused(smoke_run, smoke_config):
    results = smoke_run.record_dir.parent.parent
    before = (smoke_run.record_dir / "status.json").stat().st_mtime_ns
    res = run_training(smoke_config(), results, **FAST)
    assert res.reused and res.status == "done" and res.metrics == smoke_run.metrics
    assert (smoke_run.record_dir / "status.json").stat().st_mtime_ns == before


def test_eval_batch_size_does_not_change_metrics(smoke_run):
    from engine.data import load_split
    from engine.evaluate import evaluate, evaluate_checkpoint, load_model

    model, cfg = load_model(smoke_run.record_dir)
    data = load_split("synthetic", "test", size=cfg["recipe"]["size"], n=12)
    results = [evaluate(model, data, batch_size=bs) for bs in (1, 5, 12)]
    for r in results[1:]:
        assert r.counts.tolist() == results[0].counts.tolist()
        assert r.summary == results[0].summary
        assert r.loss == pytest.approx(results[0].loss, rel=1e-5)
    # the stored checkpoint re-evaluated on the run's own test split gives the recorded numbers
    again = evaluate_checkpoint(smoke_run.record_dir, split="test", batch_size=3)
    n = smoke_run.metrics["test"]["n_images"]
    rec = load_record(smoke_run.record_dir)
    assert again.counts[:n].tolist() == [[r["tn"], r["fp"], r["fn"], r["tp"]] for r in rec.per_image]


# ---------------------------------------------------------------- determinism
def _weights(record_dir, name="latest"):
    return torch.load(record_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]


def test_same_seed_same_weights_other_seed_differs(smoke_run, smoke_config, tmp_path):
    res = run_training(smoke_config(), tmp_path / "again", **FAST)
    a, b = _weights(smoke_run.record_dir), _weights(res.record_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics["test"] == smoke_run.metrics["test"]
    other = run_training(smoke_config(seed=1), tmp_path / "other", **FAST)
    c = _weights(other.record_dir)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_paper_protocol_is_labelled_and_quirks_recorded(smoke_config, tmp_path):
    res = run_training(smoke_config(protocol="paper", recipe={"paper_quirks": True, "epochs": 1}), tmp_path, **FAST)
    assert res.status == "done", res.reason
    sel = res.metrics["selection"]
    assert sel["on_test_set"] is True and sel["split"] == "val" and "test set" in sel["note"]
    assert 0.0 <= res.metrics["run_angle"] < 360.0


def test_selection_by_metric(smoke_config, tmp_path):
    res = run_training(smoke_config(recipe={"selection": "pooled_dsc"}), tmp_path, **FAST)
    hist = load_record(res.record_dir).history
    assert res.metrics["selection"]["mode"] == "max"
    assert res.metrics["best_epoch"] == max(hist, key=lambda h: h["val_pooled_dsc"])["epoch"]


# ---------------------------------------------------------------- failures
def test_divergence_ends_run_as_failed(smoke_config, tmp_path):
    res = run_training(smoke_config(recipe={"lr": 1e10}), tmp_path, **FAST)
    assert res.status == "failed"
    assert "non-finite" in res.reason or "diverged" in res.reason
    st = read_status(res.record_dir)
    assert st["status"] == "failed" and st["reason"] == res.reason
    # a finished failed record is not retried unless asked
    again = run_training(smoke_config(recipe={"lr": 1e10}), tmp_path, **FAST)
    assert again.reused and again.status == "failed"


def test_nan_loss_at_epoch_two_keeps_history(smoke_config, tmp_path, monkeypatch):
    import engine.train as train

    real = train.model_loss
    calls = {"n": 0}
    steps_per_epoch = 16 // 4

    def nan_after_first_epoch(out, target, weights, **kw):
        calls["n"] += 1
        loss = real(out, target, weights, **kw)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    monkeypatch.setattr(train, "model_loss", nan_after_first_epoch)
    res = run_training(smoke_config(seed=5), tmp_path, **FAST)
    assert res.status == "failed" and "non-finite training loss" in res.reason and "epoch 2" in res.reason
    rec = load_record(res.record_dir)
    assert [h["epoch"] for h in rec.history] == [1] and rec.status["status"] == "failed"


def test_forbidden_external_test_is_refused_before_training(tmp_path):
    from engine.data import DataError

    cfg = RunConfig(dataset="isic2018", budget="smoke", external_test=("isic2017",))
    with pytest.raises(DataError):
        run_training(cfg, tmp_path, **FAST)
    assert not (tmp_path / "runs" / cfg.config_hash()).exists()


def test_external_test_missing_data_is_recorded_not_fatal(smoke_config, tmp_path):
    res = run_training(smoke_config(recipe={"epochs": 1}, external_test=("ph2",)), tmp_path, data_root=tmp_path / "none",
                       **FAST)
    assert res.status == "done"
    assert "error" in res.metrics["external"]["ph2"]


def test_metrics_json_is_strict_json(smoke_run):
    text = (smoke_run.record_dir / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert np.isfinite(smoke_run.metrics["wall_s"])


def test_git_info_outside_a_checkout_uses_the_named_commit(tmp_path, monkeypatch):
    from engine.env import git_info

    here = git_info()
    assert here["commit"] is not None and len(here["commit"]) == 40  # this test runs inside the checkout
    monkeypatch.delenv("EGEUNET_GIT_COMMIT", raising=False)
    assert git_info(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("EGEUNET_GIT_COMMIT", "abc123")
    assert git_info(tmp_path) == {"commit": "abc123", "dirty": False}
    monkeypatch.setenv("EGEUNET_GIT_DIRTY", "1")
    assert git_info(tmp_path) == {"commit": "abc123", "dirty": True}
    assert git_info()["commit"] == "abc123"  # the launcher's word wins over a (possibly stale) .git


def test_fast_path_is_the_cpu_default_for_egeunet_and_trains_like_the_plain_model(smoke_run, smoke_config, tmp_path):
    assert smoke_run.record_dir.joinpath("env.json").exists()
    assert load_record(smoke_run.record_dir).env["fast_path"] is True  # default: EGE-UNet on the CPU
    import engine.losses
    import engine.train

    fused_flags, fused_calls = [], []
    real_loss, real_apply = engine.train.model_loss, engine.losses._BceDiceFused.apply

    def spy_loss(*a, **kw):
        fused_flags.append(kw.get("fused"))
        return real_loss(*a, **kw)

    def spy_apply(*a):
        fused_calls.append(1)
        return real_apply(*a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.train, "model_loss", spy_loss)
        mp.setattr(engine.losses._BceDiceFused, "apply", spy_apply)
        plain = run_training(smoke_config(), tmp_path / "plain", fast=False, **FAST)
    assert load_record(plain.record_dir).env["fast_path"] is False
    # the run's switch decides the loss too: a plain run never enters the C++ loss kernel
    assert fused_flags and set(fused_flags) == {False} and not fused_calls
    # each session says which path it trained with (a run may resume on the other one)
    assert [s["fast_path"] for s in load_record(smoke_run.record_dir).env["sessions"]] == [True]
    assert [s["fast_path"] for s in load_record(plain.record_dir).env["sessions"]] == [False]
    from kernels import fastops as _fastops

    assert load_record(smoke_run.record_dir).env["fused_kernels"] is _fastops.active()  # C++ kernels or not
    assert load_record(plain.record_dir).env["fused_kernels"] is False
    # same seed, same data order and augmentation: the two paths differ only by float32 round-off
    fast_hist = load_record(smoke_run.record_dir).history
    plain_hist = load_record(plain.record_dir).history
    for f, p in zip(fast_hist, plain_hist, strict=True):
        assert f["train_loss"] == pytest.approx(p["train_loss"], rel=1e-3)
        assert f["val_loss"] == pytest.approx(p["val_loss"], rel=1e-3)
    for key in ("pooled_dsc", "per_image_dsc_mean"):
        assert smoke_run.metrics["test"][key] == pytest.approx(plain.metrics["test"][key], abs=5e-3)
    # a baseline trains through the view its entry declares (channels-last), like its plain path
    baseline = run_training(smoke_config(model="unext_s"), tmp_path / "base", **FAST)
    assert load_record(baseline.record_dir).env["fast_path"] is True
    base_plain = run_training(smoke_config(model="unext_s"), tmp_path / "base_plain", **FAST, fast=False)
    assert load_record(base_plain.record_dir).env["fast_path"] is False
    for f, p in zip(load_record(baseline.record_dir).history, load_record(base_plain.record_dir).history,
                    strict=True):
        assert f["val_loss"] == pytest.approx(p["val_loss"], rel=1e-3)


def test_resident_batches_equal_host_batches():
    """The training split held on the device (uint8, batched there) gives the host path's tensors bit for bit."""
    from engine.data import load_split
    from engine.train import TrainBatches, resident_policy

    data = load_split("synthetic", "train", size=64, n=12)
    host = TrainBatches(data.images, data.masks, 12, torch.device("cpu"))
    held = TrainBatches(data.images, data.masks, 12, torch.device("cpu"), resident=True)
    assert not host.resident and held.resident and isinstance(held.images, torch.Tensor)
    idx = np.array([5, 0, 11, 5])
    (xa, ya), (xb, yb) = host.get(idx), held.get(idx)
    assert xa.shape == (4, 3, 64, 64) and ya.shape == (4, 1, 64, 64)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and set(ya.unique().tolist()) <= {0.0, 1.0}
    assert not resident_policy(torch.device("cpu"), 1)  # the CPU batches from its memory map


def test_a_run_on_resident_data_is_the_same_run(smoke_run, smoke_config, tmp_path, monkeypatch):
    """The resident path (CUDA's default) forced on the CPU trains the same weights as the host path."""
    import engine.train as train

    monkeypatch.setattr(train, "resident_policy", lambda device, nbytes: True)
    made = []
    real = train.TrainBatches
    monkeypatch.setattr(train, "TrainBatches", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    res = run_training(smoke_config(), tmp_path, **FAST)
    assert made and all(b.resident for b in made)
    a, b = _weights(smoke_run.record_dir), _weights(res.record_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics["test"] == smoke_run.metrics["test"]


def test_make_adamw_is_fused_on_the_fast_path_only():
    from engine.optim import make_adamw

    params = [torch.nn.Parameter(torch.zeros(3))]
    fast = make_adamw(params, True, lr=1e-3, weight_decay=0.5)
    plain = make_adamw(params, False, lr=1e-3, weight_decay=0.5)
    assert fast.defaults["fused"] is True and not plain.defaults["fused"]
    assert fast.defaults["weight_decay"] == plain.defaults["weight_decay"] == 0.5


def test_prefetched_yields_the_plain_loop_in_order_from_a_background_thread():
    from engine.data.prefetch import prefetched

    def batches(ahead: bool) -> tuple[list[torch.Tensor], set[str]]:
        gen = torch.Generator().manual_seed(3)
        threads: set[str] = set()

        def make(i: int) -> torch.Tensor:
            import threading

            threads.add(threading.current_thread().name)
            return torch.rand(4, generator=gen) + i

        return list(prefetched(make, 5, ahead=ahead)), threads

    plain, plain_threads = batches(False)
    ahead, ahead_threads = batches(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead)) and len(ahead) == 5
    assert plain_threads == {"MainThread"}
    assert all(t.startswith("egeunet-prefetch") for t in ahead_threads)

    def failing(i: int) -> int:
        if i == 2:
            raise ValueError("bad batch 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for v in prefetched(failing, 4):
            got.append(v)
    assert got == [0, 1]


def test_prefetching_the_next_batch_trains_the_same_run(smoke_config, tmp_path, monkeypatch):
    """With two threads the CPU fast path prepares batch s + 1 in a background thread while s trains; the run is
    the same run, weight for weight."""
    import threading

    import engine.data
    import engine.train as train

    where: list[str] = []
    real = engine.data.augment_batch
    monkeypatch.setattr(engine.data, "augment_batch",
                        lambda *a, **k: where.append(threading.current_thread().name) or real(*a, **k))
    cfg = smoke_config()
    two = {**FAST, "threads": 2}
    ahead = run_training(cfg, tmp_path / "ahead", **two)
    assert where and all(t.startswith("egeunet-prefetch") for t in where)
    where.clear()
    monkeypatch.setattr(train, "PREFETCH_MIN_THREADS", 99)
    plain = run_training(cfg, tmp_path / "plain", **two)
    assert where and set(where) == {"MainThread"}
    a, b = _weights(ahead.record_dir), _weights(plain.record_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ahead.metrics["test"] == plain.metrics["test"]
