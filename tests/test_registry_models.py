"""One parametrised contract check over every registered model (EGE-UNet variants and baselines).

Per name: output contract at 256 x 256 (heavy models: 64 x 64) and at the entry's non-square
size, finite outputs, a gradient reaching every parameter, the exact parameter count, the
legacy-thop MACs at 1 x 3 x 256 x 256 (when the entry records them) and deterministic
construction under a fixed seed. Kept light: forward passes without autograd where possible,
gradients at 64 x 64.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from zoo.contract import SegOutput, loss_weights_of
from zoo.registry import UnknownModelError, create_model, get_entry, list_models

ALL_MODELS = list_models()
BASELINES = ("unet32", "unext", "unext_s", "malunet", "malunet_single", "transfuse_s", "transfuse_lite",
             "transfuse_lite_t")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255.0


def _check_output(model: torch.nn.Module, out: object, b: int, h: int, w: int) -> SegOutput:
    assert isinstance(out, SegOutput), f"forward must return SegOutput, got {type(out).__name__}"
    assert tuple(out.logits.shape) == (b, 1, h, w)
    assert isinstance(out.aux, tuple)
    for a in out.aux:
        assert tuple(a.shape) == (b, 1, h, w)
    for t in (out.logits, *out.aux):
        assert torch.isfinite(t).all()
    weights = loss_weights_of(model)
    assert len(weights) == 1 + len(out.aux)
    assert all(wt >= 0 for wt in weights)
    return out


def test_baselines_are_registered() -> None:
    missing = [n for n in BASELINES if n not in ALL_MODELS]
    assert not missing, f"baselines not registered: {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_contract(name: str) -> None:
    entry = get_entry(name)
    model = create_model(name).eval()
    side = 64 if entry.heavy else 256
    with torch.no_grad():
        _check_output(model, model(_image(1, side, side)), 1, side, side)
        h, w = entry.non_square
        assert h != w and h % entry.min_side == 0 and w % entry.min_side == 0
        _check_output(model, model(_image(1, h, w)), 1, h, w)
        model.train()  # training-mode path (dropout, batch statistics) at the non-square size
        _check_output(model, model(_image(2, h, w)), 2, h, w)


def _biases_cancelled_by_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> tuple[set[str], object]:
    """Run ``model(x)`` and name the conv biases whose output feeds a BatchNorm directly.

    In training mode BatchNorm subtracts the per-channel batch mean, so such a bias gets an
    exactly-zero gradient by construction (a property of the architecture, not a bug).
    """
    produced: dict[int, str] = {}
    cancelled: set[str] = set()
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.conv._ConvNd) and mod.bias is not None:
            handles.append(mod.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            handles.append(mod.register_forward_pre_hook(
                lambda m, i: cancelled.add(produced[id(i[0])]) if id(i[0]) in produced else None))
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return {f"{n}.bias" for n in cancelled}, out


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = create_model(name).train()
    exempt, out = _biases_cancelled_by_batchnorm(model, _image(2, 64, 64))
    target = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    maps = (out.logits, *out.aux)
    loss = sum(wt * F.binary_cross_entropy_with_logits(m, target) for wt, m in zip(loss_weights_of(model), maps))
    loss.backward()
    unused = set(getattr(model, "unused_parameters", ()))
    no_grad = [n for n, p in model.named_parameters() if p.grad is None and n not in unused]
    assert not no_grad, f"{name}: no gradient reaches {no_grad}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad}"
    zero = [n for n, p in model.named_parameters()
            if p.grad is not None and n not in exempt and not torch.count_nonzero(p.grad)]
    assert not zero, f"{name}: all-zero gradients in {zero}"
    for n in unused:  # declared unused parameters really are unused
        assert dict(model.named_parameters())[n].grad is None


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_is_exact(name: str) -> None:
    entry = get_entry(name)
    assert entry.params is not None, f"{name}: registry entry records no parameter count"
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == entry.params


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if get_entry(n).thop_macs is not None])
def test_thop_macs_match_registry(name: str) -> None:
    thop = pytest.importorskip("thop")
    entry = get_entry(name)
    model = create_model(name).eval()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = thop.profile(model, inputs=(_image(1, 256, 256),), verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    expected = entry.thop_macs
    if entry.macs_rel_tol == 0:
        assert int(macs) == expected
    else:
        assert abs(macs - expected) <= entry.macs_rel_tol * expected, (
            f"{name}: thop {macs:,.0f} vs registry {expected:,} (tol {entry.macs_rel_tol})")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_construction_is_deterministic(name: str) -> None:
    x = _image(1, 64, 64)
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        model = create_model(name).eval()
        with torch.no_grad():
            out = model(x)
        outs.append((out.logits, *out.aux))
    assert len(outs[0]) == len(outs[1])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownModelError) as err:
        create_model("no_such_model")
    msg = str(err.value)
    assert "no_such_model" in msg
    for n in ("egeunet", "unet32", "malunet", "transfuse_lite"):
        assert n in msg
    with pytest.raises(KeyError):  # UnknownModelError is a KeyError
        get_entry("no_such_model")
