"""A plain, eager EGE-UNet written straight from the spec (docs/models.md §1): the numerical reference.

This file is deliberately simple: no switches, no caching, no fusions, every step of the spec
spelled out in the order the spec gives it. It is what the fast path (:mod:`egeunet.fast`) and
the configurable model (:mod:`egeunet.model`) are checked against.

Parameter names and order are the official ones (docs/models.md §1.8), the same as
:class:`egeunet.model.EGEUNet` with the default config, so ``load_state_dict`` works both ways::

    ref = ReferenceEGEUNet()
    ref.load_state_dict(EGEUNet().state_dict())          # and the other way round

Like every model of the suite it returns :class:`~zoo.contract.SegOutput` with logits
(no sigmoid): ``logits`` = z at input resolution, ``aux`` = (p5, p4, p3, p2, p1) deepest first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.contract import SegOutput

WIDTHS = (8, 16, 24, 32, 48, 64)
DILATIONS = (1, 2, 5, 7)
DS_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, ``align_corners=True`` (docs/models.md §1.1)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm (docs/models.md §1.1): per pixel, over C, biased variance, eps 1e-6."""

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


class ReferenceGHPA(nn.Module):
    """GHPA(dim_in, dim_out) with the official four branches xy, zx, zy, dw (docs/models.md §1.4)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        c = dim_in // 4
        self.params_xy = nn.Parameter(torch.ones(1, c, 8, 8))
        self.params_zx = nn.Parameter(torch.ones(1, 1, c, 8))
        self.params_zy = nn.Parameter(torch.ones(1, 1, c, 8))
        self.conv_xy = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv2d(c, c, 1))
        self.conv_zx = nn.Sequential(nn.Conv1d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv1d(c, c, 1))
        self.conv_zy = nn.Sequential(nn.Conv1d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv1d(c, c, 1))
        self.dw = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1, groups=c))
        self.norm1 = LayerNorm2d(dim_in)
        self.norm2 = LayerNorm2d(dim_in)
        self.ldw = nn.Sequential(
            nn.Conv2d(dim_in, dim_in, 3, padding=1, groups=dim_in), nn.GELU(), nn.Conv2d(dim_in, dim_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        x1, x2, x3, x4 = torch.chunk(x, 4, dim=1)
        _, c, h, w = x1.shape
        # xy: H-W mask
        x1 = x1 * self.conv_xy(resize(self.params_xy, (h, w)))
        # zx: x2 viewed as B x W x c x H, mask 1 x 1 x c x H
        x2 = x2.permute(0, 3, 1, 2)
        mask_zx = self.conv_zx(resize(self.params_zx, (c, h)).squeeze(0)).unsqueeze(0)
        x2 = (x2 * mask_zx).permute(0, 2, 3, 1)
        # zy: x3 viewed as B x H x c x W, mask 1 x 1 x c x W
        x3 = x3.permute(0, 2, 1, 3)
        mask_zy = self.conv_zy(resize(self.params_zy, (c, w)).squeeze(0)).unsqueeze(0)
        x3 = (x3 * mask_zy).permute(0, 2, 1, 3)
        # dw
        x4 = self.dw(x4)
        x = self.norm2(torch.cat([x1, x2, x3, x4], dim=1))
        return self.ldw(x)


class ReferenceGAB(nn.Module):
    """GAB(dim_xh, dim_xl) with dilations (1, 2, 5, 7) and the head mask (docs/models.md §1.5)."""

    def __init__(self, dim_xh: int, dim_xl: int) -> None:
        super().__init__()
        gw = dim_xl // 2 + 1
        self.pre_project = nn.Conv2d(dim_xh, dim_xl, 1)
        for j, d in enumerate(DILATIONS):
            self.add_module(f"g{j}", nn.Sequential(
                LayerNorm2d(gw), nn.Conv2d(gw, gw, 3, padding=d, dilation=d, groups=gw)))
        self.tail_conv = nn.Sequential(LayerNorm2d(4 * gw), nn.Conv2d(4 * gw, dim_xl, 1))

    def forward(self, xh: Tensor, xl: Tensor, mask: Tensor) -> Tensor:
        xh = resize(self.pre_project(xh), (xl.shape[2], xl.shape[3]))
        xh = torch.chunk(xh, 4, dim=1)
        xl = torch.chunk(xl, 4, dim=1)
        x0 = self.g0(torch.cat((xh[0], xl[0], mask), dim=1))
        x1 = self.g1(torch.cat((xh[1], xl[1], mask), dim=1))
        x2 = self.g2(torch.cat((xh[2], xl[2], mask), dim=1))
        x3 = self.g3(torch.cat((xh[3], xl[3], mask), dim=1))
        return self.tail_conv(torch.cat((x0, x1, x2, x3), dim=1))


class ReferenceEGEUNet(nn.Module):
    """The paper's EGE-UNet (53,374 parameters), default configuration only."""

    def __init__(self, num_classes: int = 1, input_channels: int = 3) -> None:
        super().__init__()
        c = WIDTHS
        self.encoder1 = nn.Sequential(nn.Conv2d(input_channels, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1))
        self.encoder4 = nn.Sequential(ReferenceGHPA(c[2], c[3]))
        self.encoder5 = nn.Sequential(ReferenceGHPA(c[3], c[4]))
        self.encoder6 = nn.Sequential(ReferenceGHPA(c[4], c[5]))
        self.GAB1 = ReferenceGAB(c[1], c[0])
        self.GAB2 = ReferenceGAB(c[2], c[1])
        self.GAB3 = ReferenceGAB(c[3], c[2])
        self.GAB4 = ReferenceGAB(c[4], c[3])
        self.GAB5 = ReferenceGAB(c[5], c[4])
        self.gt_conv1 = nn.Sequential(nn.Conv2d(c[4], 1, 1))
        self.gt_conv2 = nn.Sequential(nn.Conv2d(c[3], 1, 1))
        self.gt_conv3 = nn.Sequential(nn.Conv2d(c[2], 1, 1))
        self.gt_conv4 = nn.Sequential(nn.Conv2d(c[1], 1, 1))
        self.gt_conv5 = nn.Sequential(nn.Conv2d(c[0], 1, 1))
        self.decoder1 = nn.Sequential(ReferenceGHPA(c[5], c[4]))
        self.decoder2 = nn.Sequential(ReferenceGHPA(c[4], c[3]))
        self.decoder3 = nn.Sequential(ReferenceGHPA(c[3], c[2]))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        self.ebn1 = nn.GroupNorm(4, c[0])
        self.ebn2 = nn.GroupNorm(4, c[1])
        self.ebn3 = nn.GroupNorm(4, c[2])
        self.ebn4 = nn.GroupNorm(4, c[3])
        self.ebn5 = nn.GroupNorm(4, c[4])
        self.dbn1 = nn.GroupNorm(4, c[4])
        self.dbn2 = nn.GroupNorm(4, c[3])
        self.dbn3 = nn.GroupNorm(4, c[2])
        self.dbn4 = nn.GroupNorm(4, c[1])
        self.dbn5 = nn.GroupNorm(4, c[0])
        self.final = nn.Conv2d(c[0], num_classes, 1)
        self.loss_weights = (1.0, *DS_WEIGHTS)
        self.apply(_init)

    def forward(self, x: Tensor) -> SegOutput:
        # encoder (§1.2)
        t1 = F.gelu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t2 = F.gelu(F.max_pool2d(self.ebn2(self.encoder2(t1)), 2, 2))
        t3 = F.gelu(F.max_pool2d(self.ebn3(self.encoder3(t2)), 2, 2))
        t4 = F.gelu(F.max_pool2d(self.ebn4(self.encoder4(t3)), 2, 2))
        t5 = F.gelu(F.max_pool2d(self.ebn5(self.encoder5(t4)), 2, 2))
        t6 = F.gelu(self.encoder6(t5))
        # decoder, heads, bridges (§1.3)
        d5 = F.gelu(self.dbn1(self.decoder1(t6)))
        m5 = self.gt_conv1(d5)
        s5 = self.GAB5(t6, t5, m5)
        o5 = d5 + s5
        d4 = F.gelu(_up2(self.dbn2(self.decoder2(o5))))
        m4 = self.gt_conv2(d4)
        s4 = self.GAB4(s5, t4, m4)
        o4 = d4 + s4
        d3 = F.gelu(_up2(self.dbn3(self.decoder3(o4))))
        m3 = self.gt_conv3(d3)
        s3 = self.GAB3(s4, t3, m3)
        o3 = d3 + s3
        d2 = F.gelu(_up2(self.dbn4(self.decoder4(o3))))
        m2 = self.gt_conv4(d2)
        s2 = self.GAB2(s3, t2, m2)
        o2 = d2 + s2
        d1 = F.gelu(_up2(self.dbn5(self.decoder5(o2))))
        m1 = self.gt_conv5(d1)
        s1 = self.GAB1(s2, t1, m1)
        o1 = d1 + s1
        z = _up2(self.final(o1))
        size = (x.shape[2], x.shape[3])
        aux = tuple(resize(m, size) for m in (m5, m4, m3, m2, m1))
        return SegOutput(z, aux)


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def _init(m: nn.Module) -> None:
    """Official initialisation (docs/models.md §1.6)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d):
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
    elif isinstance(m, (nn.GroupNorm, LayerNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
