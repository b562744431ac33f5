"""Constructed run records with a known answer, for the report's tests and for trying the report without training.

:func:`fake_suite` writes ``<root>/<suite>/results.csv`` and one record per run under ``<root>/runs/<hash>/``
(config.json, env.json, metrics.json, status.json, per_image.csv, history.csv; no checkpoint), the layout of
``studies.run``, written through :mod:`engine.record`. Per-image counts are built so that an image's DSC is
exactly what was asked for: with
FP = FN, DSC = TP / (TP + FN), so the pooled DSC is the lesion-area-weighted mean of the per-image DSCs and a
shift of every image's DSC by δ shifts the pooled DSC by δ (up to rounding to whole pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.record import atomic_write_csv, atomic_write_json, write_status

PIXELS = 224 * 224


@dataclass
class FakeVariant:
    variant: str
    model: str | None = None
    params: int = 53374
    gmacs: float = 0.0721
    shift: float = 0.0  # added to every image's DSC in every seed
    noise_seed: int | None = None  # only this seed differs from the reference, by zero-mean image noise
    noise_sd: float = 0.03
    seeds: tuple[int, ...] | None = None  # default: the suite's
    latency_ms: float = 17.0
    device: str = "cpu"
    checkpoint: bool = False  # write an (untrained) best.pt of the model, so predictions can be drawn


@dataclass
class FakeSuite:
    suite: str
    variants: list[FakeVariant]
    seeds: tuple[int, ...] = (0, 1, 2)
    n_images: int = 60
    dataset: str = "isic2018"
    protocol: str = "clean"
    budget: str = "cpu"
    seed_sd: float = 0.01  # seed-to-seed sd of the reference's quality
    image_sd: float = 0.08  # image-to-image sd of the per-image DSC
    epochs: int = 8
    size: int = 224  # recipe.size in config.json (the synthetic dataset: use 64)
    hashes: dict = field(default_factory=dict)  # (variant, seed) -> config hash, filled by fake_suite


def _counts(dsc: np.ndarray, area: np.ndarray) -> pd.DataFrame:
    dsc = np.clip(dsc, 0.0, 1.0)
    tp = np.round(dsc * area).astype(int)
    fn = area - tp
    fp = fn.copy()
    tn = PIXELS - tp - fn - fp
    den = 2 * tp + fp + fn
    d = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
    return pd.DataFrame({"tn": tn, "fp": fp, "fn": fn, "tp": tp, "dsc": d, "iou": d / (2 - d)})


def fake_suite(root: Path | str, spec: FakeSuite, rng_seed: int = 3) -> pd.DataFrame:
    """Write the suite's results table and run records under ``root``; return the results table."""
    root = Path(root)
    rng = np.random.default_rng(rng_seed)
    if spec.dataset == "synthetic":  # ids of the synthetic test split, so that images can be loaded
        from engine.data import load_split

        ids = [str(i) for i in load_split("synthetic", "test", size=spec.size).ids]
        spec.n_images = len(ids)
    else:
        ids = [f"ISIC_{i:07d}" for i in range(spec.n_images)]
    area = rng.integers(4000, 20000, spec.n_images)
    difficulty = rng.normal(0, spec.image_sd, spec.n_images)  # shared by every run: images are paired
    base = {s: 0.86 + rng.normal(0, spec.seed_sd) for s in spec.seeds}
    ref_dsc = {s: base[s] + difficulty + rng.normal(0, 0.01, spec.n_images) for s in spec.seeds}
    rows = []
    for vi, v in enumerate(spec.variants):
        model = v.model or v.variant
        for s in (v.seeds or spec.seeds):
            d = ref_dsc[s] + v.shift
            if v.noise_seed is not None and s == v.noise_seed:
                d = d + np.random.default_rng(1000 + s).normal(0, v.noise_sd, spec.n_images)
            per = _counts(d, area)
            h = f"{spec.suite[:4]}{vi:03d}{s:03d}"
            spec.hashes[(v.variant, s)] = h
            rec = root / "runs" / h
            (rec / "checkpoints").mkdir(parents=True, exist_ok=True)
            per.insert(0, "id", ids)
            per.insert(0, "split", "test")
            per.insert(0, "dataset", spec.dataset)
            atomic_write_csv(rec / "per_image.csv", per.to_dict("records"), list(per.columns))
            ep = np.arange(1, spec.epochs + 1)
            jitter = rng.normal(0, 0.01, spec.epochs)
            hist = pd.DataFrame({"epoch": ep, "train_loss": 1.5 * np.exp(-ep / 3) + 0.3 + jitter,
                                 "val_loss": 1.2 * np.exp(-ep / 3) + 0.4 + jitter,
                                 "val_pooled_dsc": d.mean() - 0.2 * np.exp(-ep / 2) + jitter, "lr": 1e-3,
                                 "seconds": 60.0})
            atomic_write_csv(rec / "history.csv", hist.to_dict("records"), list(hist.columns))
            tp, fp, fn, tn = (per[c].sum() for c in ("tp", "fp", "fn", "tn"))
            test = dict(pooled_dsc=2 * tp / (2 * tp + fp + fn), pooled_miou=tp / (tp + fp + fn),
                        pooled_acc=(tp + tn) / (tp + tn + fp + fn), pooled_sen=tp / (tp + fn),
                        pooled_spe=tn / (tn + fp), per_image_dsc_mean=per["dsc"].mean(),
                        per_image_dsc_std=per["dsc"].std(ddof=1), per_image_iou_mean=per["iou"].mean(),
                        per_image_iou_std=per["iou"].std(ddof=1), isic_tjaccard=np.nan)
            config = {"model": model, "dataset": spec.dataset, "protocol": spec.protocol, "budget": spec.budget,
                      "seed": int(s), "recipe": {"size": spec.size, "epochs": spec.epochs}, "model_overrides": {},
                      "schema": 1}
            env = {"device": v.device, "git_commit": "0123456789abcdef0123", "git_dirty": False,
                   "numerics_version": 1, "precision": "fp32"}
            atomic_write_json(rec / "config.json", config)
            if v.checkpoint:
                _write_checkpoint(rec / "checkpoints" / "best.pt", model, s)
            atomic_write_json(rec / "env.json", env)
            atomic_write_json(rec / "metrics.json", {"test": test, "params": v.params, "best_epoch": spec.epochs,
                                                     "epochs": spec.epochs})
            write_status(rec, "done", wall_s=100.0)
            rows.append(dict(suite=spec.suite, variant=v.variant, model=model, dataset=spec.dataset,
                             protocol=spec.protocol, budget=spec.budget, seed=int(s), params=v.params,
                             gmacs=v.gmacs, flop_counter_gmacs=v.gmacs, latency_ms=v.latency_ms, **test,
                             best_epoch=spec.epochs, epochs=spec.epochs, wall_s=100.0, device=v.device,
                             status="done", reason="", config_hash=h, data="fp-fake", numerics_version=1,
                             precision="fp32", commit="0123456789abcdef0123",
                             synthetic=spec.dataset == "synthetic"))
    (root / spec.suite).mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(root / spec.suite / "results.csv", index=False)
    return df


def _write_checkpoint(path: Path, model: str, seed: int) -> None:
    import torch

    from zoo.registry import create_model

    torch.manual_seed(seed)
    torch.save({"model": create_model(model).state_dict()}, path)
