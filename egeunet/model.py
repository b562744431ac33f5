"""EGE-UNet (Ruan et al., MICCAI 2023), exact to the official model, with working ablation switches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.contract import SegOutput
from egeunet.layers import GAB, GHPA, LayerNormCF, gab_params, ghpa_params, up

OFFICIAL_BRANCHES = ("xy", "zx", "zy", "dw")


@dataclass(frozen=True)
class EGEUNetConfig:
    """Configuration of EGE-UNet; the defaults are the paper's model (53,374 parameters).

    Attributes (each switch is recorded in every run's config):
        in_channels: input image channels.
        num_classes: output channels of the final map (1 = binary lesion logits).
        widths: the six stage widths ``c1..c6``; GroupNorm(4, c) needs every width divisible
            by 4, GHPA needs c3..c6 divisible by ``len(ghpa_branches)`` and GAB needs c1..c5
            divisible by ``len(gab_dilations)``.
        ghpa_branches: the GHPA branch list, one entry per channel chunk, each one of
            ``xy`` (H-W Hadamard branch), ``zx`` (channel-height), ``zy`` (channel-width),
            ``dw`` (depth-wise branch), ``id`` (chunk passes through unchanged). Turning a branch
            off = replacing it by ``id``: the split, both LayerNorms and ``ldw`` stay. The number
            of GHPA groups is the length of this list (branch types may repeat).
        use_ghpa: False replaces every GHPA(di, do) by a plain Conv2d 3x3 di->do with bias,
            as in encoder1-3 (the macro ablation's "plain U-shape").
        bridge: False turns off all five GABs (same as ``gab_stages`` all False).
        gab_stages: GAB1..GAB5 on/off, shallowest first. A stage that is off uses the raw
            encoder feature t_k as its skip (plain additive skip, no parameters) and the next
            shallower GAB then receives that raw t_k as its high-level input ``xh``.
        gab_mask: False = the head logits are not concatenated into the GAB groups (group width
            dim_xl/n instead of dim_xl/n + 1); heads and their losses are unchanged.
        gab_dilations: one dilation per GAB group; the number of GAB groups is its length.
        deep_supervision: False removes the five heads, their side outputs and losses; the
            GABs then get no mask (mask channel removed), which is what the official code's
            ``gt_ds=False`` branch intended (it crashes there). The model returns no aux maps.
        unsupervised_heads: only with ``deep_supervision=False``: keep the five heads and feed
            their logits to the GABs as masks, but return no side outputs (so no side loss).
            Needs ``gab_mask=True`` and all five GAB stages on (else a head would feed nothing).
        ds_weights: loss weights of the side outputs, deepest (p5, 8x8 head) to shallowest
            (p1, 128x128 head); official (0.1, 0.2, 0.3, 0.4, 0.5).
        final_weight: loss weight of the final map (official 1.0).
    """

    in_channels: int = 3
    num_classes: int = 1
    widths: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    ghpa_branches: tuple[str, ...] = OFFICIAL_BRANCHES
    use_ghpa: bool = True
    bridge: bool = True
    gab_stages: tuple[bool, ...] = (True, True, True, True, True)
    gab_mask: bool = True
    gab_dilations: tuple[int, ...] = (1, 2, 5, 7)
    deep_supervision: bool = True
    unsupervised_heads: bool = False
    ds_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    final_weight: float = 1.0

    def __post_init__(self) -> None:
        # Accept lists (from JSON/CLI) and store tuples, so configs hash and compare stably.
        for name in ("widths", "ghpa_branches", "gab_stages", "gab_dilations", "ds_weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.widths) != 6:
            raise ValueError(f"widths must list 6 stage widths, got {self.widths}")
        if len(self.gab_stages) != 5:
            raise ValueError(f"gab_stages must have 5 booleans (GAB1..GAB5), got {self.gab_stages}")
        if len(self.ds_weights) != 5 or any(w < 0 for w in self.ds_weights) or self.final_weight < 0:
            raise ValueError(f"ds_weights must be 5 non-negative numbers, got {self.ds_weights}")
        if self.unsupervised_heads and self.deep_supervision:
            raise ValueError("unsupervised_heads applies only with deep_supervision=False")
        if self.unsupervised_heads and not (self.gab_mask and all(self.active_gabs)):
            # Without a loss, a head only matters through its GAB mask (gt_convK feeds GAB{6-K}):
            # with gab_mask=False or a GAB stage off some heads would be dead, gradient-free weights.
            raise ValueError("unsupervised_heads needs gab_mask=True and all five GAB stages on "
                             "(otherwise a head's logits feed nothing)")
        bad = [c for c in self.widths if c % 4]
        if bad:
            raise ValueError(f"widths {self.widths}: {bad} not divisible by 4 (GroupNorm(4, C))")

    @property
    def has_heads(self) -> bool:
        return self.deep_supervision or self.unsupervised_heads

    @property
    def active_gabs(self) -> tuple[bool, ...]:
        return self.gab_stages if self.bridge else (False,) * 5

    @property
    def gab_uses_mask(self) -> bool:
        return self.gab_mask and self.has_heads

    def replace(self, **changes: Any) -> "EGEUNetConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scaled_widths(multiplier: float, base: tuple[int, ...] = (8, 16, 24, 32, 48, 64)) -> tuple[int, ...]:
    """Stage widths times ``multiplier``, rounded half-up to a multiple of 4 (min 4) for GroupNorm(4, C)."""
    return tuple(max(4, 4 * math.floor(c * multiplier / 4 + 0.5)) for c in base)


def expected_params(cfg: EGEUNetConfig) -> int:
    """Parameter count of a configuration from the spec's formulas (docs/models.md §1.4, §1.5, §1.9)."""
    c = cfg.widths
    conv3 = lambda a, b: 9 * a * b + b  # noqa: E731
    stage = (lambda a, b: ghpa_params(a, b, cfg.ghpa_branches)) if cfg.use_ghpa else conv3
    total = conv3(cfg.in_channels, c[0]) + conv3(c[0], c[1]) + conv3(c[1], c[2])
    total += stage(c[2], c[3]) + stage(c[3], c[4]) + stage(c[4], c[5])
    total += stage(c[5], c[4]) + stage(c[4], c[3]) + stage(c[3], c[2])
    total += conv3(c[2], c[1]) + conv3(c[1], c[0])
    total += 2 * (c[0] + c[1] + c[2] + c[3] + c[4]) * 2  # ebn1-5 and dbn1-5
    total += c[0] * cfg.num_classes + cfg.num_classes  # final
    if cfg.has_heads:
        total += sum(c[k] + 1 for k in range(5))
    for k, on in enumerate(cfg.active_gabs):
        if on:
            total += gab_params(c[k + 1], c[k], len(cfg.gab_dilations), cfg.gab_uses_mask)
    return total


class EGEUNet(nn.Module):
    """EGE-UNet; returns :class:`~zoo.contract.SegOutput` (final logits, side-output logits).

    Side outputs are ordered deepest (p5) to shallowest (p1), all at input resolution;
    ``loss_weights`` = ``(final_weight, *ds_weights)`` (or ``(final_weight,)`` without
    deep supervision). ``sigmoid(output.logits)`` is the paper model's prediction.
    Input sides must be multiples of 32.
    """

    def __init__(self, config: EGEUNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = (config or EGEUNetConfig()).replace(**overrides) if overrides else (config or EGEUNetConfig())
        self.config = cfg
        c = cfg.widths
        br = cfg.ghpa_branches

        def stage(a: int, b: int) -> nn.Module:
            return GHPA(a, b, br) if cfg.use_ghpa else nn.Conv2d(a, b, 3, padding=1)

        # Registration order = the official state_dict order.
        self.encoder1 = nn.Sequential(nn.Conv2d(cfg.in_channels, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1))
        self.encoder4 = nn.Sequential(stage(c[2], c[3]))
        self.encoder5 = nn.Sequential(stage(c[3], c[4]))
        self.encoder6 = nn.Sequential(stage(c[4], c[5]))
        for k, on in enumerate(cfg.active_gabs, start=1):
            if on:
                self.add_module(f"GAB{k}", GAB(c[k], c[k - 1], cfg.gab_dilations, cfg.gab_uses_mask))
        if cfg.has_heads:
            for k, ch in enumerate((c[4], c[3], c[2], c[1], c[0]), start=1):
                self.add_module(f"gt_conv{k}", nn.Sequential(nn.Conv2d(ch, 1, 1)))
        self.decoder1 = nn.Sequential(stage(c[5], c[4]))
        self.decoder2 = nn.Sequential(stage(c[4], c[3]))
        self.decoder3 = nn.Sequential(stage(c[3], c[2]))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        for k in range(5):
            self.add_module(f"ebn{k + 1}", nn.GroupNorm(4, c[k]))
        for k, ch in enumerate((c[4], c[3], c[2], c[1], c[0]), start=1):
            self.add_module(f"dbn{k}", nn.GroupNorm(4, ch))
        self.final = nn.Conv2d(c[0], cfg.num_classes, 1)
        self.loss_weights: tuple[float, ...] = (
            (cfg.final_weight, *cfg.ds_weights) if cfg.deep_supervision else (cfg.final_weight,))
        self.apply(init_weights)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> SegOutput:
        cfg = self.config
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"EGE-UNet input sides must be multiples of 32, got {tuple(x.shape[2:])}")
        t1 = F.gelu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t2 = F.gelu(F.max_pool2d(self.ebn2(self.encoder2(t1)), 2, 2))
        t3 = F.gelu(F.max_pool2d(self.ebn3(self.encoder3(t2)), 2, 2))
        t4 = F.gelu(F.max_pool2d(self.ebn4(self.encoder4(t3)), 2, 2))
        t5 = F.gelu(F.max_pool2d(self.ebn5(self.encoder5(t4)), 2, 2))
        t6 = F.gelu(self.encoder6(t5))
        skips = (t1, t2, t3, t4, t5)

        masks: list[Tensor] = []  # head logits at stage resolution, deepest first
        xh = t6
        out = t6
        for s in range(5):  # decoder stage s+1, GAB index k = 5 - s, skip t_k
            k = 5 - s
            dec = getattr(self, f"decoder{s + 1}")
            dbn = getattr(self, f"dbn{s + 1}")
            d = dbn(dec(out))
            d = F.gelu(d if s == 0 else up(d, scale=2))
            mask = getattr(self, f"gt_conv{s + 1}")(d) if cfg.has_heads else None
            if mask is not None:
                masks.append(mask)
            if cfg.active_gabs[k - 1]:
                bridged = getattr(self, f"GAB{k}")(xh, skips[k - 1], mask if cfg.gab_uses_mask else None)
            else:
                bridged = skips[k - 1]
            xh = bridged
            out = d + bridged
        logits = up(self.final(out), scale=2)
        if not cfg.deep_supervision:
            return SegOutput(logits, ())
        h, w = x.shape[2], x.shape[3]
        aux = tuple(up(m, size=(h, w)) for m in masks)
        return SegOutput(logits, aux)

    # -- official checkpoints -------------------------------------------------------------------
    @classmethod
    def from_official_state_dict(cls, state_dict: dict[str, Any], config: EGEUNetConfig | None = None,
                                 strict: bool = True) -> "EGEUNet":
        """Build a model and load a checkpoint saved by the official EGE-UNet code (see :mod:`egeunet.official`)."""
        from egeunet.official import load_official_state_dict

        model = cls(config)
        load_official_state_dict(model, state_dict, strict=strict)
        return model


def init_weights(m: nn.Module) -> None:
    """The official initialisation (docs/models.md §1.6)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d):
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
    elif isinstance(m, (nn.GroupNorm, LayerNormCF)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
