"""Qualitative grid: image, ground truth, and each model's prediction (overlay + per-image DSC).

Rows are a fixed, reproducible set of test ids: the two hardest images for EGE-UNet (lowest per-image DSC
in its record), its median image and its best image (or ids given by the user). Predictions come from each
run's best checkpoint, rebuilt with ``zoo.registry.create_model(model, **overrides)`` and applied to
``engine.data.load_split(dataset, "test", protocol=, size=)`` with the engine's normalisation.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from studies.reporting.figures import FigureOutcome, _skip
from studies.reporting.load import Group, read_config, run_dir
from studies.reporting.style import FULL_WIDTH, GT_COLOR, PRED_COLOR, REF_COLOR, figure_style, save, short_label

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

KEY, TITLE = "qualitative", "Qualitative results"


def choose_ids(per_image: pd.DataFrame, n_hard: int = 2) -> list[tuple[str, str]]:
    """(id, why) for the hardest ``n_hard`` images, the median and the best image of one run."""
    ranked = per_image.sort_values(["dsc", "id"], kind="stable").reset_index(drop=True)
    picks: list[tuple[str, str]] = []
    for i in range(min(n_hard, len(ranked))):
        picks.append((str(ranked.at[i, "id"]), f"hard #{i + 1}"))
    if len(ranked):
        picks.append((str(ranked.at[(len(ranked) - 1) // 2, "id"]), "median"))
        picks.append((str(ranked.at[len(ranked) - 1, "id"]), "best"))
    seen: set[str] = set()
    return [(i, w) for i, w in picks if not (i in seen or seen.add(i))]


def _import(*names: str):
    for name in names:
        mod, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    return None


def _state_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state", "model_state_dict", "weights"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"unrecognised checkpoint object {type(obj).__name__}")


def _size_of(config: dict) -> int | tuple[int, int]:
    for src in (config, config.get("recipe") or {}):
        for key in ("size", "image_size", "input_size", "img_size"):
            if src.get(key) is not None:
                v = src[key]
                return tuple(v) if isinstance(v, (list, tuple)) else int(v)
    return 256


def predict_run(record: Path, images: np.ndarray) -> np.ndarray:
    """Probability maps (N x H x W) of one run's best checkpoint on uint8 images N x H x W x 3."""
    import torch

    from zoo.contract import predict_proba
    from zoo.registry import create_model

    config = read_config(record) or {}
    model = create_model(config["model"], **(config.get("model_overrides") or {}))
    ckpt = torch.load(record / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(_state_dict(ckpt))
    model.eval()
    normalise = _import("engine.augment.normalise", "engine.data.augment.normalise", "engine.data.normalise")
    if normalise is None:
        raise RuntimeError("engine's normalise() not found")
    x = torch.as_tensor(normalise(np.ascontiguousarray(images))).float()
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few images: one thread avoids the oversubscription stalls of shared CPUs
    try:
        with torch.inference_mode():
            for i in range(0, len(x), 8):
                out.append(predict_proba(model, x[i:i + 8])[:, 0].cpu().numpy())
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(out)


def per_image_dsc(prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image DSC at threshold 0.5 with the engine's conventions (both empty = 1)."""
    pred = prob >= 0.5
    gt = mask >= 0.5
    tp = (pred & gt).sum(axis=(1, 2)).astype(float)
    fp = (pred & ~gt).sum(axis=(1, 2)).astype(float)
    fn = (~pred & gt).sum(axis=(1, 2)).astype(float)
    den = 2 * tp + fp + fn
    return np.where(den == 0, 1.0, 2 * tp / np.where(den == 0, 1.0, den))


def qualitative_grid(group: Group, results_root: Path, suite: str, per_image: dict[tuple[str, int], pd.DataFrame],
                     stem: Path, *, max_variants: int = 6, ids: list[str] | None = None) -> FigureOutcome:
    runs = group.runs
    anchor = group.reference or group.variants[0]
    anchor_seeds = sorted(s for (v, s) in per_image if v == anchor)
    if not anchor_seeds and not ids:
        return _skip(KEY, TITLE, f"no per_image.csv for {anchor}: cannot pick the test images")
    seed = anchor_seeds[0] if anchor_seeds else int(runs["seed"].min())
    variants = [anchor] + [v for v in group.variants if v != anchor][: max_variants - 1]
    dropped = len(group.variants) - len(variants)
    chosen: list[tuple[str, pd.Series]] = []
    for v in variants:
        sub = runs[runs["variant"] == v].sort_values("seed")
        same = sub[sub["seed"] == seed]
        row = same.iloc[0] if len(same) else sub.iloc[0]
        rec = run_dir(results_root, suite, row)
        if rec is not None and (rec / "checkpoints" / "best.pt").is_file() and read_config(rec):
            chosen.append((v, row))
    if not chosen:
        return _skip(KEY, TITLE, "no run has a best checkpoint and config.json")
    if ids:
        picks = [(str(i), "chosen") for i in ids]
    else:
        picks = choose_ids(per_image[(anchor, seed)])
    load_split = _import("engine.data.load_split")
    if load_split is None:
        return _skip(KEY, TITLE, "engine.data.load_split is not available")
    first_cfg = read_config(run_dir(results_root, suite, chosen[0][1])) or {}
    size = _size_of(first_cfg)
    try:
        split = load_split(group.dataset, "test", protocol=group.protocol, size=size)
    except Exception as exc:  # DataError and friends: the figure is skipped, the report goes on
        return _skip(KEY, TITLE, f"test split unavailable ({' '.join(str(exc).split())})")
    index = {str(i): k for k, i in enumerate(split.ids)}
    missing = [i for i, _ in picks if i not in index]
    picks = [(i, w) for i, w in picks if i in index]
    if not picks:
        return _skip(KEY, TITLE, f"none of the chosen ids is in the {group.dataset} test split")
    sel = [index[i] for i, _ in picks]
    images = np.asarray(split.images)[sel]
    masks = np.asarray(split.masks)[sel]
    preds: list[tuple[str, np.ndarray, np.ndarray]] = []
    notes = []
    for v, row in chosen:
        rec = run_dir(results_root, suite, row)
        try:
            prob = predict_run(rec, images)
        except Exception as exc:
            notes.append(f"{v}: prediction failed ({' '.join(str(exc).split())[:120]})")
            continue
        dsc = per_image_dsc(prob, masks)
        recorded = per_image.get((v, int(row["seed"])))
        if recorded is not None:
            rec_dsc = recorded.set_index("id")["dsc"].reindex([i for i, _ in picks]).to_numpy(dtype=float)
            if np.nanmax(np.abs(rec_dsc - dsc)) > 1e-3:
                notes.append(f"{v}: recomputed DSC differs from per_image.csv by up to "
                             f"{np.nanmax(np.abs(rec_dsc - dsc)) * 100:.2f} pp")
        preds.append((v, prob >= 0.5, dsc))
    if not preds:
        return _skip(KEY, TITLE, "; ".join(notes) or "no prediction could be made")
    files = _draw(images, masks, picks, preds, group.reference, stem)
    rows_txt = ("the ids given with --qual-ids" if ids else
                f"the two with the lowest per-image DSC for {anchor} (hard), its median and its best image")
    cap = (f"Test images of {group.dataset} (rows): {rows_txt}; columns: image, ground truth, and each model's "
           f"thresholded prediction "
           f"(blue fill) with the ground-truth contour (yellow) and its per-image DSC (%). Best checkpoint of seed "
           f"{seed} per model.")
    if dropped > 0:
        cap += f" {dropped} further variant(s) not shown (limit {max_variants})."
    if missing:
        notes.append(f"ids not in the test split: {', '.join(missing)}")
    out = FigureOutcome(KEY, TITLE, files, cap)
    if notes:
        out.caption += " Notes: " + "; ".join(notes) + "."
    return out


def _draw(images, masks, picks, preds, reference, stem: Path) -> list[Path]:
    ncols = 2 + len(preds)
    nrows = len(picks)
    width = min(FULL_WIDTH, 0.95 * ncols + 0.35)
    cell = (width - 0.35) / ncols
    aspect = images.shape[1] / images.shape[2]
    with figure_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, cell * aspect * nrows + 0.75), squeeze=False,
                                 gridspec_kw=dict(wspace=0.04, hspace=0.06))
        titles = ["Image", "Ground truth"] + [short_label(v, 14) for v, _, _ in preds]
        for r, (img_id, why) in enumerate(picks):
            img, gt = images[r], masks[r]
            axes[r, 0].imshow(img)
            axes[r, 1].imshow(gt, cmap="gray", vmin=0, vmax=1)
            for c, (v, pred, dsc) in enumerate(preds, start=2):
                ax = axes[r, c]
                ax.imshow(img)
                overlay = np.zeros((*pred[r].shape, 4))
                overlay[pred[r]] = (*_rgb(PRED_COLOR), 0.45)
                ax.imshow(overlay)
                if pred[r].any():
                    ax.contour(pred[r].astype(float), levels=[0.5], colors=[PRED_COLOR], linewidths=0.5)
                if gt.any():
                    ax.contour(gt.astype(float), levels=[0.5], colors=[GT_COLOR], linewidths=0.6)
                ax.text(0.03, 0.04, f"{dsc[r] * 100:.1f}", transform=ax.transAxes, fontsize=6, color="white",
                        ha="left", va="bottom",
                        bbox=dict(boxstyle="square,pad=0.15", fc="black", ec="none", alpha=0.65))
            axes[r, 0].set_ylabel(f"{_short_id(img_id)}\n({why})", fontsize=5.8, rotation=90, labelpad=2)
        for c, t in enumerate(titles):
            is_ref = c >= 2 and preds[c - 2][0] == reference
            axes[0, c].set_title(t, fontsize=6, color=REF_COLOR if is_ref else "black",
                                 fontweight="bold" if is_ref else "normal", pad=2)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
        handles = [Patch(facecolor=PRED_COLOR, alpha=0.6, label="prediction (threshold 0.5)"),
                   Line2D([], [], color=GT_COLOR, lw=1.2, label="ground-truth contour"),
                   Patch(facecolor="black", alpha=0.65, label="number: per-image DSC (%)")]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.01),
                   fontsize=6, handlelength=1.4)
        fig.subplots_adjust(left=0.06, right=0.995, top=1 - 0.3 / fig.get_figheight(),
                            bottom=0.3 / fig.get_figheight())
        return save(fig, stem)


def _short_id(img_id: str) -> str:
    return img_id if len(img_id) <= 18 else "…" + img_id[-16:]


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
