"""TinySeg: a two-level encoder-decoder, small enough to train in seconds (an egeunet-bench plug-in example)."""

from tinyseg.model import TinySeg, build

__all__ = ["TinySeg", "build"]
