"""Fused C++ CPU kernels shared by the EGE-UNet fast forward (``egeunet.fast``) and the fused loss
(``engine.losses``): built on first use by :func:`kernels.fastops.ops` from ``kernels/csrc/fastops.cpp``.

Neutral ground: this package imports only torch, so the model layer and the engine can both use it.
"""
