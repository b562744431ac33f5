"""The TinySeg model and its builder, ``tinyseg.model:build``.

What the benchmark asks of a model (zoo/contract.py): ``forward`` maps a B x 3 x H x W float image to
1-channel logits at input resolution (no sigmoid), returned as ``SegOutput(logits, aux)``, a bare tensor
or a ``(logits, aux)`` tuple. Deep-supervision heads go in ``aux`` with one ``loss_weights`` entry each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:  # the contract's output type, when egeunet-bench is installed (a bare tensor is accepted too)
    from zoo.contract import SegOutput
except ImportError:  # pragma: no cover - used without the benchmark
    SegOutput = None  # type: ignore[assignment,misc]


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinySeg(nn.Module):
    """Encoder (full and half resolution), decoder with one skip connection, 1 x 1 logit head.

    ``deep_supervision`` adds a logit head on the half-resolution features, upsampled, as ``aux``."""

    def __init__(self, width: int = 8, deep_supervision: bool = False) -> None:
        super().__init__()
        self.enc1 = _block(3, width)
        self.enc2 = _block(width, 2 * width, stride=2)
        self.dec = _block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        self.aux_head = nn.Conv2d(2 * width, 1, 1) if deep_supervision else None
        self.loss_weights = (1.0, 0.5) if deep_supervision else (1.0,)

    def forward(self, x: torch.Tensor):
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        up = F.interpolate(f2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.dec(torch.cat([f1, up], dim=1)))
        aux = ()
        if self.aux_head is not None:
            aux = (F.interpolate(self.aux_head(f2), size=x.shape[-2:], mode="bilinear", align_corners=False),)
        return SegOutput(logits, aux) if SegOutput is not None else (logits, aux)


def build(width: int = 8, deep_supervision: bool = False) -> TinySeg:
    """TinySeg with ``width`` channels at full resolution (keyword arguments come from the suite)."""
    return TinySeg(width=width, deep_supervision=deep_supervision)
