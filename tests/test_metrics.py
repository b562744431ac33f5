"""Metrics (docs/protocol.md §5) and losses (§4): hand-computed cases, the published fixtures, torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.contract import SegOutput
from zoo.registry import create_model
from engine.losses import BceDice, model_loss
from engine.metrics import (
    SUMMARY_KEYS, confusion_counts, isic_thresholded_jaccard, per_image_metrics, pooled_metrics, summarize,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- counts and hand-computed cases
def test_confusion_counts_hand_case():
    pred = torch.tensor([[[0.9, 0.5], [0.49, 0.1]], [[0.0, 0.0], [0.0, 0.0]]])  # 0.5 counts as positive
    gt = torch.tensor([[[1.0, 0.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])  # gt >= 0.5 is positive
    c = confusion_counts(pred.unsqueeze(1), gt.unsqueeze(1))
    assert c.dtype == np.int64 and c.shape == (2, 4)
    # image 0: (0.9,1)=tp, (0.5,0)=fp, (0.49,1)=fn, (0.1,0.5)=fn
    assert c.tolist() == [[0, 1, 2, 1], [4, 0, 0, 0]]
    assert confusion_counts(pred.numpy(), gt.numpy()).tolist() == c.tolist()  # numpy input, N x H x W


def test_hand_computed_scores_and_empty_rule():
    counts = np.array([[90, 2, 3, 5],     # iou 5/10, dsc 10/15
                       [100, 0, 0, 0],    # both empty -> 1.0
                       [96, 4, 0, 0],     # empty gt, false positives -> 0
                       [10, 0, 0, 90]])   # perfect
    per = per_image_metrics(counts)
    np.testing.assert_allclose(per["iou"], [0.5, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(per["dsc"], [2 / 3, 1.0, 0.0, 1.0])
    pooled = pooled_metrics(counts)
    tn, fp, fn, tp = 296, 6, 3, 95
    assert pooled["miou"] == pytest.approx(tp / (tp + fp + fn))
    assert pooled["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert pooled["acc"] == pytest.approx((tn + tp) / 400)
    assert pooled["sen"] == pytest.approx(tp / (tp + fn))
    assert pooled["spe"] == pytest.approx(tn / (tn + fp))
    s = summarize(counts)
    assert tuple(s) == SUMMARY_KEYS
    assert s["per_image_iou_mean"] == pytest.approx(0.625)
    assert s["per_image_iou_std"] == pytest.approx(np.std([0.5, 1, 0, 1], ddof=1))  # sample std
    assert s["per_image_dsc_mean"] == pytest.approx((2 / 3 + 2) / 4)
    assert s["isic_tjaccard"] == pytest.approx((0 + 1 + 0 + 1) / 4)  # 0.5 < 0.65 -> 0
    assert isic_thresholded_jaccard([[0, 1, 1, 8]]) == pytest.approx(0.8)
    assert isic_thresholded_jaccard([[0, 0, 0, 0]]) == 1.0


def test_zero_denominators_give_zero():
    p = pooled_metrics([[0, 0, 0, 0]])
    assert p == {"miou": 0.0, "dsc": 0.0, "acc": 0.0, "sen": 0.0, "spe": 0.0}
    p = pooled_metrics([[10, 0, 0, 0]])  # no lesion anywhere, none predicted
    assert p["miou"] == 0.0 and p["sen"] == 0.0 and p["spe"] == 1.0 and p["acc"] == 1.0
    s = summarize([[5, 1, 1, 3]])
    assert s["per_image_dsc_std"] == 0.0 and s["per_image_iou_std"] == 0.0  # one image: std 0 (documented)
    with pytest.raises(ValueError):
        summarize(np.zeros((3, 3)))


# -------------------------------------------------------- docs/protocol.md §5.1 published fixtures
@pytest.mark.parametrize("tn,fp,fn,tp,expected", [
    (34_468_587, 998_791, 734_361, 6_396_661, (0.78682, 0.88069, 0.95931, 0.89702, 0.97184)),
    (38_912_813, 1_150_684, 1_659_403, 11_230_188, (0.79986, 0.88880, 0.94693, 0.87126, 0.97128)),
])
def test_protocol_pooled_fixtures(tn, fp, fn, tp, expected):
    # Split the published matrix over several "images": pooling must not care.
    parts = np.array([[tn, fp, fn, tp]], dtype=np.int64)
    split = np.stack([parts[0] // 3, parts[0] // 3, parts[0] - 2 * (parts[0] // 3)])
    for counts in (parts, split):
        p = pooled_metrics(counts)
        got = tuple(round(p[k], 5) for k in ("miou", "dsc", "acc", "sen", "spe"))
        assert got == expected


# -------------------------------------------------------- docs/protocol.md §5.2 toy example
def _toy_set():
    """A reconstruction of the §5.2 toy set (the original construction is not published).

    9 images: a 64x64 square lesion predicted shifted by (4, 4) px (IoU 3600/4592 = 0.78397);
    1 image: a 5x8 px lesion that is missed entirely (empty prediction).
    """
    size = 128
    gts, preds = [], []
    for _ in range(9):
        g = torch.zeros(size, size)
        g[32:96, 32:96] = 1
        p = torch.zeros(size, size)
        p[36:100, 36:100] = 1
        gts.append(g)
        preds.append(p)
    g = torch.zeros(size, size)
    g[10:15, 20:28] = 1
    gts.append(g)
    preds.append(torch.zeros(size, size))
    return torch.stack(preds)[:, None], torch.stack(gts)[:, None]


def test_protocol_toy_example():
    preds, gts = _toy_set()
    s = summarize(confusion_counts(preds, gts))
    assert round(s["pooled_miou"], 4) == 0.7832
    assert round(s["pooled_dsc"], 4) == 0.8784
    assert round(s["per_image_iou_mean"], 4) == 0.7056
    assert round(s["per_image_dsc_mean"], 4) == 0.7910
    assert round(s["isic_tjaccard"], 4) == 0.7056


# ---------------------------------------------------------------- against torchmetrics
def _random_masks(n=12, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 1, h, w, generator=g)
    # blobs of varying size so per-image scores differ; every image has some lesion pixels
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    target = torch.zeros(n, 1, h, w)
    for i in range(n):
        cy, cx, r = torch.randint(8, h - 8, (1,), generator=g), torch.randint(8, w - 8, (1,), generator=g), 3 + i
        target[i, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
        probs[i, 0] = 0.55 * probs[i, 0] + 0.45 * target[i, 0]  # in [0, 1], correlated with the target
    return probs, target


def test_against_torchmetrics():
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    probs, target = _random_masks()
    counts = confusion_counts(probs, target)
    s = summarize(counts)
    ti = target.long()
    # pooled: one confusion matrix over all pixels
    assert s["pooled_miou"] == pytest.approx(tmf.binary_jaccard_index(probs, ti).item(), abs=1e-6)
    assert s["pooled_dsc"] == pytest.approx(tmf.binary_f1_score(probs, ti).item(), abs=1e-6)
    assert s["pooled_acc"] == pytest.approx(tmf.binary_accuracy(probs, ti).item(), abs=1e-6)
    assert s["pooled_sen"] == pytest.approx(tmf.binary_recall(probs, ti).item(), abs=1e-6)
    assert s["pooled_spe"] == pytest.approx(tmf.binary_specificity(probs, ti).item(), abs=1e-6)
    # per image (sample-wise)
    stats = tmf.binary_stat_scores(probs.flatten(1), ti.flatten(1), multidim_average="samplewise")
    tp, fp, tn, fn = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    assert counts.tolist() == torch.stack([tn, fp, fn, tp], 1).tolist()
    dsc_tm = tmf.binary_f1_score(probs.flatten(1), ti.flatten(1), multidim_average="samplewise")
    per = per_image_metrics(counts)
    np.testing.assert_allclose(per["dsc"], dsc_tm.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(per["iou"], (tp / (tp + fp + fn)).double().numpy(), atol=1e-6)
    assert s["per_image_dsc_mean"] == pytest.approx(dsc_tm.double().mean().item(), abs=1e-6)
    assert s["per_image_dsc_std"] == pytest.approx(dsc_tm.double().std().item(), abs=1e-6)  # torch std: ddof 1


def test_metrics_do_not_depend_on_batching():
    probs, target = _random_masks(n=10)
    whole = confusion_counts(probs, target)
    chunks = np.concatenate([confusion_counts(probs[i:i + 3], target[i:i + 3]) for i in range(0, 10, 3)])
    assert whole.tolist() == chunks.tolist()


# -------------------------------------------------------- losses (docs/protocol.md §4)
def _reference_bce_dice(logits, target):
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy(p, target)  # the official nn.BCELoss on probabilities
    pf, tf = p.flatten(1), target.flatten(1)
    dice = 1 - ((2 * (pf * tf).sum(1) + 1) / (pf.sum(1) + tf.sum(1) + 1)).mean()
    return bce + dice


def test_bce_dice_matches_probability_form():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 1, 16, 16, generator=g) * 5).clamp(-15, 15)
    target = torch.rand(4, 1, 16, 16, generator=g)  # soft targets are allowed
    got = BceDice()(logits, target)
    # float32 probabilities lose precision near saturation (1 - sigmoid(15) ~ 3e-7): agree to 1e-4
    assert got.item() == pytest.approx(_reference_bce_dice(logits, target).item(), rel=1e-4)
    # in float64 the two forms agree to rounding everywhere the official log clamp is not reached
    got64 = BceDice()(logits.double(), target.double())
    assert got64.item() == pytest.approx(_reference_bce_dice(logits.double(), target.double()).item(), rel=1e-9)
    # hand case: logits 0 -> p = 0.5; target all ones, 1 x 1 x 2 x 2
    z = torch.zeros(1, 1, 2, 2)
    t = torch.ones(1, 1, 2, 2)
    expected = math.log(2) + 1 - (2 * 2 + 1) / (2 + 4 + 1)
    assert BceDice()(z, t).item() == pytest.approx(expected, rel=1e-6)
    assert BceDice()(z[:, 0], t[:, 0]).item() == pytest.approx(expected, rel=1e-6)  # B x H x W accepted


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_bce_dice_equals_the_formula(dtype, monkeypatch):
    """The one-node CPU loss (kernels.fastops kernels) against the plain ATen formula: value and gradient."""
    from kernels import fastops as _fastops
    from engine.losses import bce_dice

    if _fastops.ops() is None:
        pytest.skip("the fused kernels are not built here")
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(3, 1, 16, 20, generator=g, dtype=dtype) * 8)
    z[0, 0, 0, :4] = torch.tensor([-100.0, 100.0, 30.0, -30.0], dtype=dtype)  # saturated logits stay finite
    t = (torch.rand(3, 1, 16, 20, generator=g) > 0.5).to(dtype)
    t[1] = 0.3  # soft targets
    res = {}
    # the caller's flag decides; with the kernels switched off, fused=True falls back to the formula
    for key, fused, flag in (("plain", False, "1"), ("fused", True, "1"), ("off", True, "0")):
        monkeypatch.setenv("EGEUNET_FAST_EXT", flag)
        zz = z.clone().requires_grad_()
        loss = bce_dice(zz, t, wb=0.7, wd=1.3, fused=fused)
        loss.backward()
        res[key] = (loss.detach(), zz.grad, type(loss.grad_fn).__name__)
    assert "Fused" in res["fused"][2] and "Fused" not in res["plain"][2] and "Fused" not in res["off"][2]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert float(res["fused"][0]) == pytest.approx(float(res["plain"][0]), rel=tol)
    assert torch.allclose(res["fused"][1], res["plain"][1], rtol=tol, atol=tol * float(res["plain"][1].abs().max()))
    assert torch.isfinite(res["fused"][1]).all()
    assert torch.equal(res["off"][1], res["plain"][1])
    # model_loss passes its flag to every map's BceDice: one fused node per map, or none
    from engine import losses

    monkeypatch.setenv("EGEUNET_FAST_EXT", "1")
    calls, real_apply = [], losses._BceDiceFused.apply
    monkeypatch.setattr(losses._BceDiceFused, "apply", lambda *a: calls.append(1) or real_apply(*a))
    out = SegOutput(z.clone().requires_grad_(), (z.clone().requires_grad_(),))
    plain_total = model_loss(out, t, (1.0, 0.5)).detach()
    assert calls == []
    fused_total = model_loss(out, t, (1.0, 0.5), fused=True)
    assert calls == [1, 1]
    fused_total.backward()
    assert out.aux[0].grad is not None and torch.isfinite(out.logits.grad).all()
    assert fused_total.item() == pytest.approx(plain_total.item(), rel=tol)


def test_model_loss_weights_and_egeunet():
    g = torch.Generator().manual_seed(2)
    maps = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    out = SegOutput(maps[0], (maps[1], maps[2]))
    got = model_loss(out, target, (1.0, 0.5, 0.0))
    want = BceDice()(maps[0], target) + 0.5 * BceDice()(maps[1], target)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError):
        model_loss(out, target, (1.0,))
    model = create_model("egeunet")
    assert tuple(model.loss_weights) == (1.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    x = torch.rand(1, 3, 64, 64) * 255
    t = (torch.rand(1, 1, 64, 64) > 0.5).float()
    loss = model_loss(model(x), t, model.loss_weights)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
