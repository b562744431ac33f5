"""Models registered with their facts (the module form of an ``egeunet.models`` entry point).

Importing this module registers ``tinyseg_ds`` exactly as the package registers its own models, with
the parameter count a test can check; the registry marks it as coming from this entry point.
"""

from __future__ import annotations

from tinyseg.model import TinySeg
from zoo.registry import register_model


@register_model("tinyseg_ds", family="tinyseg", params=3186,
                description="TinySeg (width 8) with a deep-supervision head at half resolution")
def tinyseg_ds(width: int = 8) -> TinySeg:
    return TinySeg(width=width, deep_supervision=True)
