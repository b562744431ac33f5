"""Named EGE-UNet variants for the registry: the paper model and every ablation of the suites.

Each entry is a zero-logic constructor over :class:`EGEUNetConfig`; its parameter count is the
spec-formula value (:func:`expected_params`), checked against the module tree by the tests.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from egeunet.model import EGEUNet, EGEUNetConfig, expected_params, scaled_widths
from zoo.registry import register_model

# name -> (switches, description); switches are EGEUNetConfig fields.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "egeunet": ({}, "EGE-UNet as published (53,374 params)"),
    # GHPA micro-ablations (each branch replaced by identity in turn)
    "egeunet_no_xy": ({"ghpa_branches": ("id", "zx", "zy", "dw")}, "GHPA without the H-W Hadamard branch"),
    "egeunet_no_zx": ({"ghpa_branches": ("xy", "id", "zy", "dw")}, "GHPA without the C-H Hadamard branch"),
    "egeunet_no_zy": ({"ghpa_branches": ("xy", "zx", "id", "dw")}, "GHPA without the C-W Hadamard branch"),
    "egeunet_no_dw": ({"ghpa_branches": ("xy", "zx", "zy", "id")}, "GHPA without the depth-wise branch"),
    "egeunet_only_xy": ({"ghpa_branches": ("xy", "xy", "xy", "dw")},
                        "single-axis GHPA: the C-H and C-W branches replaced by H-W branches"),
    "egeunet_ghpa_g2": ({"ghpa_branches": ("xy", "dw")}, "GHPA with 2 groups (H-W, depth-wise)"),
    "egeunet_ghpa_g8": ({"ghpa_branches": ("xy", "zx", "zy", "dw") * 2}, "GHPA with 8 groups (each branch twice)"),
    "egeunet_plain_conv": ({"use_ghpa": False}, "every GHPA replaced by a plain 3x3 conv"),
    # GAB micro-ablations
    "egeunet_gab_no_mask": ({"gab_mask": False}, "GAB without the deep-supervision mask"),
    "egeunet_gab_dil_1111": ({"gab_dilations": (1, 1, 1, 1)}, "GAB with no dilation (all 1)"),
    "egeunet_gab_dil_1234": ({"gab_dilations": (1, 2, 3, 4)}, "GAB with dilations (1, 2, 3, 4)"),
    "egeunet_gab_dil_2468": ({"gab_dilations": (2, 4, 6, 8)}, "GAB with dilations (2, 4, 6, 8)"),
    "egeunet_gab_g1": ({"gab_dilations": (1,)}, "GAB without grouping (one group, dilation 1)"),
    "egeunet_no_gab": ({"bridge": False}, "no GAB: plain additive skips"),
    # macro ablation: plain U-shape; +GHPA = egeunet_no_gab; +GAB = egeunet_plain_conv (deep supervision on throughout)
    "egeunet_plain_unet": ({"use_ghpa": False, "bridge": False}, "plain U-shape with EGE-UNet widths"),
    # deep supervision
    "egeunet_no_ds": ({"deep_supervision": False}, "no deep supervision (no heads; GAB without mask)"),
    "egeunet_ds_unsup": ({"deep_supervision": False, "unsupervised_heads": True},
                         "heads feed GAB masks but carry no loss"),
    "egeunet_ds_uniform": ({"ds_weights": (1.0, 1.0, 1.0, 1.0, 1.0)}, "deep-supervision weights all 1"),
    "egeunet_ds_reversed": ({"ds_weights": (0.5, 0.4, 0.3, 0.2, 0.1)}, "deep-supervision weights reversed"),
    # widths
    "egeunet_x0_5": ({"widths": scaled_widths(0.5)}, "channel widths x0.5"),
    "egeunet_x0_75": ({"widths": scaled_widths(0.75)}, "channel widths x0.75 (rounded to multiples of 4)"),
    "egeunet_x1_5": ({"widths": scaled_widths(1.5)}, "channel widths x1.5"),
    "egeunet_x2": ({"widths": scaled_widths(2.0)}, "channel widths x2"),
}


def _make(switches: dict[str, Any]):
    def build(**overrides: Any) -> nn.Module:
        return EGEUNet(EGEUNetConfig(**{**switches, **overrides}))

    return build


for _name, (_switches, _desc) in VARIANTS.items():
    register_model(
        _name,
        family="egeunet",
        params=expected_params(EGEUNetConfig(**_switches)),
        thop_macs=72_096_256 if _name == "egeunet" else None,
        description=_desc,
        switches=_switches,
        fast="egeunet.fast:make_fast",
    )(_make(_switches))
