"""UNet-32: the UNet of the EGE-UNet / MALUNet comparison tables (docs/models.md §2).

The tables' "UNet" (7.77 M params / 13.76 GFLOPs) is matched only by the classic padded
UNet topology with every width halved (32-64-128-256-512), transposed-convolution
up-sampling and bias-free 3x3 convolutions. This identification is an inference from the
numbers (no UNet code exists in the EGE-UNet or MALUNet repositories), so the model is
called "UNet-32 (EGE-UNet-table UNet)", not "the original UNet" (64...1024 wide).

Counting (docs/models.md §2.3): legacy thop counts a ``ConvTranspose2d`` as output elements x
C_in x k^2, i.e. stride^2 = 4 times its true MACs here. The four up-convolutions truly cost
0.537 G MACs but thop reports 2.147 G (+1.61 G), and thop also adds BatchNorm element
operations; hence thop's 13.746 G (~ the published 13.76 G) is a counting artefact and the
true convolution cost is ~12.1 G (fvcore 12.103 G). The registry records the thop figure
(the papers' convention); reports must say why it differs.

Initialisation: no source specifies one; PyTorch defaults are kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines._common import check_sides
from zoo.contract import SegOutput
from zoo.registry import register_model


class DoubleConv(nn.Sequential):
    """[3x3 conv (no bias) -> BatchNorm -> ReLU] x 2; params 9b(a+b) + 4b."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """MaxPool(2) -> DoubleConv(a -> b)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """ConvTranspose2d(C -> C/2, k2, s2) -> pad to the skip -> concat [skip, up] -> DoubleConv(C -> out)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:  # odd sizes only; a no-op at 256 x 256
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet32(nn.Module):
    """UNet-32 (ConvTranspose up-sampling, bias-free 3x3 convs); returns logits only.

    ``base`` is the first width (32 here; 64 gives the 31 M "original-width" model).
    Input sides must be multiples of 16 (four 2x2 poolings).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base: int = 32) -> None:
        super().__init__()
        w = [base * 2**i for i in range(5)]  # 32, 64, 128, 256, 512
        self.inc = DoubleConv(in_channels, w[0])
        self.down1 = Down(w[0], w[1])
        self.down2 = Down(w[1], w[2])
        self.down3 = Down(w[2], w[3])
        self.down4 = Down(w[3], w[4])
        self.up1 = Up(w[4], w[3])
        self.up2 = Up(w[3], w[2])
        self.up3 = Up(w[2], w[1])
        self.up4 = Up(w[1], w[0])
        self.outc = nn.Conv2d(w[0], num_classes, kernel_size=1)
        self.loss_weights: tuple[float, ...] = (1.0,)

    def forward(self, x: Tensor) -> SegOutput:
        check_sides(x, 16, "UNet-32")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return SegOutput(self.outc(y), ())


def unet32_part_params(base: int = 32, in_channels: int = 3) -> dict[str, int]:
    """Parameter count per part from the spec formulas (docs/models.md §2.2)."""
    dc = lambda a, b: 9 * b * (a + b) + 4 * b  # noqa: E731
    w = [base * 2**i for i in range(5)]
    parts = {"inc": dc(in_channels, w[0])}
    for i in range(4):
        parts[f"down{i + 1}"] = dc(w[i], w[i + 1])
    for i, c in enumerate(reversed(w[1:])):
        parts[f"up{i + 1}"] = 2 * c * c + c // 2 + dc(c, c // 2)
    parts["outc"] = w[0] + 1
    return parts


@register_model(
    "unet32",
    family="unet",
    params=7_763_041,
    thop_macs=13_746_000_000,  # docs/models.md §0.1: 13.746 G, includes the x4 transposed-conv over-count
    macs_rel_tol=0.001,
    min_side=16,
    non_square=(64, 96),
    # no fast view: channels-last measured no clear gain (results/bench/paths_cpu.csv, tests/test_paths.py)
)
def unet32(**overrides: Any) -> nn.Module:
    """UNet-32 (EGE-UNet-table UNet): 32-64-128-256-512, ConvTranspose up, 7,763,041 params."""
    return UNet32(**overrides)
