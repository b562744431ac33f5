"""Segmentation metrics from per-image confusion counts (docs/protocol.md §5).

Everything derives from one int64 array of per-image counts ``N x 4`` with columns
``(tn, fp, fn, tp)`` computed once at threshold 0.5 (prediction ``>= threshold``, ground truth
``>= 0.5``), so pooled and per-image scores come from the same numbers and do not depend on the
evaluation batch size.

Conventions (label every table column with one of them and with the evaluation resolution):

* **pooled** (the official EGE-UNet / MALUNet definition, §5.1): one confusion matrix over all
  pixels of all images. ``miou`` is the *foreground* IoU ``TP/(TP+FP+FN)`` (the official "mIoU",
  not a mean over classes), ``dsc = 2TP/(2TP+FP+FN)``, ``acc``, ``sen = TP/(TP+FN)``,
  ``spe = TN/(TN+FP)``. A zero denominator gives 0 (as the official code).
* **per-image** (§5.2; MONAI / torchmetrics sample-wise / nnU-Net / ISIC): DSC and IoU of each
  image, then mean and standard deviation over images. Empty rule: an image whose ground truth
  *and* prediction are both empty scores **1.0** for DSC and IoU (a perfect "nothing there"
  answer; ISIC masks always hold a lesion, so this matters only for other data). Empty ground
  truth with a non-empty prediction (or the reverse) scores 0. The std is the **sample** std
  (ddof = 1: the test images are a sample of the image population, as seeds are in §10); it is
  0.0 when fewer than 2 images are given.
* **ISIC thresholded Jaccard** (ISIC 2018 Task 1 score, Codella et al. 2019): per-image IoU,
  values below 0.65 set to 0, then the mean over images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COUNT_COLUMNS", "ISIC_JACCARD_THRESHOLD", "SUMMARY_KEYS", "confusion_counts", "pooled_metrics",
    "per_image_metrics", "isic_thresholded_jaccard", "summarize",
]

COUNT_COLUMNS = ("tn", "fp", "fn", "tp")
ISIC_JACCARD_THRESHOLD = 0.65
SUMMARY_KEYS = (
    "pooled_miou", "pooled_dsc", "pooled_acc", "pooled_sen", "pooled_spe",
    "per_image_dsc_mean", "per_image_dsc_std", "per_image_iou_mean", "per_image_iou_std",
    "isic_tjaccard",
)


def _flat_per_image(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise ValueError(f"expected a batch N x ... of maps, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def confusion_counts(probs: Tensor | np.ndarray, target: Tensor | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-image ``(tn, fp, fn, tp)`` as an int64 ``N x 4`` numpy array.

    ``probs``: probabilities (N x 1 x H x W or N x H x W; apply the sigmoid to logits first, or pass
    binary predictions); ``target``: ground truth of the same size, soft or binary. Prediction is
    ``probs >= threshold``, ground truth ``target >= 0.5`` (docs/protocol.md §5.1).
    """
    p = _flat_per_image(probs)
    t = _flat_per_image(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} differ per image")
    pred = p >= threshold
    gt = t >= 0.5
    tp = (pred & gt).sum(1, dtype=torch.int64)
    fp = (pred & ~gt).sum(1, dtype=torch.int64)
    fn = (~pred & gt).sum(1, dtype=torch.int64)
    tn = torch.full_like(tp, p.shape[1]) - tp - fp - fn
    return torch.stack([tn, fp, fn, tp], 1).cpu().numpy().astype(np.int64)


def _as_counts(counts: Any) -> np.ndarray:
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counts must be N x 4 (tn, fp, fn, tp), got shape {c.shape}")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    return c


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else 0.0


def pooled_metrics(counts: Any) -> dict[str, float]:
    """Official pooled scores ``{miou, dsc, acc, sen, spe}`` from one confusion matrix over all pixels."""
    c = _as_counts(counts)
    tn, fp, fn, tp = (int(v) for v in c.sum(0))  # python ints: exact for any pixel count
    return {
        "miou": _ratio(tp, tp + fp + fn),
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tn + tp, tn + fp + fn + tp),
        "sen": _ratio(tp, tp + fn),
        "spe": _ratio(tn, tn + fp),
    }


def per_image_metrics(counts: Any) -> dict[str, np.ndarray]:
    """Per-image ``{dsc, iou}`` (float64 arrays of length N); both-empty images score 1.0."""
    c = _as_counts(counts).astype(np.float64)
    fp, fn, tp = c[:, 1], c[:, 2], c[:, 3]
    den_iou = tp + fp + fn
    den_dsc = 2 * tp + fp + fn
    empty = den_iou == 0  # empty ground truth and empty prediction
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(empty, 1.0, tp / np.where(empty, 1.0, den_iou))
        dsc = np.where(empty, 1.0, 2 * tp / np.where(empty, 1.0, den_dsc))
    return {"dsc": dsc, "iou": iou}


def isic_thresholded_jaccard(counts: Any, threshold: float = ISIC_JACCARD_THRESHOLD) -> float:
    """ISIC 2018 Task 1 score: mean over images of ``IoU if IoU >= threshold else 0``."""
    iou = per_image_metrics(counts)["iou"]
    return float(np.where(iou >= threshold, iou, 0.0).mean()) if len(iou) else 0.0


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return 0.0, 0.0
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else 0.0)


def summarize(counts: Any) -> dict[str, float]:
    """All conventions from per-image counts, keyed exactly by :data:`SUMMARY_KEYS` (floats)."""
    c = _as_counts(counts)
    pooled = pooled_metrics(c)
    per = per_image_metrics(c)
    dsc_m, dsc_s = _mean_std(per["dsc"])
    iou_m, iou_s = _mean_std(per["iou"])
    out: dict[str, float] = {f"pooled_{k}": v for k, v in pooled.items()}
    out.update({
        "per_image_dsc_mean": dsc_m, "per_image_dsc_std": dsc_s,
        "per_image_iou_mean": iou_m, "per_image_iou_std": iou_s,
        "isic_tjaccard": isic_thresholded_jaccard(c),
    })
    return out
