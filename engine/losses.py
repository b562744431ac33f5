"""Losses of the official recipe (docs/protocol.md §4): BceDice and the deep-supervised GT-BceDice.

Every model returns logits (:class:`zoo.contract.SegOutput`); the sigmoid is applied here.

BCE is computed with :func:`torch.nn.functional.binary_cross_entropy_with_logits` (mean over all
elements of the batch). It equals the official ``nn.BCELoss()(sigmoid(x), t)`` except where the
official one saturates: ``BCELoss`` clamps ``log`` at -100, and in float32 ``sigmoid(x)`` rounds to
exactly 1 (or to a denormal / 0) for ``|x|`` beyond roughly 17 (88), so the official per-element
loss caps at 100 / jumps while the logits form stays exact (``softplus``). For ``|x| <= 15`` the two
agree to 1e-4 relative in float32 (the probability form loses precision as ``1 - p`` nears float32
resolution) and to 1e-9 in float64 (tested). The logits form is used because it is numerically stable and
its gradient never vanishes through a saturated sigmoid.

Dice (per sample, smooth 1): ``1 - mean_b (2 * sum(p*t) + 1) / (sum(p) + sum(t) + 1)``.
``BceDice = wb * BCE + wd * Dice`` with ``wb = wd = 1`` officially. Targets may be soft (the
official pipeline resizes masks bilinearly); both terms accept values in [0, 1].

Half-precision logits (AMP) are upcast, so the loss is always computed in float32 or wider.

``fused=True`` (what the training engine passes when the run takes the fast path; default False)
runs the same formula on the CPU as one autograd node with the fast path's kernels
(``kernels.fastops``, when built): ATen's sigmoid and softplus, one pass for the per-image sums (in
double) and one pass for the logit gradient, instead of ~15 full-size ops each way (same value to
round-off; tested). The caller's switch decides, so a plain (``--no-fast``) run never touches C++.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.contract import SegOutput, as_seg_output
from kernels import fastops as _fastops

__all__ = ["BceDice", "bce_dice", "model_loss"]


def _as_nchw(x: Tensor) -> Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def bce_dice(logits: Tensor, target: Tensor, *, wb: float = 1.0, wd: float = 1.0, smooth: float = 1.0,
             fused: bool = False) -> Tensor:
    """``wb * BCE + wd * Dice`` of ``logits`` (B x 1 x H x W or B x H x W) against ``target`` in [0, 1].

    ``fused``: on the CPU, use the fused kernel where it is built (see the module docstring).
    """
    logits = _as_nchw(logits)
    if logits.dtype in (torch.float16, torch.bfloat16):  # AMP outputs: compute the loss in float32
        logits = logits.float()
    target = _as_nchw(target).to(logits.dtype)
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if fused and logits.device.type == "cpu" and not target.requires_grad and logits.numel() > 0:
        ext = _fastops.ops()
        if ext is not None:
            return _BceDiceFused.apply(logits.contiguous(), target.contiguous(), float(wb), float(wd), float(smooth))
    bce = F.binary_cross_entropy_with_logits(logits, target)  # mean over all B*C*H*W elements
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice_coef = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    dice = 1.0 - dice_coef.mean()
    return wb * bce + wd * dice


class _BceDiceFused(torch.autograd.Function):
    """:func:`bce_dice` as one node with the fused kernels (CPU, float32/64, contiguous maps)."""

    @staticmethod
    def forward(ctx, z: Tensor, t: Tensor, wb: float, wd: float, smooth: float) -> Tensor:  # type: ignore[override]
        ext = _fastops.ops()
        p = torch.sigmoid(z)
        sums = ext.bce_dice_sums(z, t, p, F.softplus(z))  # B x 4, double
        bsz, n = z.shape[0], z.numel()
        denom = sums[:, 2] + sums[:, 3] + smooth
        dcoef = (2.0 * sums[:, 1] + smooth) / denom
        ctx.save_for_backward(p, t)
        ctx.alpha = -wd / (bsz * denom)  # d Dice / d D_b, over (sum p + sum t + smooth)
        ctx.dcoef, ctx.a = dcoef, wb / n
        return (wb * sums[:, 0].sum() / n + wd * (1.0 - dcoef.mean())).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        p, t = ctx.saved_tensors
        gv = float(g)
        grad = _fastops.ops().bce_dice_grad(p, t, ctx.alpha * gv, ctx.dcoef, ctx.a * gv)
        return grad, None, None, None, None


class BceDice(nn.Module):
    """The official BceDice loss (docs/protocol.md §4) on logits; see the module docstring."""

    def __init__(self, wb: float = 1.0, wd: float = 1.0, smooth: float = 1.0, fused: bool = False) -> None:
        super().__init__()
        self.wb, self.wd, self.smooth, self.fused = float(wb), float(wd), float(smooth), bool(fused)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return bce_dice(logits, target, wb=self.wb, wd=self.wd, smooth=self.smooth, fused=self.fused)


def model_loss(output: SegOutput | Tensor | tuple, target: Tensor, weights: Sequence[float],
               criterion: nn.Module | None = None, *, fused: bool = False) -> Tensor:
    """``sum_i weights[i] * BceDice(map_i, target)`` over ``(output.logits, *output.aux)``.

    ``weights`` is ``model.loss_weights`` (EGE-UNet: ``(1.0, 0.1, 0.2, 0.3, 0.4, 0.5)``, i.e. the
    GT-BceDice of docs/protocol.md §4 with the final map first and the side outputs deepest first). Maps with
    weight 0 are skipped (so a non-finite side output with zero weight cannot poison the sum).
    ``fused`` selects the fused CPU kernel of the default criterion (ignored with ``criterion``).
    """
    out = as_seg_output(output)
    maps = (out.logits, *out.aux)
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(maps):
        raise ValueError(f"{len(weights)} loss weights for {len(maps)} output maps (logits + {len(out.aux)} aux)")
    crit = criterion if criterion is not None else BceDice(fused=fused)
    total: Tensor | None = None
    for w, m in zip(weights, maps):
        if w == 0.0:
            continue
        term = w * crit(m, target)
        total = term if total is None else total + term
    if total is None:  # all weights zero: a zero that still depends on the graph
        total = out.logits.float().sum() * 0.0
    return total
