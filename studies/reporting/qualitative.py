"""Qualitative grid: image, ground truth, and each model's prediction (overlay + per-image DSC).

Rows are a fixed, reproducible set of test ids: the two hardest images for EGE-UNet (lowest per-image DSC
in its record), its median image and its best image (or ids given by the user). Predictions come from each
run's best checkpoint, rebuilt with ``zoo.registry.create_model(model, **overrides)`` and applied to
``engine.data.load_split(dataset, "test", protocol=, size=)`` with the engine's normalisation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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


def choose_ids(per_image: pd.DataFrame, n_hard: int = 1) -> list[tuple[str, str]]:
    """(id, why) for the worst (``n_hard`` hardest), the median and the best image of one run."""
    ranked = per_image.sort_values(["dsc", "id"], kind="stable").reset_index(drop=True)
    picks: list[tuple[str, str]] = []
    for i in range(min(n_hard, len(ranked))):
        picks.append((str(ranked.at[i, "id"]), "worst" if i == 0 else f"hard #{i + 1}"))
    if len(ranked):
        picks.append((str(ranked.at[(len(ranked) - 1) // 2, "id"]), "median"))
        picks.append((str(ranked.at[len(ranked) - 1, "id"]), "best"))
    seen: set[str] = set()
    return [(i, w) for i, w in picks if not (i in seen or seen.add(i))]


def spread_ids(per_image: pd.DataFrame, k: int = 12) -> list[str]:
    """``k`` ids spread over the DSC ranking of one run (worst, ..., median, ..., best)."""
    ranked = per_image.sort_values(["dsc", "id"], kind="stable")["id"].astype(str).to_list()
    if len(ranked) <= k:
        return ranked
    pos = np.unique(np.round(np.linspace(0, len(ranked) - 1, k)).astype(int))
    return [ranked[i] for i in pos]


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


@dataclass
class Predictions:
    """Test images, masks and each variant's thresholded predictions on them (None: why not, in ``notes``)."""

    ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    preds: dict[str, np.ndarray | None]
    dsc: dict[str, np.ndarray | None]
    notes: dict[str, str]
    seed: int


def predict_variants(group: Group, results_root: Path, suite: str, per_image: dict[tuple[str, int], pd.DataFrame],
                     ids: list[str], seed: int) -> Predictions | str:
    """Predictions of every variant of the group (its run of ``seed``, else its first seed) on ``ids``.

    Returns a reason string when the test images cannot be loaded; a variant without a checkpoint or whose
    prediction fails gets ``None`` and a note, never an exception.
    """
    runs = group.runs
    rows = {}
    for v in group.variants:
        sub = runs[runs["variant"] == v].sort_values("seed")
        same = sub[sub["seed"] == seed]
        rows[v] = same.iloc[0] if len(same) else sub.iloc[0]
    load_split = _import("engine.data.load_split")
    if load_split is None:
        return "engine.data.load_split is not available"
    cfg = next((c for c in (read_config(run_dir(results_root, suite, r)) for r in rows.values()) if c), {})
    try:
        split = load_split(group.dataset, "test", protocol=group.protocol, size=_size_of(cfg))
    except Exception as exc:  # DataError and friends: the figure is skipped, the report goes on
        return f"test split unavailable ({' '.join(str(exc).split())[:160]})"
    index = {str(i): k for k, i in enumerate(split.ids)}
    ids = [i for i in ids if i in index]
    if not ids:
        return f"none of the chosen ids is in the {group.dataset} test split"
    sel = [index[i] for i in ids]
    images = np.asarray(split.images)[sel]
    masks = np.asarray(split.masks)[sel]
    preds, dscs, notes = {}, {}, {}
    for v, row in rows.items():
        rec = run_dir(results_root, suite, row)
        preds[v] = dscs[v] = None
        if rec is None or not (rec / "checkpoints" / "best.pt").is_file() or not read_config(rec):
            notes[v] = "checkpoint missing"
            continue
        try:
            prob = predict_run(rec, images)
        except Exception as exc:
            notes[v] = f"prediction failed ({' '.join(str(exc).split())[:100]})"
            continue
        dsc = per_image_dsc(prob, masks)
        recorded = per_image.get((v, int(row["seed"])))
        if recorded is not None:
            rec_dsc = recorded.set_index("id")["dsc"].reindex(ids).to_numpy(dtype=float)
            gap = np.nanmax(np.abs(rec_dsc - dsc)) if np.isfinite(rec_dsc).any() else 0.0
            if gap > 1e-3:
                notes[v] = f"recomputed DSC differs from per_image.csv by up to {gap * 100:.2f} pp"
        preds[v], dscs[v] = prob >= 0.5, dsc
    return Predictions(ids, images, masks, preds, dscs, notes, seed)


def qualitative_grid(group: Group, results_root: Path, suite: str, per_image: dict[tuple[str, int], pd.DataFrame],
                     stem: Path, *, max_variants: int = 0, ids: list[str] | None = None,
                     names: dict[str, str] | None = None) -> FigureOutcome:
    """Worst, median and best test image of the reference (or ``ids``) x every variant of the table.

    ``max_variants`` > 0 caps the columns (0: all). Variants without a checkpoint get an empty panel that says so.
    """
    names = names or {}
    anchor = group.reference or group.variants[0]
    anchor_seeds = sorted(s for (v, s) in per_image if v == anchor)
    if not anchor_seeds and not ids:
        return _skip(KEY, TITLE, f"no per_image.csv for {anchor}: cannot pick the test images")
    seed = anchor_seeds[0] if anchor_seeds else int(group.runs["seed"].min())
    picks = [(str(i), "chosen") for i in ids] if ids else choose_ids(per_image[(anchor, seed)])
    res = predict_variants(group, results_root, suite, per_image, [i for i, _ in picks], seed)
    if isinstance(res, str):
        return _skip(KEY, TITLE, res)
    variants = [anchor] + [v for v in group.variants if v != anchor]
    dropped = 0
    if max_variants and len(variants) > max_variants:
        dropped = len(variants) - max_variants
        variants = variants[:max_variants]
    if all(res.preds[v] is None for v in variants):
        return _skip(KEY, TITLE, "no run has a usable best checkpoint ("
                     + "; ".join(f"{names.get(v, v)}: {res.notes[v]}" for v in variants) + ")")
    why = dict(picks)
    picks = [(i, why[i]) for i in res.ids]
    files = _draw(res, picks, variants, group.reference, stem, names)
    rows_txt = ("the ids given with --qual-ids" if ids else
                f"the worst, median and best test image of {names.get(anchor, anchor)} by its per-image DSC")
    cap = (f"Test images of {group.dataset} (rows): {rows_txt}; columns: image, ground truth and every variant's "
           "thresholded prediction (blue fill) with the ground-truth contour (yellow) and its per-image DSC (%); "
           f"best checkpoint of seed {seed}.")
    missing = [names.get(v, v) for v in variants if res.preds[v] is None]
    if missing:
        cap += f" Not shown (checkpoint missing or unusable): {', '.join(missing)}."
    if dropped:
        cap += f" {dropped} further variant(s) not shown (limit {max_variants})."
    notes = [f"{names.get(v, v)}: {n}" for v, n in res.notes.items() if v in variants and res.preds[v] is not None]
    if notes:
        cap += " Notes: " + "; ".join(notes) + "."
    return FigureOutcome(KEY, TITLE, files, cap)


def _draw(res: Predictions, picks, variants, reference, stem: Path, names: dict[str, str]) -> list[Path]:
    images, masks = res.images, res.masks
    ncols = 2 + len(variants)
    nrows = len(picks)
    width = min(FULL_WIDTH, 0.85 * ncols + 0.35)
    cell = (width - 0.35) / ncols
    aspect = images.shape[1] / images.shape[2]
    with figure_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, cell * aspect * nrows + 0.8), squeeze=False,
                                 gridspec_kw=dict(wspace=0.04, hspace=0.06))
        titles = ["Image", "Ground truth"] + [short_label(names.get(v, v), 12) for v in variants]
        for r, (img_id, why) in enumerate(picks):
            img, gt = images[r], masks[r]
            axes[r, 0].imshow(img)
            axes[r, 1].imshow(gt, cmap="gray", vmin=0, vmax=1)
            for c, v in enumerate(variants, start=2):
                ax = axes[r, c]
                pred = res.preds[v]
                if pred is None:
                    ax.imshow(np.full(img.shape[:2], 0.93), cmap="gray", vmin=0, vmax=1)
                    ax.text(0.5, 0.5, "checkpoint\nmissing" if res.notes.get(v) == "checkpoint missing"
                            else "prediction\nfailed", transform=ax.transAxes, ha="center", va="center",
                            fontsize=5.5, color="#555555")
                    continue
                ax.imshow(img)
                overlay = np.zeros((*pred[r].shape, 4))
                overlay[pred[r]] = (*_rgb(PRED_COLOR), 0.45)
                ax.imshow(overlay)
                if pred[r].any():
                    ax.contour(pred[r].astype(float), levels=[0.5], colors=[PRED_COLOR], linewidths=0.5)
                if gt.any():
                    ax.contour(gt.astype(float), levels=[0.5], colors=[GT_COLOR], linewidths=0.6)
                ax.text(0.03, 0.04, f"{res.dsc[v][r] * 100:.1f}", transform=ax.transAxes, fontsize=5.5,
                        color="white", ha="left", va="bottom",
                        bbox=dict(boxstyle="square,pad=0.15", fc="black", ec="none", alpha=0.65))
            axes[r, 0].set_ylabel(f"{_short_id(img_id)}\n({why})", fontsize=5.5, rotation=90, labelpad=2)
        for c, t in enumerate(titles):
            is_ref = c >= 2 and variants[c - 2] == reference
            axes[0, c].set_title(t, fontsize=5.5, color=REF_COLOR if is_ref else "black",
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
        fig.subplots_adjust(left=0.06, right=0.995, top=1 - 0.35 / fig.get_figheight(),
                            bottom=0.3 / fig.get_figheight())
        return save(fig, stem)


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray | None, path: Path, size: int = 192) -> Path:
    """A small PNG of the image with the ground truth (yellow contour) and the prediction (blue fill)."""
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.5:
        img = img / 255.0
    out = img.copy()
    g = np.asarray(gt) >= 0.5
    if pred is not None:
        p = np.asarray(pred, bool)
        out[p] = 0.55 * out[p] + 0.45 * np.array(_rgb(PRED_COLOR))
    edge = g & ~(np.roll(g, 1, 0) & np.roll(g, -1, 0) & np.roll(g, 1, 1) & np.roll(g, -1, 1))
    out[edge] = _rgb(GT_COLOR)
    pil = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    pil.thumbnail((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, optimize=True)
    return path


def _short_id(img_id: str) -> str:
    return img_id if len(img_id) <= 18 else "…" + img_id[-16:]


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
