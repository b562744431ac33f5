"""Small helpers shared by the baseline families (no model logic)."""

from __future__ import annotations

import math

from torch import Tensor, nn


def check_sides(x: Tensor, multiple: int, model: str) -> None:
    """Raise a readable error when the input sides are not multiples of ``multiple``."""
    if x.dim() != 4:
        raise ValueError(f"{model} expects a B x C x H x W tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{model} input sides must be multiples of {multiple}, got {h}x{w}")


def normal_fan_out_(conv: nn.Conv2d) -> None:
    """N(0, sqrt(2 / fan_out)) weights (fan_out = k*k*out/groups) and zero bias (UNeXt/MALUNet convention)."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def trunc_normal_linear_(linear: nn.Linear, std: float = 0.02) -> None:
    """Truncated-normal weights (std 0.02, cut at +-2) and zero bias (ViT/UNeXt/MALUNet convention)."""
    nn.init.trunc_normal_(linear.weight, std=std, a=-2.0, b=2.0)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
