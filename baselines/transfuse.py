"""TransFuse (Zhang et al., MICCAI 2021): TransFuse-S at 256 x 256 and the project's TransFuse-lite(-T).

Written from docs/models.md §5. One parametrised network covers the family:

* CNN branch: a stem (conv stride 2, no bias -> BN -> ReLU -> max-pool 3/2/1) and three
  ResNet layers of BasicBlocks giving g2 (c1 @ H/4), g1 (c2 @ H/8), g0 (c3 @ H/16).
  TransFuse-S: the ResNet-34 trunk (7x7 stem, 3/4/6 blocks, 64/128/256; layer4 and fc removed);
  lite: a 3x3 stem and one block per layer.
* ViT branch: 16 x 16 patch embedding, learnable position embedding for a ``grid`` of
  tokens (16 x 16 at 256 x 256; resized bilinearly, ``align_corners=True``, when the input
  gives another token grid), pre-norm blocks, final LayerNorm (every LN eps 1e-6 as
  TransFuse's DeiT) -> t0 (D @ H/16), then progressive up-sampling t1 = Up(D -> c2),
  t2 = Up(c2 -> c1).
* BiFusion at 1/16, 1/8, 1/4 (SE reduction ratios 4, 2, 1), the attention-gated decoder
  and three heads.

Contract: ``SegOutput(logits=head_f, aux=(head_t, head_x))``, all logits at input resolution,
``loss_weights = (0.5, 0.3, 0.2)`` (fused-1/4 / transformer / fused-1/16; the original's
0.5/0.3/0.2 weighting), prediction = ``sigmoid(head_f)``.

TransFuse-S specifics: the DeiT-small-like transformer has depth 8 and keeps the (unused)
class-token parameter of the original DeiT, which is part of the counted 26,273,301
parameters; it receives no gradient (listed in ``model.unused_parameters``). The original's
native input is 192 x 256 with a hard-coded 12 x 16 grid; here the grid is 16 x 16 at
256 x 256 (256 position tokens). No pretrained weights are used anywhere in this suite:
every TransFuse variant trains from scratch (a deviation from the paper to state in tables).

Initialisation (a project choice, documented): CNN-branch convs Kaiming-normal (fan_out, ReLU:
the ResNet convention); every conv of the TransFuse blocks (token up-sampling, BiFusion,
decoder, heads) Kaiming-normal (fan_in, ReLU) with bias U(+-1/sqrt(fan_in)); Linear weights and
the position embedding (and class token) truncated-normal std 0.02, Linear bias 0; BN/LN 1/0;
the patch-embedding conv keeps PyTorch defaults. The head up-sampling is bilinear with
``align_corners=True`` for every variant (the original TransFuse-S used ``align_corners=False``
there; it has no effect on parameters or counted MACs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines._common import check_sides, trunc_normal_linear_
from zoo.contract import SegOutput
from zoo.registry import register_model

PATCH = 16


@dataclass(frozen=True)
class TransFuseConfig:
    """Widths and depths of one TransFuse variant (defaults: TransFuse-lite)."""

    cnn_widths: tuple[int, int, int] = (16, 32, 64)  # c1 (H/4), c2 (H/8), c3 (H/16)
    cnn_blocks: tuple[int, int, int] = (1, 1, 1)  # BasicBlocks per layer
    stem_kernel: int = 3  # 7 = the ResNet stem
    dim: int = 64  # token dim D
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 2.0
    class_token: bool = False  # kept (unused) by TransFuse-S for its parameter count
    se_ratios: tuple[int, int, int] = (4, 2, 1)  # BiFusion SE reduction at 1/16, 1/8, 1/4
    grid: tuple[int, int] = (16, 16)  # stored position-embedding grid (256 x 256 input)
    drop_rate: float = 0.2  # Dropout2d on t0..t2 and g0..g2
    fusion_drop: float = 0.1  # Dropout2d after each BiFusion
    in_channels: int = 3
    num_classes: int = 1
    loss_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)  # head_f, head_t, head_x

    def __post_init__(self) -> None:
        for name in ("cnn_widths", "cnn_blocks", "se_ratios", "grid", "loss_weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.dim % self.heads:
            raise ValueError(f"token dim {self.dim} not divisible by {self.heads} heads")

    def replace(self, **changes: Any) -> "TransFuseConfig":
        return replace(self, **changes)

    @classmethod
    def lite(cls) -> "TransFuseConfig":
        return cls()

    @classmethod
    def lite_t(cls) -> "TransFuseConfig":
        return cls(cnn_widths=(8, 16, 32), dim=32)

    @classmethod
    def small(cls) -> "TransFuseConfig":
        """TransFuse-S: ResNet-34 trunk + DeiT-small-like ViT of depth 8."""
        return cls(cnn_widths=(64, 128, 256), cnn_blocks=(3, 4, 6), stem_kernel=7, dim=384, depth=8, heads=6,
                   mlp_ratio=4.0, class_token=True)


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class CBR(nn.Sequential):
    """k x k conv (bias, 'same' padding) -> [BN] -> [ReLU] (TransFuse's ``Conv``)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, bn: bool = True, relu: bool = True, bias: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, padding=(k - 1) // 2, bias=bias)]
        if bn:
            layers.append(nn.BatchNorm2d(out_ch))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


# -- CNN branch -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet BasicBlock(a -> b, stride s); params 9ab + 9b^2 + 4b (+ ab + 2b with a shortcut conv)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: Tensor) -> Tensor:
        idn = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + idn)


class CNNBranch(nn.Module):
    """Stem + three ResNet layers: returns (g2 @ H/4, g1 @ H/8, g0 @ H/16)."""

    def __init__(self, in_ch: int, widths: tuple[int, int, int], blocks: tuple[int, int, int],
                 stem_kernel: int) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(in_ch, c1, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(c1, c1, blocks[0], 1)
        self.layer2 = self._layer(c1, c2, blocks[1], 2)
        self.layer3 = self._layer(c2, c3, blocks[2], 2)

    @staticmethod
    def _layer(a: int, b: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(a, b, stride), *(BasicBlock(b, b) for _ in range(n - 1)))

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))


# -- ViT branch -----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear D -> 3D (bias), scale (D/h)^-1/2, projection D -> D."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale  # explicit matmuls (fvcore sees them; thop does not)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)); x + MLP(LN(x)); params 8D^2 + 11D at MLP ratio 2."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBranch(nn.Module):
    """Patch embedding (16 x 16, stride 16) + position embedding + blocks + final LN -> D @ H/16."""

    def __init__(self, in_ch: int, cfg: TransFuseConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.grid = cfg.grid
        self.patch_embed = nn.Conv2d(in_ch, d, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid[0] * cfg.grid[1], d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> Tensor:
        """The stored embedding, bilinearly resized (``align_corners=True``) to an h x w token grid."""
        pe = self.pos_embed
        if (h, w) == tuple(self.grid):
            return pe
        gh, gw = self.grid
        pe = pe.transpose(1, 2).reshape(1, -1, gh, gw)
        pe = F.interpolate(pe, size=(h, w), mode="bilinear", align_corners=True)
        return pe.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.position_embedding(h, w)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, d, h, w)


# -- fusion and decoder ---------------------------------------------------------------------------
class ResDoubleConv(nn.Module):
    """[3x3 conv -> BN -> ReLU -> 3x3 conv -> BN] + [1x1 conv -> BN], then ReLU; params 10ab + 9b^2 + 9b."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch))
        self.identity = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.double_conv(x) + self.identity(x))


class AttentionGate(nn.Module):
    """AG(F_g, F_l, F_int): x * sigmoid(BN(1x1 conv F_int -> 1)(ReLU(BN(W_g g) + BN(W_x x)))); ab + sb + 7b + 3."""

    def __init__(self, f_g: int, f_l: int, f_int: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(f_g, f_int, 1), nn.BatchNorm2d(f_int))
        self.w_x = nn.Sequential(nn.Conv2d(f_l, f_int, 1), nn.BatchNorm2d(f_int))
        self.psi = nn.Sequential(nn.Conv2d(f_int, 1, 1), nn.BatchNorm2d(1))

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.psi(F.relu(self.w_g(g) + self.w_x(x))))


class Up(nn.Module):
    """Bilinear x2 (``align_corners=True``) -> [pad, attention gate, concat [skip, up]] -> ResDoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int = 0, gated: bool = False) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.gate = AttentionGate(in_ch, skip_ch, out_ch) if gated and skip_ch else None
        self.conv = ResDoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dy or dx:
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            if self.gate is not None:
                skip = self.gate(x, skip)
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class Residual(nn.Module):
    """BN -> ReLU -> 1x1 a -> b/2 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 b/2 -> b, plus a 1x1 skip
    (identity when a = b); no final activation. Params 2a + 1.5ab + 2.75b^2 + 5b (with the skip conv)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        res = x if self.skip is None else self.skip(x)
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + res


class BiFusion(nn.Module):
    """BiFusion(g: ch1, t: ch2, r, int, out): bilinear interaction + spatial attention on the CNN
    feature + SE channel attention on the transformer feature, fused by :class:`Residual`."""

    def __init__(self, ch1: int, ch2: int, r: int, ch_int: int, ch_out: int, drop: float) -> None:
        super().__init__()
        # channel (SE) attention on t
        self.fc1 = nn.Conv2d(ch2, ch2 // r, 1)
        self.fc2 = nn.Conv2d(ch2 // r, ch2, 1)
        # spatial attention on g
        self.spatial = CBR(2, 1, 7, bn=True, relu=False, bias=False)
        # bilinear interaction
        self.w_g = CBR(ch1, ch_int, 1, bn=True, relu=False)
        self.w_x = CBR(ch2, ch_int, 1, bn=True, relu=False)
        self.w = CBR(ch_int, ch_int, 3, bn=True, relu=True)
        self.residual = Residual(ch1 + ch2 + ch_int, ch_out)
        self.dropout = nn.Dropout2d(drop)

    def forward(self, g: Tensor, t: Tensor) -> Tensor:
        bp = self.w(self.w_g(g) * self.w_x(t))
        pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
        g = g * torch.sigmoid(self.spatial(pooled))
        se = self.fc2(F.relu(self.fc1(t.mean((2, 3), keepdim=True))))
        t = t * torch.sigmoid(se)
        return self.dropout(self.residual(torch.cat([g, t, bp], dim=1)))


def _head(in_ch: int, mid: int, num_classes: int, reduce: bool) -> nn.Sequential:
    first = [CBR(in_ch, mid, 1)] if reduce else []
    return nn.Sequential(*first, CBR(mid, mid, 3), CBR(mid, num_classes, 3, bn=False, relu=False))


class TransFuse(nn.Module):
    """TransFuse family; returns ``SegOutput(head_f, (head_t, head_x))``. Input sides: multiples of 16."""

    def __init__(self, config: TransFuseConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = (config or TransFuseConfig()).replace(**overrides) if overrides else (config or TransFuseConfig())
        self.config = cfg
        c1, c2, c3 = cfg.cnn_widths
        d = cfg.dim
        r0, r1, r2 = cfg.se_ratios
        self.cnn = CNNBranch(cfg.in_channels, cfg.cnn_widths, cfg.cnn_blocks, cfg.stem_kernel)
        self.transformer = ViTBranch(cfg.in_channels, cfg)
        self.up1 = Up(d, c2)
        self.up2 = Up(c2, c1)
        self.fuse0 = BiFusion(c3, d, r0, c3, c3, cfg.fusion_drop)
        self.fuse1 = BiFusion(c2, c2, r1, c2, c2, cfg.fusion_drop)
        self.fuse2 = BiFusion(c1, c1, r2, c1, c1, cfg.fusion_drop)
        self.dec1 = Up(c3, c2, skip_ch=c2, gated=True)
        self.dec2 = Up(c2, c1, skip_ch=c1, gated=True)
        self.head_x = _head(c3, c1, cfg.num_classes, reduce=True)
        self.head_t = _head(c1, c1, cfg.num_classes, reduce=False)
        self.head_f = _head(c1, c1, cfg.num_classes, reduce=False)
        self.drop = nn.Dropout2d(cfg.drop_rate)
        self.loss_weights: tuple[float, ...] = tuple(cfg.loss_weights)
        # The class token of TransFuse-S is counted but never used (no gradient reaches it).
        self.unused_parameters: tuple[str, ...] = ("transformer.cls_token",) if cfg.class_token else ()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.cnn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.transformer.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_linear_(m)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.transformer.pos_embed, std=0.02, a=-2.0, b=2.0)
        if self.transformer.cls_token is not None:
            nn.init.trunc_normal_(self.transformer.cls_token, std=0.02, a=-2.0, b=2.0)
        for part in (self.up1, self.up2, self.fuse0, self.fuse1, self.fuse2, self.dec1, self.dec2,
                     self.head_x, self.head_t, self.head_f):
            part.apply(_init_fusion)

    def forward(self, x: Tensor) -> SegOutput:
        check_sides(x, PATCH, "TransFuse")
        size = (x.shape[2], x.shape[3])
        # transformer branch
        t0 = self.drop(self.transformer(x))
        t1 = self.drop(self.up1(t0))
        t2 = self.drop(self.up2(t1))
        # CNN branch
        g = self.cnn.stem(x)
        g2 = self.drop(self.cnn.layer1(g))
        g1 = self.drop(self.cnn.layer2(g2))
        g0 = self.drop(self.cnn.layer3(g1))
        # fusion and gated decoder
        f0 = self.fuse0(g0, t0)
        f1 = self.dec1(f0, self.fuse1(g1, t1))
        f2 = self.dec2(f1, self.fuse2(g2, t2))
        head_x = upsample(self.head_x(f0), size)
        head_t = upsample(self.head_t(t2), size)
        head_f = upsample(self.head_f(f2), size)
        return SegOutput(head_f, (head_t, head_x))


def _init_fusion(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(m.bias, -bound, bound)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def transfuse_part_params(cfg: TransFuseConfig | None = None) -> dict[str, int]:
    """Parameter count per part from the spec formulas (docs/models.md §5.2; also valid for TransFuse-S)."""
    cfg = cfg or TransFuseConfig()
    c1, c2, c3 = cfg.cnn_widths
    d, k = cfg.dim, cfg.stem_kernel
    hidden = int(d * cfg.mlp_ratio)

    def basic(a: int, b: int, n: int, stride: int) -> int:
        first = 9 * a * b + 9 * b * b + 4 * b + ((a * b + 2 * b) if stride != 1 or a != b else 0)
        return first + (n - 1) * (18 * b * b + 4 * b)

    def rdc(a: int, b: int) -> int:
        return 10 * a * b + 9 * b * b + 9 * b

    def ag(a: int, s: int, b: int) -> int:
        return a * b + s * b + 7 * b + 3

    def residual(a: int, b: int) -> int:
        m = b // 2
        return 2 * a + (a * m + m) + 2 * m + (9 * m * m + m) + 2 * m + (m * b + b) + ((a * b + b) if a != b else 0)

    def bifusion(ch1: int, ch2: int, r: int, i: int, o: int) -> int:
        se = 2 * ch2 * (ch2 // r) + ch2 // r + ch2
        return se + 100 + (ch1 + ch2) * i + 6 * i + 9 * i * i + 3 * i + residual(ch1 + ch2 + i, o)

    cbr = lambda a, b, kk: kk * kk * a * b + 3 * b  # noqa: E731
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)
    r0, r1, r2 = cfg.se_ratios
    return {
        "cnn": k * k * cfg.in_channels * c1 + 2 * c1 + basic(c1, c1, cfg.cnn_blocks[0], 1)
        + basic(c1, c2, cfg.cnn_blocks[1], 2) + basic(c2, c3, cfg.cnn_blocks[2], 2),
        "vit": PATCH * PATCH * cfg.in_channels * d + d + cfg.grid[0] * cfg.grid[1] * d
        + (d if cfg.class_token else 0) + cfg.depth * block + 2 * d,
        "token_up": rdc(d, c2) + rdc(c2, c1),
        "bifusion": bifusion(c3, d, r0, c3, c3) + bifusion(c2, c2, r1, c2, c2) + bifusion(c1, c1, r2, c1, c1),
        "decoder": ag(c3, c2, c2) + rdc(c3 + c2, c2) + ag(c2, c1, c1) + rdc(c2 + c1, c1),
        "heads": cbr(c3, c1, 1) + 2 * (cbr(c1, c1, 3) + 9 * c1 * cfg.num_classes + cfg.num_classes)
        + cbr(c1, c1, 3) + 9 * c1 * cfg.num_classes + cfg.num_classes,
    }


@register_model(
    "transfuse_s",
    family="transfuse",
    params=26_273_301,
    thop_macs=11_528_000_000,  # docs/models.md §5.1: 11.528 G at 256 x 256 (misses 0.40 G of attention matmuls)
    macs_rel_tol=0.001,
    heavy=True,
    min_side=16,
    non_square=(64, 96),
)
def transfuse_s(**overrides: Any) -> nn.Module:
    """TransFuse-S at 256x256 (ResNet-34 + DeiT-small depth 8, 16x16 token grid), from scratch: 26,273,301 params."""
    return TransFuse(TransFuseConfig.small(), **overrides)


@register_model(
    "transfuse_lite",
    family="transfuse",
    params=415_109,
    thop_macs=326_000_000,  # docs/models.md §5.2: 0.326 G
    macs_rel_tol=0.01,
    min_side=16,
    non_square=(64, 96),
    fast="zoo.views:channels_last",  # measured: results/bench/paths_cpu.csv (tests/test_paths.py)
)
def transfuse_lite(**overrides: Any) -> nn.Module:
    """TransFuse-lite (project definition: CNN 16/32/64, ViT D 64 depth 2): 415,109 params."""
    return TransFuse(TransFuseConfig.lite(), **overrides)


@register_model(
    "transfuse_lite_t",
    family="transfuse",
    params=122_125,
    thop_macs=91_000_000,  # docs/models.md §5.2: 0.091 G
    macs_rel_tol=0.01,
    min_side=16,
    non_square=(64, 96),
)
def transfuse_lite_t(**overrides: Any) -> nn.Module:
    """TransFuse-lite-T (project definition: CNN 8/16/32, ViT D 32 depth 2): 122,125 params."""
    return TransFuse(TransFuseConfig.lite_t(), **overrides)
