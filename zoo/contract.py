"""The suite-wide model contract.

Every registered model maps a B x C x H x W float image to a :class:`SegOutput`:
``logits`` is the final 1-channel logit map at input resolution and ``aux`` a (possibly
empty) tuple of auxiliary logit maps at input resolution (deep-supervision heads, extra
TransFuse heads). ``model.loss_weights`` holds one non-negative weight for ``logits``
followed by one per ``aux`` entry, so a trainer can treat every model alike.

Sigmoid is never applied inside a model; :func:`predict_proba` is the one place where a
probability map is made (the EGE-UNet paper's output is ``sigmoid(logits)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class SegOutput(NamedTuple):
    """Final logits plus auxiliary logits (all B x 1 x H x W)."""

    logits: Tensor
    aux: tuple[Tensor, ...] = ()


def loss_weights_of(model: nn.Module) -> tuple[float, ...]:
    """Loss weights ``(main, *aux)`` declared by a model; ``(1.0,)`` when it declares none."""
    weights = getattr(model, "loss_weights", None)
    return (1.0,) if weights is None else tuple(float(w) for w in weights)


def as_seg_output(out: object) -> SegOutput:
    """Normalise a model output (SegOutput, tuple or bare tensor) to :class:`SegOutput`."""
    if isinstance(out, SegOutput):
        return out
    if isinstance(out, Tensor):
        return SegOutput(out, ())
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor):
        return SegOutput(out[0], tuple(out[1]))
    raise TypeError(f"model output of type {type(out).__name__} does not follow the SegOutput contract")


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor) -> Tensor:
    """Probability map ``sigmoid(final logits)`` of a model for a batch ``x``."""
    return torch.sigmoid(as_seg_output(model(x)).logits)
