"""The project's fast path for EGE-UNet: same parameters, same numbers, less time on CPU.

``make_fast(model, mode="train"|"infer")`` wraps a model (any :class:`egeunet.model.EGEUNet`
configuration; other models get the generic parts) in a module that *shares* its parameters (and
their names: ``state_dict`` keys are the plain model's) and returns the same
:class:`~zoo.contract.SegOutput`. Nothing computed changes; only how:

1. **Channels-last** activations: oneDNN's thin and depth-wise convolutions are much faster in
   NHWC than in NCHW; 1x1 convolutions run as one GEMM (``F.linear`` on the NHWC view).
2. **LayerNorm / GroupNorm without the slow paths**: native ``layer_norm`` pays a large per-row
   cost for 5-16 channel rows (the GAB groups), so small channels-first LayerNorms use the formula
   with a hand-written backward (large ones: native ``layer_norm`` on the NHWC view); the native
   channels-last GroupNorm kernel is fast but loses ~1e-4 (float32 sum of squares), so GroupNorm
   uses two-pass statistics with a hand-written backward (as accurate as the NCHW kernel).
3. **No zero-filled gradient buffers**: channel splits/concats (GHPA chunks, GAB groups) are
   autograd functions whose backward is one ``cat``/``split``; autograd's slice backward writes
   every chunk's gradient into its own zero-filled full-size NCHW tensor and sums them.
4. **Side outputs**: the 1-channel deep-supervision maps are up-sampled by two small GEMMs with
   ATen's exact bilinear weights (a backward much faster than ATen's scatter kernel); at inference
   they are skipped by default (the final map is bit-identical, docs/models.md §1.3).
5. **Inference**: micro-batches (default: one per worker, at most ~16 images of 256x256 each: per-call
   overhead outweighs cache residency here: 4-image chunks measured slower, docs/performance.md) and the
   parameter-only GHPA masks cached per
   spatial size, recomputed when a parameter they depend on changes (checked by content: fused
   AdamW does not bump version counters): bit-identical.
6. **Depth-wise convs** (GHPA, GAB's dilated groups) get a hand-written backward: oneDNN's NHWC
   backward for 5-24-channel depth-wise maps costs several times its forward; the input gradient is
   the forward kernel on flipped weights, the weight gradient k*k shifted multiply-sums (less in all).
7. **Encoder GroupNorm + max-pool fused**: the affine GroupNorm commutes with max-pooling, so the
   normalised full-size map is never written and the backward works at pooled size plus one
   full-size ``addcmul`` (a gain on the whole training step in interleaved A/B runs).
8. **Fused C++ kernels** (``kernels/csrc/fastops.cpp`` via :mod:`kernels.fastops`, built on first use;
   without a compiler, or with ``EGEUNET_FAST_EXT=0``, the PyTorch kernels of items 2-7 run): the
   channels LayerNorm (pixels transposed 16 at a time so the per-pixel sums are vector loops), GAB's
   group and tail LayerNorms read straight from xh / xl / mask and the group outputs (``ln_multi``:
   no concatenation is written, and the backward writes each source's gradient directly; at
   inference the tail 1x1 conv is applied in the same pass), GroupNorm statistics / affine /
   backward, GroupNorm + max-pool with a one-pass backward, depth-wise 'same' convs (row spans of
   k*k multiply-adds: faster than oneDNN on 5-24 channels, most at large dilation), bilinear
   up-sampling with a gather backward (faster than ATen's scatter), the depth-wise weight gradient.
   They release the GIL (the worker threads overlap) and sum parameter gradients over fixed row
   blocks in double, so results do not depend on the thread count. Built with ``-fno-math-errno`` (the
   per-pixel ``1/sqrt`` loops vectorise; bit-identical results); GAB's inference tail computes its 1x1
   conv four output channels at a time in registers (same summation order, bit-identical).
9. **Optimizer and loss**: :func:`engine.optim.adamw` is ATen's fused AdamW on the CPU (one call per step);
   ``engine.losses.bce_dice(..., fused=True)`` (``engine.train`` passes it on the fast path only) runs
   as one node with two kernel passes.
10. **Inter-op workers** (default: one per torch thread): the batch is split into chunks run by
   single-threaded worker threads of this process (ATen releases the GIL); training gradients are
   computed per chunk with ``torch.autograd.grad`` and summed in chunk order (deterministic). Every
   EGE-UNet op is per-sample (GroupNorm per image, LayerNorm per pixel, no BatchNorm), so chunks
   give the whole batch's numbers. On the idle 2-core machine two workers beat one process with two
   intra-op threads, in training and at inference: these small ops split poorly across threads.
   A process with one thread (``--workers N`` suites) is unaffected.
11. **GHPA masks in training**: recomputed every step (they depend on the parameters), through the fused
   resize and depth-wise kernels and one GEMM each, not the module's tiny convs (oneDNN's fixed cost per call,
   forward and backward, was most of their time).

Measured and *not* kept: a C++ 1x1 conv (no faster than MKL's GEMM at these widths; the slow skinny
GEMMs seen in profiles were mostly first-touch page faults on fresh outputs, absent once warm); GELU
fused into the kernels (a scalar ``erf`` is slower than ATen's vectorised one); branches instead of
selects in the max-pool kernels (data-dependent mispredictions); ``torch.compile`` (inductor, CPU: long
compilation, a small gain on inference, a slower training step); native channels-last GroupNorm
(inaccurate, slow backward); ``F.layer_norm`` for rows of < 16 values; splitting the training batch into
micro-batches; ``var_mean`` (Welford) reductions; glibc malloc tunables or ``mallopt`` (far fewer page
faults, no measurable change in the step); LayerNorm statistics as GEMMs with a block-averaging matrix;
NCHW for the plain 3x3 convs; AVX2 gathers for the pixel/channel tile transposes (about 2x slower than the
compiler's scalar moves on Zen 3); in-register 8x8 AVX2 transposes for them (the plain channel LayerNorm's
kernels 1.6-2.1x faster alone, but they run on small maps only, and GAB's multi-source forward got 0.8-0.9x); the 3x3 input gradient as a forward conv on transposed weights; the small
LayerNorm's channel means as GEMVs over the NHWC rows (faster alone, no gain on the step). The kernels
are built without ``-fopenmp`` (it would link a second OpenMP runtime beside torch's) and run
single-threaded inside the worker threads.

Speed: ``python -m studies.bench`` measures this path against the reference; its numbers, and the
design measurements behind the items above, are in docs/performance.md (generated from the
committed results/bench/*.csv), not here.

Numbers: outputs and gradients agree with :class:`egeunet.reference.ReferenceEGEUNet` to float32
round-off -- the fast path is as close to a float64 evaluation as the reference itself -- and to
~1e-12 in float64 (tests/test_fast.py).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.contract import SegOutput, as_seg_output
from kernels import fastops as _fastops
from egeunet.layers import GAB, GHPA, LayerNormCF
from egeunet.model import EGEUNet

CL = torch.channels_last
_HALF = (torch.float16, torch.bfloat16)


def _kernels(*ts: Tensor) -> Any:
    """The fused C++ kernels (``kernels.fastops``) if they are built and every tensor suits them
    (CPU, float32/64, 4-D channels-last contiguous), else None (the PyTorch kernels run instead)."""
    if torch.compiler.is_compiling():  # dynamo cannot trace into them
        return None
    for t in ts:
        if (t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or t.dim() != 4
                or not t.is_contiguous(memory_format=CL)):
            return None
    return _fastops.ops()


class _UpBilinear(torch.autograd.Function):
    """Bilinear (align_corners=True) resize by the fused kernels: ATen's source positions and
    weights; the backward is a separable gather instead of ATen's scatter (faster here)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: tuple[int, int]) -> Tensor:  # type: ignore[override]
        ctx.in_size = (x.shape[2], x.shape[3])
        return _fastops.ops().up_forward(x, size[0], size[1])

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        return _fastops.ops().up_backward(gy.contiguous(memory_format=CL), *ctx.in_size), None


def _up(x: Tensor, size: tuple[int, int] | None = None, scale: int | None = None) -> Tensor:
    """``F.interpolate(x, size or scale, mode="bilinear", align_corners=True)``."""
    if size is None:
        size = (int(x.shape[2] * scale), int(x.shape[3] * scale))
    ext = _kernels(x)
    if ext is not None:
        if torch.is_grad_enabled() and x.requires_grad:
            return _UpBilinear.apply(x, tuple(size))
        return ext.up_forward(x, size[0], size[1])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _dw_weight_grad(x: Tensor, gy: Tensor, k: int, d: int) -> Tensor:
    """Weight gradient of a stride-1 depth-wise k x k conv with dilation d and 'same' padding:
    one shifted multiply-and-sum per tap over the NHWC views (no im2col)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    xv, gv = x.permute(0, 2, 3, 1), gy.permute(0, 2, 3, 1)
    r = k // 2
    out = x.new_empty(c, k, k)
    for i in range(k):
        di = d * (i - r)
        h0, h1 = max(0, -di), min(h, h - di)
        for j in range(k):
            dj = d * (j - r)
            w0, w1 = max(0, -dj), min(w, w - dj)
            if h1 <= h0 or w1 <= w0:  # the tap never overlaps the image
                out[:, i, j] = 0
                continue
            out[:, i, j] = (gv[:, h0:h1, w0:w1] * xv[:, h0 + di:h1 + di, w0 + dj:w1 + dj]).sum((0, 1, 2))
    return out.view(c, 1, k, k)


class _DepthwiseConv(torch.autograd.Function):
    """Depth-wise 'same' conv (odd k, stride 1) on channels-last maps with a hand-written backward.

    The forward is :func:`_dw_conv` (the fused kernel, else ``F.conv2d`` itself). oneDNN's NHWC
    backward for these thin, often dilated convs costs several times its forward; here the input
    gradient is the forward kernel on the flipped weights and the weight gradient is k*k shifted
    multiply-sums (faster in all; docs/performance.md).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, d: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.d = d
        ctx.has_bias = b is not None
        return _dw_conv(x, w, b, d)

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        d, k = ctx.d, w.shape[-1]
        gy = gy.contiguous(memory_format=CL)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _dw_conv(gy, w.flip(2, 3), None, d)
        if ctx.needs_input_grad[1]:
            ext = _kernels(x, gy)
            gw = ext.dw_weight_grad(x, gy, k, d) if ext is not None else _dw_weight_grad(x, gy, k, d)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None


def _dw_conv(x: Tensor, w: Tensor, b: Tensor | None, d: int) -> Tensor:
    """Depth-wise 'same' conv (odd k, stride 1, dilation d): the fused kernel on channels-last float
    maps (k*k contiguous multiply-adds per row; faster than oneDNN on 5-24 channels, most
    at large dilation), else ``F.conv2d``."""
    ext = _kernels(x) if x.dtype == w.dtype else None
    if ext is not None:
        return ext.dw_conv(x, w, b, d)
    return F.conv2d(x, w, b, padding=d * (w.shape[-1] // 2), dilation=d, groups=x.shape[1])


def _is_same_depthwise(mod: nn.Conv2d) -> bool:
    k, d = mod.kernel_size, mod.dilation
    return (mod.groups == mod.in_channels == mod.out_channels and k[0] == k[1] and k[0] % 2 == 1
            and d[0] == d[1] and mod.stride == (1, 1) and mod.padding == (d[0] * (k[0] // 2),) * 2
            and mod.padding_mode == "zeros")


def conv(mod: nn.Module, x: Tensor) -> Tensor:
    """``mod(x)``; a plain 1x1 ``Conv2d`` runs as one GEMM on the NHWC view (same math, faster backward),
    a depth-wise 'same' conv through :class:`_DepthwiseConv` when a gradient is needed."""
    if (isinstance(mod, nn.Conv2d) and x.dim() == 4 and x.is_contiguous(memory_format=CL)
            and x.dtype == mod.weight.dtype):
        if mod.kernel_size == (1, 1) and mod.groups == 1 and mod.stride == (1, 1) and mod.padding == (0, 0):
            w = mod.weight.view(mod.out_channels, mod.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), w, mod.bias).permute(0, 3, 1, 2)
        if x.device.type == "cpu" and _is_same_depthwise(mod):
            if torch.is_grad_enabled() and (x.requires_grad or mod.weight.requires_grad):
                return _DepthwiseConv.apply(x, mod.weight, mod.bias, mod.dilation[0])
            return _dw_conv(x, mod.weight, mod.bias, mod.dilation[0])
    return mod(x)


def seq(mods: nn.Sequential, x: Tensor) -> Tensor:
    for m in mods:
        x = conv(m, x)
    return x


SMALL_LN_CHANNELS = 16  # below this, the formula LayerNorm beats native layer_norm (per-row overhead)


class _LayerNormCFSmall(torch.autograd.Function):
    """Channels-first LayerNorm by the formula (any memory layout), with a hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
        d = x - x.mean(1, keepdim=True)
        rstd = torch.rsqrt((d * d).mean(1, keepdim=True) + eps)
        xhat = d.mul_(rstd)
        ctx.save_for_backward(xhat, rstd, w)
        return torch.addcmul(b[:, None, None], xhat, w[:, None, None])

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        xhat, rstd, w = ctx.saved_tensors
        gw = gb = None
        if ctx.needs_input_grad[1]:
            gw = (gy * xhat).sum((0, 2, 3))
        if ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        gx = None
        if ctx.needs_input_grad[0]:
            g = gy * w[:, None, None]
            m2 = (g * xhat).mean(1, keepdim=True)
            gx = (g - g.mean(1, keepdim=True)).sub_(xhat * m2).mul_(rstd)
        return gx, gw, gb, None


class _LayerNormCFExt(torch.autograd.Function):
    """Channels-first LayerNorm of a channels-last map by the fused kernels (one pass each way)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        y, mean, rstd = _fastops.ops().ln_forward(x, w, b, eps, True)
        ctx.save_for_backward(x, mean, rstd, w)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        x, mean, rstd, w = ctx.saved_tensors
        gx, gw, gb = _fastops.ops().ln_backward(gy.contiguous(memory_format=CL), x, mean, rstd, w)
        return gx, gw, gb, None


def _layer_norm_small(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad):
        return _LayerNormCFSmall.apply(x, w, b, eps)
    d = x - x.mean(1, keepdim=True)
    d.mul_(torch.rsqrt((d * d).mean(1, keepdim=True) + eps))
    return torch.addcmul(b[:, None, None], d, w[:, None, None])


def layer_norm_cf(x: Tensor, ln: LayerNormCF | nn.Module) -> Tensor:
    """Channels-first LayerNorm of a B x C x H x W tensor (result in x's layout).

    A channels-last float map with the fused kernels built: one C++ pass each way. Without them,
    few channels: the formula with a hand-written backward (native ``layer_norm`` has a large
    per-row cost when rows are 5-16 values long); otherwise one native ``F.layer_norm`` on the
    NHWC view (for a channels-last ``x`` the permuted view is contiguous: no copy).
    """
    if x.dtype in _HALF:  # as autocast runs layer_norm: in float32
        x = x.float()
    ext = _kernels(x) if x.dtype == ln.weight.dtype == ln.bias.dtype else None
    if ext is not None:
        if torch.is_grad_enabled() and (x.requires_grad or ln.weight.requires_grad or ln.bias.requires_grad):
            return _LayerNormCFExt.apply(x, ln.weight, ln.bias, ln.eps)
        return ext.ln_forward(x, ln.weight, ln.bias, ln.eps, False)[0]
    if x.shape[1] < SMALL_LN_CHANNELS:
        return _layer_norm_small(x, ln.weight, ln.bias, ln.eps)
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), ln.weight, ln.bias, ln.eps).permute(0, 3, 1, 2)


def _group_mean(t: Tensor, groups: int) -> Tensor:
    """Per-(image, group) mean of a B x C x H x W tensor, broadcast back to B x C."""
    bsz, c = t.shape[0], t.shape[1]
    return t.mean((2, 3)).view(bsz, groups, c // groups).mean(2).repeat_interleave(c // groups, 1)


def _group_stats(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """(x - mean, rstd) with per-(image, group) two-pass statistics; rstd is B x C."""
    d = x - _group_mean(x, groups)[:, :, None, None]
    return d, torch.rsqrt(_group_mean(d * d, groups) + eps)


def _group_norm_input_grad_coeffs(sg: Tensor, sgd: Tensor, rstd: Tensor, w: Tensor, groups: int,
                                  n: int) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm's input gradient is ``c1 * gy + c2 + c3 * (x - mean)``; (c1, c2, c3) as B x C x 1 x 1
    from the per-channel sums ``sg = sum(gy)`` and ``sgd = sum(gy * (x - mean))`` (n values per group)."""
    bsz, c = sg.shape
    cg = c // groups
    a = (sg * w).view(bsz, groups, cg).sum(2).repeat_interleave(cg, 1) / n
    bb = (sgd * w).view(bsz, groups, cg).sum(2).repeat_interleave(cg, 1) / n
    return ((rstd * w)[:, :, None, None], (-rstd * a)[:, :, None, None],
            (-(rstd ** 3) * bb)[:, :, None, None])


def _group_norm_backward_terms(ctx: Any, sg: Tensor, sgd: Tensor, rstd: Tensor, w: Tensor,
                               shape: torch.Size) -> tuple[Tensor | None, Tensor | None, tuple | None]:
    """(gw, gb, input-gradient coefficients or None) of a GroupNorm backward over a map of ``shape``
    from the per-(image, channel) sums ``sg`` and ``sgd``, each only where ``ctx`` needs it."""
    gw = (sgd * rstd).sum(0) if ctx.needs_input_grad[2] else None
    gb = sg.sum(0) if ctx.needs_input_grad[3] else None
    coeffs = None
    if ctx.needs_input_grad[0]:
        n = shape[1] // ctx.groups * shape[2] * shape[3]
        coeffs = _group_norm_input_grad_coeffs(sg, sgd, rstd, w, ctx.groups, n)
    return gw, gb, coeffs


def _gn_stats_ext(ext: Any, x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per-(image, channel) mean and rstd (B x C) of GroupNorm, two passes in the fused kernel."""
    mean, rstd = ext.gn_stats(x, groups, eps)
    cg = x.shape[1] // groups
    return mean.repeat_interleave(cg, 1), rstd.repeat_interleave(cg, 1)


def _flat(*cs: Tensor) -> tuple[Tensor, ...]:
    return tuple(c.reshape(c.shape[0], c.shape[1]) for c in cs)


class _GroupNormExt(torch.autograd.Function):
    """GroupNorm of a channels-last map by the fused kernels: statistics in two reads, the affine in
    one pass; the backward is one pass of sums and one of the input gradient (x is kept, not x - mean)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, groups: int, w: Tensor, b: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ext = _fastops.ops()
        mean, rstd = _gn_stats_ext(ext, x, groups, eps)
        ctx.save_for_backward(x, mean, rstd, w)
        ctx.groups = groups
        return ext.gn_affine(x, mean, rstd * w, b)

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        x, mean, rstd, w = ctx.saved_tensors
        ext = _fastops.ops()
        gy = gy.contiguous(memory_format=CL)
        sg, sgd = ext.gn_backward_sums(gy, x, mean)  # B x C
        gw, gb, coeffs = _group_norm_backward_terms(ctx, sg, sgd, rstd, w, x.shape)
        gx = ext.gn_backward_apply(gy, x, mean, *_flat(*coeffs)) if coeffs is not None else None
        return gx, None, gw, gb, None


class _GroupNormMaxPoolExt(torch.autograd.Function):
    """:class:`_GroupNormMaxPool` by the fused kernels: the forward reads x three times (two for the
    statistics, one pooling pass that writes only pooled-size maps and the arg-max); the
    backward writes the input gradient in one pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, groups: int, w: Tensor, b: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ext = _fastops.ops()
        mean, rstd = _gn_stats_ext(ext, x, groups, eps)
        a = rstd * w
        out, pooled_d, idx = ext.gn_pool_forward(x, mean, a, b, True)
        ctx.save_for_backward(x, mean, rstd, w, pooled_d, idx, torch.where(a < 0, -1.0, 1.0).to(a.dtype))
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx: Any, gp: Tensor):  # type: ignore[override]
        x, mean, rstd, w, pooled_d, idx, sgn = ctx.saved_tensors
        gp = gp.contiguous(memory_format=CL)
        sg = gp.sum((2, 3))  # B x C: the full-size gradient is gp at the arg-max positions, zero elsewhere
        sgd = (gp * pooled_d).sum((2, 3)) * sgn  # x - mean at an arg-max is sgn * pooled_d
        gw, gb, coeffs = _group_norm_backward_terms(ctx, sg, sgd, rstd, w, x.shape)
        gx = _fastops.ops().gn_pool_backward(gp, x, mean, idx, *_flat(*coeffs)) if coeffs is not None else None
        return gx, None, gw, gb, None


class _GroupNormTwoPass(torch.autograd.Function):
    """GroupNorm with two-pass statistics from per-channel sums (accurate in any layout).

    The native channels-last CPU kernel accumulates sum and sum of squares in float32 and loses
    ~1e-4 on conv outputs with a large mean; this one stays at the NCHW kernel's accuracy.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, groups: int, w: Tensor, b: Tensor, eps: float) -> Tensor:
        d, rstd = _group_stats(x, groups, eps)  # rstd: B x C
        ctx.save_for_backward(d, rstd, w)
        ctx.groups = groups
        return torch.addcmul(b[None, :, None, None], d, (rstd * w)[:, :, None, None])

    @staticmethod
    def backward(ctx: Any, gy: Tensor):  # type: ignore[override]
        d, rstd, w = ctx.saved_tensors
        sg = gy.sum((2, 3))  # B x C
        sgd = (gy * d).sum((2, 3))  # B x C
        gw, gb, coeffs = _group_norm_backward_terms(ctx, sg, sgd, rstd, w, d.shape)
        gx = None
        if coeffs is not None:
            c1, c2, c3 = coeffs
            gx = torch.addcmul(torch.addcmul(c2, gy, c1), d, c3)
        return gx, None, gw, gb, None


class _GroupNormMaxPool(torch.autograd.Function):
    """``max_pool2d(group_norm(x), 2, 2)`` with the affine applied after the pooling.

    GroupNorm is a per-(image, channel) affine map ``a * (x - mean) + bias``; max-pooling commutes
    with it (pool ``x - mean`` where ``a >= 0``, its negation where ``a < 0``), so the normalised map
    is never written at full resolution. The backward needs only pooled-size sums plus one
    full-size ``addcmul`` and a scatter of the pooled gradient at the arg-max positions.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, groups: int, w: Tensor, b: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        d, rstd = _group_stats(x, groups, eps)
        a = rstd * w  # B x C
        sgn = torch.where(a < 0, -1.0, 1.0).to(a.dtype)  # B x C
        m, idx = F.max_pool2d(d * sgn[:, :, None, None] if bool((a < 0).any()) else d, 2, 2, return_indices=True)
        ctx.save_for_backward(d, rstd, w, m, idx, sgn)
        ctx.groups = groups
        return torch.addcmul(b[None, :, None, None], m, a.abs()[:, :, None, None])

    @staticmethod
    def backward(ctx: Any, gp: Tensor):  # type: ignore[override]
        d, rstd, w, m, idx, sgn = ctx.saved_tensors
        gp = gp.contiguous(memory_format=_memory_format(m))
        # the full-size gradient is gp at the arg-max positions and zero elsewhere, so its sums are
        # pooled-size sums; d at an arg-max is sgn * m
        sg = gp.sum((2, 3))  # B x C
        sgd = (gp * m).sum((2, 3)) * sgn
        gw, gb, coeffs = _group_norm_backward_terms(ctx, sg, sgd, rstd, w, d.shape)
        gx = None
        if coeffs is not None:
            c1, c2, c3 = coeffs
            scattered = torch.ops.aten.max_pool2d_with_indices_backward(
                gp * c1, d, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
            gx = torch.addcmul(c2, d, c3).add_(scattered)  # measured faster than scatter_add_ into it
        return gx, None, gw, gb, None


def _group_norm_pool_infer(gn: nn.GroupNorm, x: Tensor, inplace: bool) -> Tensor:
    """The no-grad branch: no arg-max indices, and with ``inplace`` no full-size temporary at all
    (the mean is subtracted, the sign applied and the squares taken in x's own storage, after
    pooling: sign(a) = sign(weight) since rstd > 0)."""
    mean = _group_mean(x, gn.num_groups)[:, :, None, None]
    d = x.sub_(mean) if inplace else x - mean  # d is ours from here
    if bool((gn.weight < 0).any()):
        d.mul_(torch.where(gn.weight < 0, -1.0, 1.0).to(d.dtype)[None, :, None, None])
    pooled = F.max_pool2d(d, 2, 2)
    a = torch.rsqrt(_group_mean(d.mul_(d), gn.num_groups) + gn.eps) * gn.weight
    return torch.addcmul(gn.bias[None, :, None, None], pooled, a.abs()[:, :, None, None])


def group_norm_pool(gn: nn.GroupNorm, x: Tensor, inplace: bool = False, gelu: bool = False) -> Tensor:
    """``max_pool2d(gn(x), 2, 2)`` (then GELU with ``gelu``); channels-last float32/64 CPU maps with
    even sides go through the fused kernels or :class:`_GroupNormMaxPool` (same numbers to round-off,
    less full-size memory traffic). ``inplace=True`` lets the PyTorch no-grad branch overwrite x
    (pass it only for a temporary)."""
    act = F.gelu if gelu else (lambda t: t)
    if (x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and x.is_contiguous(memory_format=CL)
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and gn.affine):
        grad = torch.is_grad_enabled() and (x.requires_grad or gn.weight.requires_grad or gn.bias.requires_grad)
        ext = _kernels(x) if x.dtype == gn.weight.dtype == gn.bias.dtype else None
        if ext is not None:
            if grad:
                return act(_GroupNormMaxPoolExt.apply(x, gn.num_groups, gn.weight, gn.bias, gn.eps))
            mean, rstd = _gn_stats_ext(ext, x, gn.num_groups, gn.eps)
            return act(ext.gn_pool_forward(x, mean, rstd * gn.weight, gn.bias, False)[0])
        if grad:
            return act(_GroupNormMaxPool.apply(x, gn.num_groups, gn.weight, gn.bias, gn.eps))
        return act(_group_norm_pool_infer(gn, x, inplace))
    return act(F.max_pool2d(group_norm(gn, x), 2, 2))


def group_norm(gn: nn.GroupNorm, x: Tensor) -> Tensor:
    """``gn(x)``; channels-last inputs go through the accurate two-pass implementation."""
    if x.dtype in _HALF:  # as autocast runs group_norm: in float32
        x = x.float()
    if x.is_contiguous() and not x.is_contiguous(memory_format=CL):
        return gn(x)
    ext = _kernels(x) if x.dtype == gn.weight.dtype == gn.bias.dtype and gn.affine else None
    if ext is not None:
        if torch.is_grad_enabled() and (x.requires_grad or gn.weight.requires_grad or gn.bias.requires_grad):
            return _GroupNormExt.apply(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
        mean, rstd = _gn_stats_ext(ext, x, gn.num_groups, gn.eps)
        return ext.gn_affine(x, mean, rstd * gn.weight, gn.bias)
    if torch.is_grad_enabled() and (x.requires_grad or gn.weight.requires_grad):
        return _GroupNormTwoPass.apply(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    d, rstd = _group_stats(x, gn.num_groups, gn.eps)
    return torch.addcmul(gn.bias[None, :, None, None], d, (rstd * gn.weight)[:, :, None, None])


def interp_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Tensor:
    """n_out x n_in bilinear (align_corners=True) weights, computed exactly as ATen does (opmath float)."""
    key = (n_in, n_out, dtype, str(device))
    m = _INTERP_CACHE.get(key)
    if m is None:
        m = _interp_matrix(n_in, n_out, dtype, device)
        _INTERP_CACHE[key] = m
    return m


@torch.inference_mode(False)  # a normal tensor even when first asked for under inference mode: training reuses it
def _interp_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """The uncached :func:`interp_matrix`."""
    op = torch.float64 if dtype == torch.float64 else torch.float32
    i = torch.arange(n_out, dtype=op)
    # ATen: scale = static_cast<opmath>(in - 1) / (out - 1); src = scale * i, both in opmath precision
    scale = (torch.tensor(float(n_in - 1), dtype=op) / torch.tensor(float(n_out - 1), dtype=op)
             if n_out > 1 else torch.tensor(0.0, dtype=op))
    src = scale * i
    i0 = src.floor().long().clamp(max=n_in - 1)
    lam1 = (src - i0.to(op)).clamp(0, 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    m = torch.zeros(n_out, n_in, dtype=op)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - lam1, accumulate=True)
    m.index_put_((rows, i1), lam1, accumulate=True)
    return m.to(dtype=dtype, device=device)


_INTERP_CACHE: dict[tuple, Tensor] = {}


def up_map(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=True) resize of a 1-channel B x 1 x h x w map as two small matmuls.

    Same weights as ``F.interpolate``; the backward is two GEMMs instead of ATen's scatter, which is
    much faster for the deep-supervision side outputs (8x8 .. 64x64 -> 256x256; docs/performance.md).
    """
    bsz, c, h, w = m.shape
    ah = interp_matrix(h, size[0], m.dtype, m.device)
    aw = interp_matrix(w, size[1], m.dtype, m.device)
    return torch.matmul(ah, torch.matmul(m.reshape(bsz * c, h, w), aw.t())).view(bsz, c, size[0], size[1])


class _MaskCache:
    """Parameter-only GHPA masks per (module, branch, H, W), recomputed when a parameter they depend on
    changed. Validity is checked by content (a stored copy of those few hundred values), not by
    version counters: ATen's fused AdamW updates parameters in place without bumping them."""

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[list[Tensor], Tensor]] = {}

    @staticmethod
    def _params(mod: GHPA, name: str) -> list[Tensor]:
        return [getattr(mod, f"params_{name}"), *getattr(mod, f"conv_{name}").parameters()]

    def get(self, mod: GHPA, name: str, kind: str, h: int, w: int) -> Tensor:
        key = (id(mod), name, h, w)
        ps = self._params(mod, name)
        hit = self._store.get(key)
        if hit is not None and len(hit[0]) == len(ps) and all(
                a.shape == p.shape and a.dtype == p.dtype and a.device == p.device and torch.equal(a, p)
                for a, p in zip(hit[0], ps)):
            return hit[1]
        m = _branch_mask(mod, name, kind, h, w)
        with torch.no_grad():
            self._store[key] = ([p.detach().clone() for p in ps], m)
        return m

    def clear(self) -> None:
        self._store.clear()


def _branch_mask(mod: GHPA, name: str, kind: str, h: int, w: int) -> Tensor:
    """The mask of one Hadamard branch, shaped to broadcast against its B x c x H x W chunk."""
    fused = _branch_mask_ext(mod, name, kind, h, w)
    if fused is not None:
        return fused
    m = mod.branch_mask(name, kind, h, w)  # xy: 1 x c x H x W; zx: 1 x 1 x c x H; zy: 1 x 1 x c x W
    c = mod.chunk
    if kind == "zx":
        return m.reshape(1, c, h, 1)
    if kind == "zy":
        return m.reshape(1, c, 1, w)
    return m


def _is_mask_conv(seq_: nn.Module, c: int, conv_type: type) -> bool:
    """``Sequential(depth-wise k=3 'same' conv, GELU, 1x1 conv)`` over ``c`` channels (GHPA's mask convs)."""
    if not (isinstance(seq_, nn.Sequential) and len(seq_) == 3):
        return False
    dw, act, pw = seq_
    return (type(dw) is conv_type and type(pw) is conv_type and type(act) is nn.GELU and act.approximate == "none"
            and dw.groups == dw.in_channels == dw.out_channels == c and set(dw.kernel_size) == {3}
            and set(dw.padding) == {1} and set(dw.dilation) == {1} and set(dw.stride) == {1}
            and dw.padding_mode == "zeros" and set(pw.kernel_size) == {1} and pw.groups == 1
            and pw.in_channels == pw.out_channels == c and set(pw.stride) == {1} and set(pw.padding) == {0})


def _branch_mask_ext(mod: GHPA, name: str, kind: str, h: int, w: int) -> Tensor | None:
    """:func:`_branch_mask` by the fused kernels (resize, depth-wise conv) and one GEMM, or None where they
    do not apply. The masks are tiny and parameter-only, so their cost in training is per-op overhead: the
    module's own convs go through oneDNN (or the slow 1-D path) at a fixed cost per call, forward and backward.
    The 1-D depth-wise conv of the zx / zy branches runs as a 3 x 3 one on a 1-row map, its kernel in the middle
    row (the other rows only ever meet the zero padding)."""
    p = getattr(mod, f"params_{name}")
    convs = getattr(mod, f"conv_{name}")
    c = mod.chunk
    if not _is_mask_conv(convs, c, nn.Conv2d if kind == "xy" else nn.Conv1d) or any(
            t.dtype != p.dtype for t in convs.parameters()):
        return None
    dw, _, pw = convs
    if kind == "xy":
        src, wk = p.contiguous(memory_format=CL), dw.weight
    else:
        src, wk = p, F.pad(dw.weight.view(c, 1, 1, 3), (0, 0, 1, 1))
    if _kernels(src) is None:
        return None
    if kind == "xy":
        t = _up(src, size=(h, w))
    else:
        n = h if kind == "zx" else w
        t = _up(src, size=(c, n)).view(1, c, 1, n).contiguous(memory_format=CL)
    if torch.is_grad_enabled() and (t.requires_grad or wk.requires_grad):
        t = _DepthwiseConv.apply(t, wk, dw.bias, 1)
    else:
        t = _dw_conv(t, wk, dw.bias, 1)
    t = F.linear(F.gelu(t).permute(0, 2, 3, 1), pw.weight.view(c, c), pw.bias).permute(0, 3, 1, 2)
    return t.reshape(1, c, h, 1) if kind == "zx" else t


def _memory_format(x: Tensor) -> torch.memory_format:
    return CL if (x.dim() == 4 and x.is_contiguous(memory_format=CL) and not x.is_contiguous()) else \
        torch.contiguous_format


class _SplitChannels(torch.autograd.Function):
    """``torch.split(x, sizes, dim=1)`` returning dense tensors, with a one-``cat`` backward.

    Autograd's own slice backward writes every chunk's gradient into a zero-filled full-size
    tensor (in NCHW) and sums them: n fills + n adds + layout changes. This does one ``cat``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:  # type: ignore[override]
        fmt = _memory_format(x)
        ctx.sizes = sizes
        return tuple(p.contiguous(memory_format=fmt) for p in torch.split(x, sizes, dim=1))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor):  # type: ignore[override]
        ref = next(g for g in grads if g is not None)
        parts = [g if g is not None else ref.new_zeros(ref.shape[0], s, *ref.shape[2:])
                 for g, s in zip(grads, ctx.sizes)]
        return torch.cat(parts, dim=1), None


class _CatChannels(torch.autograd.Function):
    """``torch.cat(xs, dim=1)`` whose backward hands each input a dense (not sliced) gradient."""

    @staticmethod
    def forward(ctx: Any, *xs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.sizes = tuple(x.shape[1] for x in xs)
        ctx.fmt = _memory_format(xs[0])
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx: Any, g: Tensor):  # type: ignore[override]
        return tuple(p.contiguous(memory_format=ctx.fmt) for p in torch.split(g, ctx.sizes, dim=1))


def cat_channels(xs: list[Tensor]) -> Tensor:
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return _CatChannels.apply(*xs)
    return torch.cat(xs, dim=1)


def split_channels(x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
    if torch.is_grad_enabled() and x.requires_grad:
        return _SplitChannels.apply(x, tuple(sizes))
    return tuple(torch.split(x, sizes, dim=1))


class _GroupInputs(torch.autograd.Function):
    """GAB's group inputs ``cat(xh_j, xl_j[, mask])`` for every group j, as dense tensors.

    The backward gathers the pieces with three ``cat``s / one sum instead of autograd's
    per-slice zero-filled full-size buffers.
    """

    @staticmethod
    def forward(ctx: Any, xh: Tensor, xl: Tensor, mask: Tensor | None, n: int):  # type: ignore[override]
        a = xl.shape[1] // n
        ctx.a, ctx.n, ctx.has_mask = a, n, mask is not None
        outs = []
        for j in range(n):
            parts = [xh[:, j * a:(j + 1) * a], xl[:, j * a:(j + 1) * a]] + ([mask] if mask is not None else [])
            outs.append(torch.cat(parts, dim=1))
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor):  # type: ignore[override]
        a, n = ctx.a, ctx.n
        gs = [g for g in grads]
        gxh = torch.cat([g[:, :a] for g in gs], dim=1)
        gxl = torch.cat([g[:, a:2 * a] for g in gs], dim=1)
        gm = None
        if ctx.has_mask:
            gm = gs[0][:, 2 * a:].clone()
            for g in gs[1:]:
                gm += g[:, 2 * a:]
        return gxh, gxl, gm, None


def group_inputs(xh: Tensor, xl: Tensor, mask: Tensor | None, n: int) -> tuple[Tensor, ...]:
    needs = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xh, xl, mask))
    if needs:
        return _GroupInputs.apply(xh, xl, mask, n)
    a = xl.shape[1] // n
    return tuple(torch.cat([xh[:, j * a:(j + 1) * a], xl[:, j * a:(j + 1) * a]] + ([mask] if mask is not None else []),
                           dim=1) for j in range(n))


def ghpa_forward(mod: GHPA, x: Tensor, cache: _MaskCache | None) -> Tensor:
    x = layer_norm_cf(x, mod.norm1)
    h, w = x.shape[2], x.shape[3]
    c = mod.chunk
    chunks = split_channels(x, (c,) * len(mod.branches))
    outs = []
    for xi, b, n in zip(chunks, mod.branches, mod.names):
        if b in ("xy", "zx", "zy"):
            m = cache.get(mod, n, b, h, w) if cache is not None else _branch_mask(mod, n, b, h, w)
            xi = xi * m.to(xi.dtype)
        elif b == "dw":
            xi = seq(getattr(mod, n), xi)
        outs.append(xi)
    x = layer_norm_cf(cat_channels(outs), mod.norm2)
    return seq(mod.ldw, x)


class _LayerNormMulti(torch.autograd.Function):
    """LayerNorm groups over a virtual concatenation of channel ranges of several maps (fused kernels
    ``ln_multi`` / ``ln_multi_backward``): no concatenation is written either way, and the input
    gradient lands directly in dense per-source gradients."""

    @staticmethod
    def forward(ctx: Any, seg: list[int], sizes: list[int], eps: float, w: Tensor, b: Tensor,  # type: ignore[override]
                *srcs: Tensor) -> tuple[Tensor, ...]:
        res = _fastops.ops().ln_multi(list(srcs), seg, sizes, w, b, eps, True)
        n = len(sizes)
        ctx.save_for_backward(w, *srcs, *res[n:])
        ctx.seg, ctx.sizes, ctx.nsrc = seg, sizes, len(srcs)
        return tuple(res[:n])

    @staticmethod
    def backward(ctx: Any, *gys: Tensor | None):  # type: ignore[override]
        saved = ctx.saved_tensors
        w, srcs, stats = saved[0], list(saved[1:1 + ctx.nsrc]), saved[1 + ctx.nsrc:]
        n = len(ctx.sizes)
        ref = srcs[0]
        grads = [g.contiguous(memory_format=CL) if g is not None else
                 ref.new_zeros(ref.shape[0], s, ref.shape[2], ref.shape[3]).contiguous(memory_format=CL)
                 for g, s in zip(gys, ctx.sizes)]
        res = _fastops.ops().ln_multi_backward(srcs, ctx.seg, ctx.sizes, w, list(stats[:n]), list(stats[n:]), grads)
        return (None, None, None, res[-2], res[-1], *res[:-2])


def _gab_ln_multi(mod: GAB, xh: Tensor, xl: Tensor, mask: Tensor | None) -> Tensor | None:
    """GAB with the fused ``ln_multi`` kernels: the group inputs are normalised straight from
    xh / xl / mask and the tail LayerNorm straight from the group outputs, so neither concatenation
    is written (nor, in training, split again in the backward). None where the kernels do not apply."""
    n = len(mod.dilations)
    lns = [getattr(mod, f"g{j}")[0] for j in range(n)]
    tail = mod.tail_conv[0]
    srcs = [xh, xl] + ([mask] if mask is not None else [])
    if xl.shape[1] % n or any(t.dtype != xl.dtype for t in srcs) or any(
            ln.weight.dtype != xl.dtype or ln.eps != lns[0].eps for ln in lns) or tail.weight.dtype != xl.dtype:
        return None
    ext = _kernels(*srcs)
    if ext is None:
        return None
    grad = torch.is_grad_enabled() and (any(t.requires_grad for t in srcs) or any(
        p.requires_grad for ln in [*lns, tail] for p in (ln.weight, ln.bias)))
    a = xl.shape[1] // n
    seg: list[int] = []
    for j in range(n):
        seg += [0, j * a, a, 1, j * a, a] + ([2, 0, mask.shape[1]] if mask is not None else [])
    gs = 2 * a + (mask.shape[1] if mask is not None else 0)
    w = torch.cat([ln.weight for ln in lns])
    b = torch.cat([ln.bias for ln in lns])
    if grad:
        groups = _LayerNormMulti.apply(seg, [gs] * n, lns[0].eps, w, b, *srcs)
    else:
        groups = ext.ln_multi(srcs, seg, [gs] * n, w, b, lns[0].eps, False)
    outs = [conv(getattr(mod, f"g{j}")[1], z).contiguous(memory_format=CL) for j, z in enumerate(groups)]
    sizes = [o.shape[1] for o in outs]
    tseg = [v for k, c in enumerate(sizes) for v in (k, 0, c)]
    proj = mod.tail_conv[1]
    if grad:
        t = _LayerNormMulti.apply(tseg, [sum(sizes)], tail.eps, tail.weight, tail.bias, *outs)[0]
        return conv(proj, t)
    if (isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.groups == 1 and proj.stride == (1, 1)
            and proj.padding == (0, 0) and proj.weight.dtype == xl.dtype):  # LN and the 1x1 conv in one pass
        return ext.ln_multi_proj(outs, tseg, tail.weight, tail.bias, tail.eps, proj.weight, proj.bias)
    return conv(proj, ext.ln_multi(outs, tseg, [sum(sizes)], tail.weight, tail.bias, tail.eps, False)[0])


def gab_forward(mod: GAB, xh: Tensor, xl: Tensor, mask: Tensor | None) -> Tensor:
    xh = _up(conv(mod.pre_project, xh), size=(xl.shape[2], xl.shape[3]))
    fused = _gab_ln_multi(mod, xh, xl, mask)
    if fused is not None:
        return fused
    n = len(mod.dilations)
    groups = group_inputs(xh, xl, mask if mod.use_mask else None, n)
    outs = []
    for j, gin in enumerate(groups):
        g = getattr(mod, f"g{j}")
        gn = layer_norm_cf(gin, g[0])
        outs.append(conv(g[1], gn.to(gin.dtype)))
    t = layer_norm_cf(cat_channels(outs), mod.tail_conv[0])
    return conv(mod.tail_conv[1], t.to(outs[0].dtype))


def egeunet_forward(model: EGEUNet, x: Tensor, cache: _MaskCache | None = None, side_outputs: bool = True,
                    channels_last: bool = True) -> SegOutput:
    """``EGEUNet.forward`` (every configuration) re-expressed with the fast primitives above."""
    cfg = model.config
    if x.shape[2] % 32 or x.shape[3] % 32:
        raise ValueError(f"EGE-UNet input sides must be multiples of 32, got {tuple(x.shape[2:])}")
    if channels_last:
        x = x.contiguous(memory_format=CL)

    def stage(s: nn.Sequential, t: Tensor) -> Tensor:
        m = s[0]
        return ghpa_forward(m, t, cache) if isinstance(m, GHPA) else conv(m, t)

    t1 = group_norm_pool(model.ebn1, stage(model.encoder1, x), inplace=True, gelu=True)
    t2 = group_norm_pool(model.ebn2, stage(model.encoder2, t1), inplace=True, gelu=True)
    t3 = group_norm_pool(model.ebn3, stage(model.encoder3, t2), inplace=True, gelu=True)
    t4 = group_norm_pool(model.ebn4, stage(model.encoder4, t3), inplace=True, gelu=True)
    t5 = group_norm_pool(model.ebn5, stage(model.encoder5, t4), inplace=True, gelu=True)
    t6 = F.gelu(stage(model.encoder6, t5))
    skips = (t1, t2, t3, t4, t5)
    masks: list[Tensor] = []
    xh = t6
    out = t6
    for s in range(5):  # decoder stage s+1, GAB k = 5 - s, skip t_k (as EGEUNet.forward)
        k = 5 - s
        d = group_norm(getattr(model, f"dbn{s + 1}"), stage(getattr(model, f"decoder{s + 1}"), out))
        d = F.gelu(d if s == 0 else _up(d, scale=2))
        mask = conv(getattr(model, f"gt_conv{s + 1}")[0], d) if cfg.has_heads else None
        if mask is not None:
            masks.append(mask)
        if cfg.active_gabs[k - 1]:
            bridged = gab_forward(getattr(model, f"GAB{k}"), xh, skips[k - 1], mask if cfg.gab_uses_mask else None)
        else:
            bridged = skips[k - 1]
        xh = bridged
        out = d + bridged
    logits = _up(conv(model.final, out), scale=2).contiguous()
    if not cfg.deep_supervision or not side_outputs:
        return SegOutput(logits, ())
    size = (x.shape[2], x.shape[3])
    return SegOutput(logits, tuple(up_map(m.contiguous(), size) for m in masks))


# ------------------------------------------------------------------------------- worker threads
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child inherits the pools but not their threads: start afresh there."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _worker_init() -> None:
    torch.get_num_threads()  # run ATen's lazy per-thread init first, so it cannot undo the next line
    torch.set_num_threads(1)


def worker_pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of ``n`` threads, each running ATen single-threaded (intra-op threads 1)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            keep = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix=f"egeunet-fast{n}", initializer=_worker_init)
            barrier = threading.Barrier(n)
            list(pool.map(lambda _: barrier.wait(), range(n)))  # start all n threads now
            torch.set_num_threads(keep)  # set_num_threads(1) in a worker also set the process default
            _POOLS[n] = pool
    return pool


def _outputs(o: Any) -> tuple[Tensor, ...]:
    o = as_seg_output(o)
    return (o.logits, *o.aux)


class _ParallelChunks(torch.autograd.Function):
    """Run ``fn`` on batch chunks in worker threads, forward and backward.

    The workers build their own graphs (grad mode is thread-local) and, in backward, compute the
    parameter gradients of their chunk with ``torch.autograd.grad``; the chunk gradients are summed
    in chunk order, so the result is deterministic. No gradient flows to the input images.
    """

    @staticmethod
    def forward(ctx: Any, plan: tuple, *params: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        fn, chunks, pool = plan

        def run(xc: Tensor) -> tuple[Tensor, ...]:
            with torch.enable_grad():
                return _outputs(fn(xc))

        outs = list(pool.map(run, chunks))
        ctx.outs, ctx.params, ctx.pool = outs, params, pool
        ctx.sizes = [c.shape[0] for c in chunks]
        return tuple(torch.cat([o[i].detach() for o in outs]) for i in range(len(outs[0])))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None):  # type: ignore[override]
        outs, params = ctx.outs, ctx.params
        split = [g.split(ctx.sizes) if g is not None else None for g in grads]

        def run(k: int) -> tuple[Tensor | None, ...]:
            ys, gs = [], []
            for i, y in enumerate(outs[k]):
                if split[i] is not None and y.requires_grad:
                    ys.append(y)
                    gs.append(split[i][k].contiguous())
            if not ys:
                return (None,) * len(params)
            return torch.autograd.grad(ys, params, gs, allow_unused=True)

        per_chunk = list(ctx.pool.map(run, range(len(outs))))
        del ctx.outs
        total: list[Tensor | None] = []
        for gp in zip(*per_chunk):
            acc = None
            for g in gp:
                if g is not None:
                    acc = g.clone() if acc is None else acc.add_(g)
            total.append(acc)
        return (None, *total)


def _has_batch_coupling(model: nn.Module) -> bool:
    """BatchNorm in train mode couples the samples of a batch: chunking would change the numbers."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


class FastModel(nn.Module):
    """Fast forward over a wrapped model; shares its parameters (and their names).

    The wrapper adopts the wrapped model's sub-modules, so ``parameters()``, ``named_parameters()``,
    ``state_dict()`` and ``load_state_dict()`` are exactly the plain model's (checkpoints are
    interchangeable, optimizers can be built from either).
    """

    def __init__(self, model: nn.Module, mode: str = "train", *, workers: int | None = None,
                 micro_batch: int | None = None, side_outputs: bool | None = None,
                 cache_masks: bool | None = None, channels_last: bool = True) -> None:
        super().__init__()
        if mode not in ("train", "infer"):
            raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
        if isinstance(model, FastModel):
            model = model.inner
        self.__dict__["inner"] = model  # not registered: its sub-modules are adopted below
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.mode = mode
        self.is_egeunet = isinstance(model, EGEUNet)
        self._workers = max(1, int(workers)) if workers is not None else None
        self.micro_batch = micro_batch
        self.side_outputs = (mode == "train") if side_outputs is None else bool(side_outputs)
        self.channels_last = channels_last
        self.cache_masks = (mode == "infer") if cache_masks is None else bool(cache_masks)
        self._cache = _MaskCache()
        self.config = getattr(model, "config", None)
        weights = tuple(getattr(model, "loss_weights", (1.0,)))
        if self.is_egeunet and not self.side_outputs:
            weights = weights[:1]
        self.loss_weights = weights
        self.train(model.training)

    @property
    def workers(self) -> int:
        """Worker threads for a CPU batch: as constructed, else ``torch.get_num_threads()`` now."""
        return self._workers if self._workers is not None else max(1, torch.get_num_threads())

    # -- one chunk, in the calling thread ----------------------------------------------------
    def forward_chunk(self, x: Tensor) -> SegOutput:
        if self.is_egeunet:
            cache = self._cache if (self.cache_masks and not torch.is_grad_enabled()) else None
            return egeunet_forward(self.inner, x, cache, self.side_outputs, self.channels_last)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=CL)
        out = as_seg_output(self.inner(x))
        return SegOutput(out.logits.contiguous(), tuple(a.contiguous() for a in out.aux))

    def _chunks(self, x: Tensor, training: bool) -> list[Tensor]:
        b = x.shape[0]
        if x.device.type != "cpu" or b <= 1 or (not self.is_egeunet and _has_batch_coupling(self.inner)):
            return [x]
        if training:
            if self.workers <= 1:
                return [x]
            n = min(self.workers, b)
        else:
            mb = self.micro_batch
            if mb is None:  # one chunk per worker, of at most ~16 images of 256 x 256
                mb = max(1, round(16 * 256 * 256 / (x.shape[-1] * x.shape[-2])))
            n = max(min(self.workers, b), math.ceil(b / mb))
        if n <= 1:
            return [x]
        return list(torch.tensor_split(x, n, dim=0))

    def forward(self, x: Tensor) -> SegOutput:
        # walking the module tree for the parameters is not free: do it only when a graph is built
        params = [p for p in self.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
        training = bool(params)
        chunks = self._chunks(x, training)
        if len(chunks) == 1:
            return self.forward_chunk(x)
        pool = worker_pool(self.workers) if self.workers > 1 else None
        if training:
            outs = _ParallelChunks.apply((self.forward_chunk, chunks, pool), *params)
            return SegOutput(outs[0], tuple(outs[1:]))
        if pool is None:
            parts = [_outputs(self.forward_chunk(c)) for c in chunks]
        else:  # grad / inference mode are thread-local: carry the caller's into the workers
            grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

            def run(c: Tensor) -> tuple[Tensor, ...]:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    return _outputs(self.forward_chunk(c))

            parts = list(pool.map(run, chunks))
        return SegOutput(torch.cat([p[0] for p in parts]),
                         tuple(torch.cat([p[i] for p in parts]) for i in range(1, len(parts[0]))))

    def load_state_dict(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._cache.clear()
        return super().load_state_dict(*args, **kwargs)


FastEGEUNet = FastModel  # the EGE-UNet fast path is FastModel over an EGEUNet


def make_fast(model: nn.Module, mode: str = "train", *, workers: int | None = None,
              micro_batch: int | None = None, side_outputs: bool | None = None,
              cache_masks: bool | None = None, channels_last: bool = True, compile: bool = False) -> nn.Module:
    """The default fast path: a module sharing ``model``'s parameters, returning the same ``SegOutput``.

    Args:
        mode: ``"train"`` (side outputs kept, gradients through the worker threads) or ``"infer"``
            (side outputs skipped -- ``loss_weights`` then has one entry -- and GHPA masks cached).
        workers: worker threads for inter-op data parallelism over a CPU batch, each running ATen
            with one intra-op thread (default: ``torch.get_num_threads()`` at call time, so a
            process given 1 thread -- a suite worker -- runs everything in the calling thread;
            ``1`` forces that; see the module notes).
        micro_batch: inference chunk size (default: one chunk per worker, at most ~16 images of 256x256).
        side_outputs: override the mode's default.
        compile: ``torch.compile`` the per-chunk forward (forces ``workers=1``; masks not cached);
            measured not to pay on CPU (see the module notes).
    """
    fast = FastModel(model, mode, workers=1 if compile else workers, micro_batch=micro_batch,
                     side_outputs=side_outputs, cache_masks=False if compile else cache_masks,
                     channels_last=channels_last)
    if compile:  # compile the per-chunk forward (the chunk loop stays in Python: one graph per chunk shape)
        fast.forward_chunk = torch.compile(fast.forward_chunk)  # type: ignore[method-assign]
    return fast
