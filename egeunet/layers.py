"""Building blocks of EGE-UNet: channels-first LayerNorm, GHPA and GAB (docs/models.md §1.1, §1.4, §1.5).

Module and parameter names follow the official implementation so that its checkpoints load
with ``strict=True`` (see :mod:`egeunet.official`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCH_TYPES = ("xy", "zx", "zy", "dw", "id")


def up(x: Tensor, size: tuple[int, int] | None = None, scale: int | None = None) -> Tensor:
    """Bilinear resize with ``align_corners=True`` (every interpolation of EGE-UNet)."""
    if size is not None:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)


class LayerNormCF(nn.Module):
    """LayerNorm over the channel axis of a B x C x H x W tensor (ConvNeXt style, biased variance)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _branch_names(branches: tuple[str, ...]) -> list[str]:
    """Attribute suffix per chunk: the branch type, or ``type{i}`` where a type repeats."""
    names = []
    for i, b in enumerate(branches):
        names.append(b if branches.count(b) == 1 else f"{b}{i}")
    return names


class GHPA(nn.Module):
    """Grouped multi-axis Hadamard Product Attention, ``GHPA(dim_in, dim_out)``.

    ``branches`` assigns one operation to each of ``len(branches)`` equal channel chunks:
    ``xy`` (Hadamard product with a learnt H-W mask), ``zx`` (channel-height mask), ``zy``
    (channel-width mask), ``dw`` (1x1 conv, GELU, depth-wise 3x3) or ``id`` (chunk passes
    through unchanged). The official layer is ``("xy", "zx", "zy", "dw")``.
    """

    def __init__(self, dim_in: int, dim_out: int, branches: tuple[str, ...] = ("xy", "zx", "zy", "dw")) -> None:
        super().__init__()
        if not branches:
            raise ValueError("GHPA needs at least one branch")
        bad = [b for b in branches if b not in BRANCH_TYPES]
        if bad:
            raise ValueError(f"unknown GHPA branch type(s) {bad}; valid: {', '.join(BRANCH_TYPES)}")
        if dim_in % len(branches):
            raise ValueError(f"GHPA dim_in={dim_in} is not divisible by its {len(branches)} groups {branches}")
        self.branches = tuple(branches)
        self.names = _branch_names(self.branches)
        c = dim_in // len(branches)
        self.chunk = c
        # Parameters first (state_dict order = official order), then the branch convolutions.
        for b, n in zip(self.branches, self.names):
            if b == "xy":
                self.register_parameter(f"params_{n}", nn.Parameter(torch.ones(1, c, 8, 8)))
            elif b in ("zx", "zy"):
                self.register_parameter(f"params_{n}", nn.Parameter(torch.ones(1, 1, c, 8)))
        for b, n in zip(self.branches, self.names):
            if b == "xy":
                self.add_module(f"conv_{n}", nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv2d(c, c, 1)))
            elif b in ("zx", "zy"):
                self.add_module(f"conv_{n}", nn.Sequential(
                    nn.Conv1d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv1d(c, c, 1)))
            elif b == "dw":
                self.add_module(n, nn.Sequential(
                    nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1, groups=c)))
        self.norm1 = LayerNormCF(dim_in)
        self.norm2 = LayerNormCF(dim_in)
        self.ldw = nn.Sequential(
            nn.Conv2d(dim_in, dim_in, 3, padding=1, groups=dim_in), nn.GELU(), nn.Conv2d(dim_in, dim_out, 1))

    def branch_mask(self, name: str, kind: str, h: int, w: int) -> Tensor:
        """The parameter-only multiplicative mask of one Hadamard branch at size (h, w)."""
        p = getattr(self, f"params_{name}")
        conv = getattr(self, f"conv_{name}")
        if kind == "xy":
            return conv(up(p, size=(h, w)))
        size = (self.chunk, h if kind == "zx" else w)
        return conv(up(p, size=size).squeeze(0)).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        h, w = x.shape[2], x.shape[3]
        chunks = list(torch.chunk(x, len(self.branches), dim=1))
        for i, (b, n) in enumerate(zip(self.branches, self.names)):
            xi = chunks[i]
            if b == "xy":
                xi = xi * self.branch_mask(n, b, h, w)
            elif b == "zx":  # B x W x c x H view, mask 1 x 1 x c x H
                xi = (xi.permute(0, 3, 1, 2) * self.branch_mask(n, b, h, w)).permute(0, 2, 3, 1)
            elif b == "zy":  # B x H x c x W view, mask 1 x 1 x c x W
                xi = (xi.permute(0, 2, 1, 3) * self.branch_mask(n, b, h, w)).permute(0, 2, 1, 3)
            elif b == "dw":
                xi = getattr(self, n)(xi)
            chunks[i] = xi
        x = self.norm2(torch.cat(chunks, dim=1))
        return self.ldw(x)


class GAB(nn.Module):
    """Group Aggregation Bridge, ``GAB(dim_xh, dim_xl)``.

    ``xh`` is projected to ``dim_xl`` channels and resized to ``xl``; both are split into
    ``len(dilations)`` chunks; group j sees ``[xh_j, xl_j, mask]`` (the mask only when
    ``use_mask``) through a channels-first LayerNorm and a depth-wise 3x3 conv with
    dilation ``dilations[j]``; a LayerNorm and a 1x1 conv fuse the groups. No activation.
    """

    def __init__(self, dim_xh: int, dim_xl: int, dilations: tuple[int, ...] = (1, 2, 5, 7),
                 use_mask: bool = True) -> None:
        super().__init__()
        n = len(dilations)
        if n == 0 or any(int(d) < 1 for d in dilations):
            raise ValueError(f"GAB dilations must be a non-empty list of positive integers, got {dilations}")
        if dim_xl % n:
            raise ValueError(f"GAB dim_xl={dim_xl} is not divisible by its {n} groups (dilations {dilations})")
        self.dilations = tuple(int(d) for d in dilations)
        self.use_mask = use_mask
        gw = 2 * (dim_xl // n) + int(use_mask)
        self.pre_project = nn.Conv2d(dim_xh, dim_xl, 1)
        for j, d in enumerate(self.dilations):
            self.add_module(f"g{j}", nn.Sequential(
                LayerNormCF(gw), nn.Conv2d(gw, gw, 3, padding=d, dilation=d, groups=gw)))
        self.tail_conv = nn.Sequential(LayerNormCF(n * gw), nn.Conv2d(n * gw, dim_xl, 1))

    def forward(self, xh: Tensor, xl: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.use_mask and mask is None:
            raise ValueError("this GAB was built with use_mask=True but got no mask")
        xh = up(self.pre_project(xh), size=(xl.shape[2], xl.shape[3]))
        n = len(self.dilations)
        xhs, xls = torch.chunk(xh, n, dim=1), torch.chunk(xl, n, dim=1)
        outs = []
        for j in range(n):
            parts = [xhs[j], xls[j]] + ([mask] if self.use_mask else [])
            outs.append(getattr(self, f"g{j}")(torch.cat(parts, dim=1)))
        return self.tail_conv(torch.cat(outs, dim=1))


def ghpa_params(di: int, do: int, branches: tuple[str, ...] = ("xy", "zx", "zy", "dw")) -> int:
    """Parameter count of a GHPA from the spec's per-branch formulas (independent of the module tree)."""
    c = di // len(branches)
    per = {"xy": c * c + 75 * c, "zx": c * c + 13 * c, "zy": c * c + 13 * c, "dw": c * c + 11 * c, "id": 0}
    return sum(per[b] for b in branches) + 4 * di + 10 * di + di * do + do


def gab_params(dh: int, dl: int, groups: int = 4, mask: bool = True) -> int:
    """Parameter count of a GAB from the spec's formula (dilation values do not change it)."""
    n, m = groups, int(mask)
    gw = 2 * dl // n + m
    return dh * dl + dl + n * (2 * gw + 9 * gw + gw) + 2 * n * gw + n * gw * dl + dl
