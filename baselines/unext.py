"""UNeXt and UNeXt-S (Valanarasu & Patel, MICCAI 2022), as in the *released* code (docs/models.md §3).

The released ``UNext`` differs from the paper text: widths 16-32-128-160-256 (paper: 32-64-128-
160-256) and MLP hidden width = C (paper: 768); the widely quoted 1.47 M / 0.57 G are those of the
released code, which is what this rebuild reproduces (1,471,921 / 253,561 params). Differences
from the released constructor: ``in_channels`` is honoured (the release hard-codes 3) and the
unused arguments (heads, qkv bias, sr ratios, deep supervision, depths) are dropped.

Initialisation (as released): Linear truncated-normal std 0.02 / bias 0; LayerNorm 1/0; the
convolutions inside shifted blocks and patch embeddings N(0, sqrt(2/fan_out)) / bias 0; the
plain encoder/decoder convolutions and BatchNorms keep PyTorch defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines._common import check_sides, normal_fan_out_, trunc_normal_linear_
from zoo.contract import SegOutput
from zoo.registry import register_model


@dataclass(frozen=True)
class UNeXtConfig:
    """Widths ``(c1, c2, c3, c4, c5)``: three conv stages, then two tokenized-MLP stages."""

    widths: tuple[int, ...] = (16, 32, 128, 160, 256)
    in_channels: int = 3
    num_classes: int = 1
    shift_size: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.widths) != 5:
            raise ValueError(f"UNeXt needs 5 widths, got {self.widths}")

    @classmethod
    def small(cls) -> "UNeXtConfig":
        return cls(widths=(8, 16, 32, 64, 128))

    def replace(self, **changes: Any) -> "UNeXtConfig":
        return replace(self, **changes)


def shift_tokens(x: Tensor, h: int, w: int, axis: int, shift_size: int = 5) -> Tensor:
    """Zero-filled shift of channel chunks of a B x N x C token tensor along ``axis`` (2 = H, 3 = W).

    The C x H x W map is zero-padded by ``shift_size // 2`` on every side, split into
    ``shift_size`` channel chunks with ``torch.chunk`` semantics, chunk i rolled by ``i - pad``,
    and cropped back, so every roll is a zero-filled shift.
    """
    b, n, c = x.shape
    pad = shift_size // 2
    xn = x.transpose(1, 2).reshape(b, c, h, w)
    xn = F.pad(xn, (pad, pad, pad, pad))
    chunks = torch.chunk(xn, shift_size, dim=1)
    shifted = [torch.roll(ch, s, axis) for ch, s in zip(chunks, range(-pad, pad + 1))]
    xs = torch.cat(shifted, dim=1)[:, :, pad:pad + h, pad:pad + w]
    return xs.reshape(b, c, h * w).transpose(1, 2)


class DWConv(nn.Module):
    """Depth-wise 3x3 conv (bias) on the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class ShiftMLP(nn.Module):
    """H-shift -> fc1 -> DWConv -> GELU -> W-shift -> fc2 (hidden width = C)."""

    def __init__(self, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.fc1 = nn.Linear(dim, dim)
        self.dwconv = DWConv(dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = shift_tokens(x, h, w, axis=2, shift_size=self.shift_size)
        x = self.act(self.dwconv(self.fc1(x), h, w))
        x = shift_tokens(x, h, w, axis=3, shift_size=self.shift_size)
        return self.fc2(x)


class ShiftedBlock(nn.Module):
    """``x + ShiftMLP(LayerNorm(x))``; params 2C^2 + 14C."""

    def __init__(self, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ShiftMLP(dim, shift_size)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return x + self.mlp(self.norm2(x), h, w)


class OverlapPatchEmbed(nn.Module):
    """Conv 3x3 stride 2 pad 1 (bias) -> tokens -> LayerNorm; params 9ab + 3b."""

    def __init__(self, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def _tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


class UNeXt(nn.Module):
    """UNeXt (released code); returns logits only. Input sides must be multiples of 32."""

    def __init__(self, config: UNeXtConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = (config or UNeXtConfig()).replace(**overrides) if overrides else (config or UNeXtConfig())
        self.config = cfg
        c1, c2, c3, c4, c5 = cfg.widths
        self.encoder1 = nn.Conv2d(cfg.in_channels, c1, 3, stride=1, padding=1)
        self.encoder2 = nn.Conv2d(c1, c2, 3, stride=1, padding=1)
        self.encoder3 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)
        self.ebn1 = nn.BatchNorm2d(c1)
        self.ebn2 = nn.BatchNorm2d(c2)
        self.ebn3 = nn.BatchNorm2d(c3)
        self.patch_embed3 = OverlapPatchEmbed(c3, c4)
        self.patch_embed4 = OverlapPatchEmbed(c4, c5)
        self.block1 = ShiftedBlock(c4, cfg.shift_size)
        self.block2 = ShiftedBlock(c5, cfg.shift_size)
        self.dblock1 = ShiftedBlock(c4, cfg.shift_size)
        self.dblock2 = ShiftedBlock(c3, cfg.shift_size)
        self.norm3 = nn.LayerNorm(c4)
        self.norm4 = nn.LayerNorm(c5)
        self.dnorm3 = nn.LayerNorm(c4)
        self.dnorm4 = nn.LayerNorm(c3)
        self.decoder1 = nn.Conv2d(c5, c4, 3, stride=1, padding=1)
        self.decoder2 = nn.Conv2d(c4, c3, 3, stride=1, padding=1)
        self.decoder3 = nn.Conv2d(c3, c2, 3, stride=1, padding=1)
        self.decoder4 = nn.Conv2d(c2, c1, 3, stride=1, padding=1)
        self.decoder5 = nn.Conv2d(c1, c1, 3, stride=1, padding=1)
        self.dbn1 = nn.BatchNorm2d(c4)
        self.dbn2 = nn.BatchNorm2d(c3)
        self.dbn3 = nn.BatchNorm2d(c2)
        self.dbn4 = nn.BatchNorm2d(c1)
        self.final = nn.Conv2d(c1, cfg.num_classes, kernel_size=1)
        self.loss_weights: tuple[float, ...] = (1.0,)
        for part in (self.patch_embed3, self.patch_embed4, self.block1, self.block2, self.dblock1, self.dblock2):
            part.apply(_init_token_part)

    def forward(self, x: Tensor) -> SegOutput:
        check_sides(x, 32, "UNeXt")
        out = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t1 = out
        out = F.relu(F.max_pool2d(self.ebn2(self.encoder2(out)), 2, 2))
        t2 = out
        out = F.relu(F.max_pool2d(self.ebn3(self.encoder3(out)), 2, 2))
        t3 = out
        tok, h, w = self.patch_embed3(out)
        tok = self.norm3(self.block1(tok, h, w))
        out = _tokens_to_map(tok, h, w)
        t4 = out
        tok, h, w = self.patch_embed4(out)
        tok = self.norm4(self.block2(tok, h, w))
        out = _tokens_to_map(tok, h, w)

        out = F.relu(F.interpolate(self.dbn1(self.decoder1(out)), scale_factor=2, mode="bilinear")) + t4
        h, w = out.shape[2], out.shape[3]
        tok = self.dnorm3(self.dblock1(out.flatten(2).transpose(1, 2), h, w))
        out = _tokens_to_map(tok, h, w)
        out = F.relu(F.interpolate(self.dbn2(self.decoder2(out)), scale_factor=2, mode="bilinear")) + t3
        h, w = out.shape[2], out.shape[3]
        tok = self.dnorm4(self.dblock2(out.flatten(2).transpose(1, 2), h, w))
        out = _tokens_to_map(tok, h, w)
        out = F.relu(F.interpolate(self.dbn3(self.decoder3(out)), scale_factor=2, mode="bilinear")) + t2
        out = F.relu(F.interpolate(self.dbn4(self.decoder4(out)), scale_factor=2, mode="bilinear")) + t1
        out = F.relu(F.interpolate(self.decoder5(out), scale_factor=2, mode="bilinear"))
        return SegOutput(self.final(out), ())


def _init_token_part(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_linear_(m)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        normal_fan_out_(m)


def unext_part_params(cfg: UNeXtConfig | None = None) -> dict[str, int]:
    """Parameter count per part from the spec formulas (docs/models.md §3.3)."""
    cfg = cfg or UNeXtConfig()
    c1, c2, c3, c4, c5 = cfg.widths
    conv = lambda a, b: 9 * a * b + b  # noqa: E731
    block = lambda c: 2 * c * c + 14 * c  # noqa: E731
    return {
        "encoder_convs": conv(cfg.in_channels, c1) + conv(c1, c2) + conv(c2, c3),
        "encoder_bn": 2 * (c1 + c2 + c3),
        "patch_embeds": 9 * c3 * c4 + 3 * c4 + 9 * c4 * c5 + 3 * c5,
        "shifted_blocks": block(c4) + block(c5) + block(c4) + block(c3),
        "token_layernorms": 2 * (c4 + c5 + c4 + c3),
        "decoder_convs": conv(c5, c4) + conv(c4, c3) + conv(c3, c2) + conv(c2, c1) + conv(c1, c1),
        "decoder_bn": 2 * (c4 + c3 + c2 + c1),
        "final": c1 * cfg.num_classes + cfg.num_classes,
    }


@register_model(
    "unext",
    family="unext",
    params=1_471_921,
    thop_macs=573_000_000,  # docs/models.md §0.1: 0.5730 G (4 significant digits)
    macs_rel_tol=0.001,
    min_side=32,
    non_square=(64, 96),
    fast="zoo.views:channels_last",  # measured: results/bench/paths_cpu.csv (tests/test_paths.py)
)
def unext(**overrides: Any) -> nn.Module:
    """UNeXt (released code: 16-32-128-160-256, MLP hidden = C), 1,471,921 params."""
    return UNeXt(UNeXtConfig(), **overrides)


@register_model(
    "unext_s",
    family="unext",
    params=253_561,
    thop_macs=103_800_000,  # docs/models.md §0.1: 0.1038 G (4 significant digits)
    macs_rel_tol=0.001,
    min_side=32,
    non_square=(64, 96),
    fast="zoo.views:channels_last",  # measured: results/bench/paths_cpu.csv (tests/test_paths.py)
)
def unext_s(**overrides: Any) -> nn.Module:
    """UNeXt-S (released code: 8-16-32-64-128), 253,561 params."""
    return UNeXt(UNeXtConfig.small(), **overrides)
