"""Display names of models and variants (the one place the report maps registry names to paper labels).

The registry names models for code (``egeunet_no_xy``); tables and figures use the names of the paper
("EGE-UNet", "UNeXt-S") and, for ablation variants, what was changed ("w/o H-W branch"). A name that is not
listed falls back on the registry name (so a new model still shows up, just not prettily).
"""

from __future__ import annotations

DISPLAY_NAMES: dict[str, str] = {
    # models
    "egeunet": "EGE-UNet",
    "unet32": "UNet",
    "unext": "UNeXt",
    "unext_s": "UNeXt-S",
    "malunet": "MALUNet",
    "malunet_single": "MALUNet (single tie)",
    "transfuse_s": "TransFuse-S",
    "transfuse_lite": "TransFuse-lite",
    "transfuse_lite_t": "TransFuse-lite-T",
    # GHPA ablation
    "egeunet_no_xy": "w/o H-W branch",
    "egeunet_no_zx": "w/o C-H branch",
    "egeunet_no_zy": "w/o C-W branch",
    "egeunet_no_dw": "w/o depth-wise branch",
    "egeunet_only_xy": "H-W branches only",
    "egeunet_ghpa_g2": "GHPA, 2 groups",
    "egeunet_ghpa_g8": "GHPA, 8 groups",
    "egeunet_plain_conv": "plain 3×3 conv for GHPA",
    # GAB ablation
    "egeunet_gab_no_mask": "GAB w/o mask",
    "egeunet_gab_dil_1111": "GAB dilations 1-1-1-1",
    "egeunet_gab_dil_1234": "GAB dilations 1-2-3-4",
    "egeunet_gab_dil_2468": "GAB dilations 2-4-6-8",
    "egeunet_gab_g1": "GAB, 1 group",
    "egeunet_no_gab": "w/o GAB",
    "egeunet_plain_unet": "plain U-shape",
    # deep supervision
    "egeunet_no_ds": "w/o deep supervision",
    "egeunet_ds_unsup": "DS heads, no loss",
    "egeunet_ds_uniform": "DS weights uniform",
    "egeunet_ds_reversed": "DS weights reversed",
    # width
    "egeunet_x0_5": "width ×0.5",
    "egeunet_x0_75": "width ×0.75",
    "egeunet_x1_5": "width ×1.5",
    "egeunet_x2": "width ×2",
}


def display_name(variant: str, model: str | None = None) -> str:
    """Paper label of a table row: the mapping of the variant, else of its model, else the variant as is.

    A suite may label a variant itself (the macro ablation's '+GHPA+GAB'); such labels are kept.
    """
    if variant in DISPLAY_NAMES:
        return DISPLAY_NAMES[variant]
    if model is not None and model == variant and model in DISPLAY_NAMES:
        return DISPLAY_NAMES[model]
    return str(variant)
