"""Evaluation: per-image confusion counts, loss and every metric convention on one split.

* :func:`evaluate` runs a model over a :class:`~engine.data.SegArrays` split in batches (any batch
  size > 1 gives the same counts: the counts are per image, never pooled per batch) and returns an
  :class:`EvalResult` (loss, per-image counts, :func:`engine.metrics.summarize`). Evaluation is
  always in float32 (no AMP), ``model.eval()``, ``torch.inference_mode()``; the ground truth is the
  stored {0, 1} mask at the evaluation resolution (the training size), prediction
  ``sigmoid(logits) >= 0.5`` (docs/protocol.md §5.1).
* Model selection (:func:`selection_info`): on the ``val`` split. Under ``clean`` that is a
  held-out validation split; under ``paper`` there is no validation split and ``val`` **is the test
  set** (the official code selects ``best.pth`` by the lowest test loss) -- every record says so
  (``selection.on_test_set``).
* :func:`evaluate_checkpoint` evaluates a stored run's checkpoint on any split / dataset (docs/protocol.md
  §9 R7), through :func:`engine.data.check_eval_allowed` (the ISIC 2017 / 2018 overlap guard).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from zoo.contract import as_seg_output, loss_weights_of
from engine.losses import model_loss
from engine.metrics import confusion_counts, per_image_metrics, summarize

if TYPE_CHECKING:
    from engine.record import RunRecord

__all__ = ["EvalResult", "evaluate", "selection_info", "is_better", "evaluate_checkpoint", "parse_eval_target",
           "eval_target_key", "load_model", "METRIC_CONVENTIONS", "PER_IMAGE_COLUMNS"]

SELECTION_SPLIT = "val"

#: how the summary keys are computed, recorded in every ``metrics.json``
METRIC_CONVENTIONS = {
    "pooled": "one confusion matrix over all test pixels (official; miou = foreground IoU)",
    "per_image": "mean / sample std (ddof 1) over images; both-empty image = 1.0",
    "isic_tjaccard": "per-image IoU, < 0.65 -> 0, mean",
}


@dataclass
class EvalResult:
    """One split's evaluation: per-image counts (``tn, fp, fn, tp``), mean loss and the summary."""

    dataset: str
    split: str
    ids: tuple[str, ...]
    counts: np.ndarray
    loss: float | None
    summary: dict[str, float]
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.counts.shape[0])

    def per_image_rows(self) -> list[dict[str, Any]]:
        per = per_image_metrics(self.counts)
        return [
            {"dataset": self.dataset, "split": self.split, "id": i, "tn": int(c[0]), "fp": int(c[1]),
             "fn": int(c[2]), "tp": int(c[3]), "dsc": float(d), "iou": float(j)}
            for i, c, d, j in zip(self.ids, self.counts, per["dsc"], per["iou"])
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: dataset, split, n_images, loss and every summary key."""
        return {"dataset": self.dataset, "split": self.split, "n_images": self.n_images, "loss": self.loss,
                **self.summary, **self.info}


PER_IMAGE_COLUMNS = ("dataset", "split", "id", "tn", "fp", "fn", "tp", "dsc", "iou")


def _batches(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield s, min(n, s + batch_size)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Any, *, device: str | torch.device = "cpu", batch_size: int = 16,
             loss_weights: Sequence[float] | None | bool = None, max_images: int | None = None,
             threshold: float = 0.5, fused_loss: bool = False) -> EvalResult:
    """Evaluate ``model`` on ``data`` (a ``SegArrays``: uint8 images N x H x W x 3, masks N x H x W).

    ``loss_weights``: None = ``model.loss_weights`` (the training loss, used for selection); False
    skips the loss. ``max_images`` keeps the first images only. The model is left in eval mode.
    ``fused_loss``: compute that loss with the fused CPU kernel (:func:`engine.losses.bce_dice`).
    """
    from engine.data import normalise

    t0 = time.perf_counter()
    dev = torch.device(device)
    model.eval()
    n = len(data.ids) if max_images is None else min(len(data.ids), int(max_images))
    weights = None if loss_weights is False else (loss_weights_of(model) if loss_weights in (None, True) else
                                                   tuple(loss_weights))
    counts: list[np.ndarray] = []
    loss_sum = 0.0
    for s, e in _batches(n, max(1, int(batch_size))):
        x = normalise(np.array(data.images[s:e]), device=dev)  # np.array: writable copy of a read-only map
        y = torch.from_numpy(np.array(data.masks[s:e])).to(dev).unsqueeze(1).float()
        out = as_seg_output(model(x))
        counts.append(confusion_counts(torch.sigmoid(out.logits.float()), y, threshold))
        if weights is not None:
            loss_sum += float(model_loss(out, y, weights, fused=fused_loss).double().item()) * (e - s)
    c = np.concatenate(counts) if counts else np.zeros((0, 4), dtype=np.int64)
    loss = (loss_sum / n if n else float("nan")) if weights is not None else None
    return EvalResult(dataset=data.dataset, split=data.split, ids=tuple(data.ids[:n]), counts=c, loss=loss,
                      summary=summarize(c) if n else {}, seconds=time.perf_counter() - t0)


def selection_info(protocol: str, criterion: str) -> dict[str, Any]:
    """How the checkpoint is selected under ``protocol`` (recorded in ``metrics.json``)."""
    on_test = protocol == "paper"
    mode = "min" if criterion.endswith("loss") else "max"
    return {
        "split": SELECTION_SPLIT,
        "criterion": criterion,
        "mode": mode,
        "on_test_set": on_test,
        "note": ("paper protocol: no validation split; 'val' is the test set and the checkpoint is selected on it "
                 "(as the official code)") if on_test else "clean protocol: selected on the held-out validation split",
    }


def is_better(criterion: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of the selection ``criterion`` beats ``best`` (a loss: lower; a metric: higher)."""
    if best is None:
        return True
    if criterion == "val_loss":
        return value < best
    return value > best


def eval_target_key(dataset: str, split: str) -> str:
    """The key of an external evaluation in ``metrics.json``: ``"ph2"`` for its test split, else ``"ph2:val"``."""
    return dataset if split == "test" else f"{dataset}:{split}"


def parse_eval_target(target: str) -> tuple[str, str]:
    """``"ph2"`` -> ``("ph2", "test")``; ``"ph2:val"`` -> ``("ph2", "val")``."""
    name, _, split = str(target).partition(":")
    return name.strip().lower(), (split.strip().lower() or "test")


def load_model(record_dir: str | os.PathLike, checkpoint: str = "best", map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a stored run's model from its config and load ``checkpoints/<checkpoint>.pt``; returns the
    model and the run's config (the dict of :attr:`engine.record.RunRecord.config`)."""
    record = _load_config_record(record_dir)
    return _restore_model(record, checkpoint, map_location), record.config


def _load_config_record(record_dir: str | os.PathLike) -> "RunRecord":
    from engine.record import load_record

    record = load_record(record_dir)
    if record.config is None:
        raise FileNotFoundError(f"no run config in {record.record_dir}")
    return record


def _restore_model(record: "RunRecord", checkpoint: str, map_location: str | torch.device) -> nn.Module:
    from zoo.registry import create_model

    model = create_model(record.model, **record.model_overrides)
    path = record.record_dir / "checkpoints" / f"{checkpoint}.pt"
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    return model


def evaluate_checkpoint(record_dir: str | os.PathLike, dataset: str | None = None, split: str = "test", *,
                        protocol: str | None = None, data_root: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        batch_size: int = 16, checkpoint: str = "best", size: int | None = None) -> EvalResult:
    """Evaluate a stored run's checkpoint on ``split`` of ``dataset`` (default: the training dataset).

    Raises :class:`engine.data.DataError` when the overlap guard refuses the pair (e.g. an ISIC 2018
    model on ISIC 2017 test images) or the data is missing.
    """
    from engine.data import check_eval_allowed, load_split

    record = _load_config_record(record_dir)
    model = _restore_model(record, checkpoint, "cpu")
    dataset = (dataset or record.dataset).lower()
    train_protocol = record.protocol
    protocol = protocol or (train_protocol if dataset == record.dataset else "clean")
    check_eval_allowed(record.dataset, dataset, split, train_protocol=train_protocol, eval_protocol=protocol)
    data = load_split(dataset, split, protocol=protocol, size=size or record.recipe_size, root=data_root,
                      cache_dir=cache_dir)
    model.to(device)
    return evaluate(model, data, device=device, batch_size=batch_size)
