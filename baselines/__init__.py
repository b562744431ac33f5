"""Baseline models written from scratch (one module per family); importing registers them.

Families (docs/models.md §2-§5): UNet-32 (:mod:`baselines.unet`), UNeXt / UNeXt-S
(:mod:`baselines.unext`), MALUNet (:mod:`baselines.malunet`), TransFuse-S / TransFuse-lite(-T)
(:mod:`baselines.transfuse`). Every model follows the suite contract of
:mod:`zoo.contract`: logits (no sigmoid) in a ``SegOutput``.
"""

from baselines import malunet, transfuse, unet, unext  # noqa: F401  (registration side effects)

__all__ = ["malunet", "transfuse", "unet", "unext"]
