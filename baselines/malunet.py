"""MALUNet (Ruan et al., BIBM 2022), written from the behaviour described in docs/models.md §4.

Channel list (8, 16, 24, 32, 48, 64), split-attention mode "fc", bridge on. The original ends
in a sigmoid; under the suite contract this model returns **logits** and the engine applies
the sigmoid (:func:`zoo.contract.predict_proba`).

Tied external-attention weights (docs/models.md §4.4). In the original, the 4C->C ``Conv1d`` weight
of every inverted-external-attention block is a *permuted view* of the C->4C ``Conv1d``
weight: two ``nn.Parameter`` objects over one storage. Two modes are offered:

* ``tie="alias"`` (reproduction default): the same aliasing. ``sum(numel)`` counts both
  weights, giving the originally counted **177,943** parameters, although only 146,711
  values are unique (the duplicated half of the six pairs is 31,232); the optimiser sees two
  parameters and applies two updates per step (each with its own moments, weight decay twice)
  to the same memory. Both layers are initialised in place on the shared memory, so the later
  (4C->C, std sqrt(2/C)) wins, as in the original.
* ``tie="single"`` (**deviation**, labelled as such): one weight used as W and W^T; 146,711
  parameters; one update per step with the summed gradient.

The alias survives ``load_state_dict`` (PyTorch copies into existing tensors), optimiser steps
and ``torch.save`` (shared storages are serialised once). Three operations convert each
parameter separately and would silently untie the pair in a plain re-implementation; each is
guarded here by re-pointing the 4C->C weight at the C->4C storage (values are identical at that
point, and the Parameter objects an optimiser holds are kept):
a device / dtype move (``model.to(...)``, ``.double()``: re-tied after every ``_apply``),
``copy.deepcopy`` (``Parameter.__deepcopy__`` clones: re-tied in ``__setstate__``) and
``load_state_dict(..., assign=True)`` (re-tied by a post-load hook, keeping the C->4C weight).
Checkpoints load across the two modes (``single`` ignores the redundant 4C->C entry; ``alias``
derives a missing one from the C->4C weight).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines._common import check_sides, normal_fan_out_, trunc_normal_linear_
from zoo.contract import SegOutput
from zoo.registry import register_model

TIE_MODES = ("alias", "single")
WIDTHS = (8, 16, 24, 32, 48, 64)


def up2(x: Tensor) -> Tensor:
    """Bilinear x2 with ``align_corners=True`` (every MALUNet interpolation)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DWSep(nn.Module):
    """Depth-wise k x k conv (bias) -> GroupNorm(4, a) -> 1x1 conv a -> b (bias)."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim_in, dim_in, kernel_size, padding=kernel_size // 2, groups=dim_in)
        self.norm = nn.GroupNorm(4, dim_in)
        self.pointwise = nn.Conv2d(dim_in, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.norm(self.depthwise(x)))


class GAU(nn.Module):
    """Gated attention unit: ``wo(sigmoid(w1(x)) * gelu(w2(x))) + cw(x)``; params 2a^2 + 54a + 2ab + 2b."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.w1 = DWSep(dim_in, dim_in, 3)
        self.w2 = DWSep(dim_in, dim_in, 5)
        self.wo = DWSep(dim_in, dim_out, 3)
        self.cw = nn.Conv2d(dim_in, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.w1(x)) * F.gelu(self.w2(x))
        return F.gelu(self.wo(gate)) + self.cw(x)


class DGA(nn.Module):
    """Dilated gated attention ``DGA(a -> b)``; params 3a^2 + 67a + 2ab + 2b.

    Four channel chunks, each through a depth-wise 3x3 conv with dilation (7, 5, 2, 1)[j]
    (padding = dilation, bias); concat -> GroupNorm(4, a) -> 1x1 conv a -> a -> GELU -> GAU(a -> b).
    """

    DILATIONS = (7, 5, 2, 1)

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        if dim_in % 4:
            raise ValueError(f"DGA needs dim_in divisible by 4, got {dim_in}")
        q = dim_in // 4
        self.dilated = nn.ModuleList(nn.Conv2d(q, q, 3, padding=d, dilation=d, groups=q) for d in self.DILATIONS)
        self.norm = nn.GroupNorm(4, dim_in)
        self.mix = nn.Conv2d(dim_in, dim_in, 1)
        self.gau = GAU(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        chunks = torch.chunk(x, 4, dim=1)
        x = torch.cat([conv(c) for conv, c in zip(self.dilated, chunks)], dim=1)
        x = F.gelu(self.mix(self.norm(x)))
        return self.gau(x)


class IEA(nn.Module):
    """Inverted external attention ``IEA(C)`` with memory 4C; params 10C^2 + 3C (alias mode).

    ``y = conv1x1(x)``; ``A = softmax_N(expand(y))`` (expand: Conv1d C -> 4C, no bias);
    ``A /= 1e-9 + sum_4C(A)``; ``y = reduce(A)`` (reduce: Conv1d 4C -> C, no bias, weight = the
    transpose of expand's); ``y = GN(conv1x1_nobias(y))``; ``out = gelu(y + x)``.
    """

    def __init__(self, dim: int, tie: str = "alias") -> None:
        super().__init__()
        if tie not in TIE_MODES:
            raise ValueError(f"tie must be one of {TIE_MODES}, got {tie!r}")
        self.tie = tie
        self.k = 4 * dim
        self.conv_in = nn.Conv2d(dim, dim, 1)
        self.expand = nn.Conv1d(dim, self.k, 1, bias=False)
        self.reduce = nn.Conv1d(self.k, dim, 1, bias=False)
        if tie == "alias":
            self._retie()
            self.register_load_state_dict_post_hook(_retie_after_load)
        else:
            # Keep the nn.Conv1d module (so thop counts it) but derive its weight in forward.
            del self.reduce.weight
        self.register_load_state_dict_pre_hook(_convert_tie_on_load)
        self.conv_out = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm = nn.GroupNorm(4, dim)

    # -- tie handling ---------------------------------------------------------------------------
    def _retie(self) -> None:
        """Make ``reduce.weight`` a (1, 0, 2)-permuted view of ``expand.weight``'s storage."""
        self.reduce.weight = nn.Parameter(self.expand.weight.detach().permute(1, 0, 2),
                                          requires_grad=self.expand.weight.requires_grad)

    def is_tied(self) -> bool:
        """True when the two Conv1d weights are one storage seen as W and W^T (or single mode)."""
        if self.tie == "single":
            return True
        w0, w1 = self.expand.weight, self.reduce.weight
        return (w1.untyped_storage().data_ptr() == w0.untyped_storage().data_ptr()
                and w1.storage_offset() == w0.storage_offset()
                and w1.shape == w0.permute(1, 0, 2).shape and w1.stride() == w0.permute(1, 0, 2).stride())

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        if self.tie == "alias" and not self.is_tied():
            # A conversion produced two independent tensors: re-point the 4C -> C weight at
            # the converted C -> 4C one, keeping the Parameter object (optimisers hold it).
            self.reduce.weight.data = self.expand.weight.data.permute(1, 0, 2)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        # ``copy.deepcopy`` clones each Parameter separately (Parameter.__deepcopy__), which
        # would untie the pair; re-point the 4C -> C weight at the C -> 4C storage afterwards.
        super().__setstate__(state)
        if self.tie == "alias" and not self.is_tied():
            self.reduce.weight.data = self.expand.weight.data.permute(1, 0, 2)

    def forward(self, x: Tensor) -> Tensor:
        idn = x
        y = self.conv_in(x)
        b, c, h, w = y.shape
        y = y.reshape(b, c, h * w)
        attn = F.softmax(self.expand(y), dim=-1)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        if self.tie == "single":
            # W^T as a plain tensor attribute for the duration of the call (the module stays an
            # nn.Conv1d so thop counts it); removed again so no graph-holding tensor lingers.
            self.reduce.weight = self.expand.weight.permute(1, 0, 2)
            try:
                y = self.reduce(attn)
            finally:
                del self.reduce.weight
        else:
            y = self.reduce(attn)
        y = y.reshape(b, c, h, w)
        y = self.norm(self.conv_out(y))
        return F.gelu(y + idn)


def _convert_tie_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Let checkpoints of either tie mode load into the other: single mode drops the redundant
    ``reduce.weight``; alias mode derives a missing one from ``expand.weight``."""
    key, src = prefix + "reduce.weight", prefix + "expand.weight"
    if getattr(module, "tie", None) == "single":
        state_dict.pop(key, None)
    elif key not in state_dict and src in state_dict:
        state_dict[key] = state_dict[src].permute(1, 0, 2)


def _retie_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, IEA) and not module.is_tied():
        module._retie()


class SAB(nn.Module):
    """Spatial attention bridge: one Conv2d(2 -> 1, 7x7, dilation 3, padding 9) shared by all skips."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3)

    def forward(self, skips: list[Tensor]) -> list[Tensor]:
        out = []
        for t in skips:
            pooled = torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)
            out.append(torch.sigmoid(self.conv(pooled)) * t)
        return out


class CAB(nn.Module):
    """Channel attention bridge: GAP of every skip, concat, Conv1d(1 -> 1, k3) along the vector,
    one Linear(sum C -> C_i) per stage, sigmoid; params 3 + (sum C + 1) * sum C."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        total = sum(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mix = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.fcs = nn.ModuleList(nn.Linear(total, c) for c in widths)

    def forward(self, skips: list[Tensor]) -> list[Tensor]:
        vec = torch.cat([self.pool(t) for t in skips], dim=1)  # B x sum C x 1 x 1
        vec = self.mix(vec.flatten(1).unsqueeze(1))  # B x 1 x sum C
        out = []
        for fc, t in zip(self.fcs, skips):
            att = torch.sigmoid(fc(vec)).transpose(1, 2).unsqueeze(-1)  # B x C_i x 1 x 1
            out.append(att.expand_as(t) * t)
        return out


class Bridge(nn.Module):
    """SAB then CAB: ``s = SAB(t)*t; u = s + t; out = CAB(u)*u + s`` per skip."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.sab = SAB()
        self.cab = CAB(widths)

    def forward(self, skips: list[Tensor]) -> list[Tensor]:
        s = self.sab(skips)
        u = [si + ti for si, ti in zip(s, skips)]
        c = self.cab(u)
        return [ci + si for ci, si in zip(c, s)]


class MALUNet(nn.Module):
    """MALUNet; returns logits (the original's sigmoid is applied by the engine).

    ``tie``: ``"alias"`` (reproduction default, 177,943 counted params) or ``"single"``
    (deviation, 146,711 params). ``bridge``: SAB + CAB on the skips. Input sides: multiples of 32.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, widths: tuple[int, ...] = WIDTHS,
                 bridge: bool = True, tie: str = "alias") -> None:
        super().__init__()
        c = tuple(widths)
        if len(c) != 6:
            raise ValueError(f"MALUNet needs 6 widths, got {c}")
        self.widths, self.bridge_on, self.tie = c, bridge, tie
        self.encoder1 = nn.Conv2d(in_channels, c[0], 3, padding=1)
        self.encoder2 = nn.Conv2d(c[0], c[1], 3, padding=1)
        self.encoder3 = nn.Conv2d(c[1], c[2], 3, padding=1)
        self.encoder4 = nn.Sequential(IEA(c[2], tie), DGA(c[2], c[3]))
        self.encoder5 = nn.Sequential(IEA(c[3], tie), DGA(c[3], c[4]))
        self.encoder6 = nn.Sequential(IEA(c[4], tie), DGA(c[4], c[5]))
        self.bridge = Bridge(c[:5]) if bridge else None
        self.decoder1 = nn.Sequential(DGA(c[5], c[4]), IEA(c[4], tie))
        self.decoder2 = nn.Sequential(DGA(c[4], c[3]), IEA(c[3], tie))
        self.decoder3 = nn.Sequential(DGA(c[3], c[2]), IEA(c[2], tie))
        self.decoder4 = nn.Conv2d(c[2], c[1], 3, padding=1)
        self.decoder5 = nn.Conv2d(c[1], c[0], 3, padding=1)
        self.ebn = nn.ModuleList(nn.GroupNorm(4, ch) for ch in c[:5])
        self.dbn = nn.ModuleList(nn.GroupNorm(4, ch) for ch in (c[4], c[3], c[2], c[1], c[0]))
        self.final = nn.Conv2d(c[0], num_classes, 1)
        self.loss_weights: tuple[float, ...] = (1.0,)
        self.apply(_init_weights)

    def iea_blocks(self) -> list[IEA]:
        return [m for m in self.modules() if isinstance(m, IEA)]

    def forward(self, x: Tensor) -> SegOutput:
        check_sides(x, 32, "MALUNet")
        out = F.gelu(F.max_pool2d(self.ebn[0](self.encoder1(x)), 2, 2))
        t1 = out
        out = F.gelu(F.max_pool2d(self.ebn[1](self.encoder2(out)), 2, 2))
        t2 = out
        out = F.gelu(F.max_pool2d(self.ebn[2](self.encoder3(out)), 2, 2))
        t3 = out
        out = F.gelu(F.max_pool2d(self.ebn[3](self.encoder4(out)), 2, 2))
        t4 = out
        out = F.gelu(F.max_pool2d(self.ebn[4](self.encoder5(out)), 2, 2))
        t5 = out
        if self.bridge is not None:
            t1, t2, t3, t4, t5 = self.bridge([t1, t2, t3, t4, t5])
        out = F.gelu(self.encoder6(out))
        out = F.gelu(self.dbn[0](self.decoder1(out))) + t5
        out = F.gelu(up2(self.dbn[1](self.decoder2(out)))) + t4
        out = F.gelu(up2(self.dbn[2](self.decoder3(out)))) + t3
        out = F.gelu(up2(self.dbn[3](self.decoder4(out)))) + t2
        out = F.gelu(up2(self.dbn[4](self.decoder5(out)))) + t1
        return SegOutput(up2(self.final(out)), ())


def _init_weights(m: nn.Module) -> None:
    """docs/models.md §4.2: Linear trunc-normal 0.02; Conv1d N(0, sqrt(2/(k*out))); Conv2d N(0, sqrt(2/fan_out)).

    ``apply`` visits ``expand`` before ``reduce``, so in alias mode the shared memory ends with
    the 4C -> C layer's draw (std sqrt(2/C)), as in the original.
    """
    if isinstance(m, nn.Linear):
        trunc_normal_linear_(m)
    elif isinstance(m, nn.Conv1d):
        w = m.__dict__.get("_parameters", {}).get("weight")
        if w is not None:  # single mode: reduce has no weight of its own
            with torch.no_grad():
                w.normal_(0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        normal_fan_out_(m)
    elif isinstance(m, nn.GroupNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def malunet_part_params(widths: tuple[int, ...] = WIDTHS, tie: str = "alias") -> dict[str, int]:
    """Parameter count per part from the spec formulas (docs/models.md §4.3)."""
    c = widths
    iea = lambda n: 10 * n * n + 3 * n - (4 * n * n if tie == "single" else 0)  # noqa: E731
    dga = lambda a, b: 3 * a * a + 67 * a + 2 * a * b + 2 * b  # noqa: E731
    conv3 = lambda a, b: 9 * a * b + b  # noqa: E731
    return {
        "encoder4": iea(c[2]) + dga(c[2], c[3]),
        "encoder5": iea(c[3]) + dga(c[3], c[4]),
        "encoder6": iea(c[4]) + dga(c[4], c[5]),
        "decoder1": dga(c[5], c[4]) + iea(c[4]),
        "decoder2": dga(c[4], c[3]) + iea(c[3]),
        "decoder3": dga(c[3], c[2]) + iea(c[2]),
        "plain_convs": conv3(3, c[0]) + conv3(c[0], c[1]) + conv3(c[1], c[2]) + conv3(c[2], c[1]) + conv3(c[1], c[0]),
        "stage_groupnorms": 4 * sum(c[:5]),
        "sab": 99,
        "cab": 3 + (sum(c[:5]) + 1) * sum(c[:5]),
        "final": c[0] + 1,
    }


@register_model(
    "malunet",
    family="malunet",
    params=177_943,
    thop_macs=83_000_000,  # docs/models.md §0.1: 0.0830 G (3 significant digits)
    macs_rel_tol=0.001,
    min_side=32,
    non_square=(64, 96),
    switches={"tie": "alias"},
    fast="zoo.views:channels_last",  # measured: results/bench/paths_cpu.csv (tests/test_paths.py)
)
def malunet(**overrides: Any) -> nn.Module:
    """MALUNet as counted by the original (tied Conv1d weights aliased): 177,943 params (146,711 unique)."""
    return MALUNet(**overrides)


@register_model(
    "malunet_single",
    family="malunet",
    params=146_711,
    thop_macs=83_000_000,
    macs_rel_tol=0.001,
    min_side=32,
    non_square=(64, 96),
    switches={"tie": "single"},
)
def malunet_single(**overrides: Any) -> nn.Module:
    """MALUNet, single-parameter tie (DEVIATION: one W used as W and W^T): 146,711 params."""
    return MALUNet(**{"tie": "single", **overrides})
