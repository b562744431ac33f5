"""The fast path (egeunet.fast) and the plain reference (egeunet.reference) compute the same numbers.

Float64 checks pin the maths (fast path = EGEUNet = reference to ~1e-12 for every ablation switch);
float32 checks apply the 1e-4 budget, relative to the output / gradient scale (a random-init
EGE-UNet's logits reach |z| ~ 40, where float32 round-off alone is ~1e-4: the reference itself
differs from its float64 evaluation by that much). No test depends on timing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from zoo.contract import SegOutput
from egeunet.model import EGEUNet, EGEUNetConfig
from egeunet.reference import ReferenceEGEUNet
from egeunet import fast
from engine.optim import adamw
from kernels import fastops as _fastops
from egeunet.fast import make_fast

KERNELS = ["fused", "torch"]


@pytest.fixture(params=KERNELS)
def kernels(request, monkeypatch):
    """Run the test with the fused C++ kernels and again with the PyTorch ones."""
    if request.param == "fused":
        monkeypatch.setenv("EGEUNET_FAST_EXT", "1")
        if _fastops.ops() is None:
            pytest.skip("the fused kernels are not built here (see test_fused_kernels_build_where_a_compiler_is)")
    else:
        monkeypatch.setenv("EGEUNET_FAST_EXT", "0")
    return request.param

CL = torch.channels_last

CONFIGS = {
    "default": {},
    "no_ds": {"deep_supervision": False},
    "ds_unsup": {"deep_supervision": False, "unsupervised_heads": True},
    "gab_no_mask": {"gab_mask": False},
    "ghpa_ids": {"ghpa_branches": ("id", "zx", "id", "dw")},
    "only_xy": {"ghpa_branches": ("xy", "xy", "xy", "dw")},
    "ghpa_g2": {"ghpa_branches": ("xy", "dw")},
    "plain_conv": {"use_ghpa": False},
    "no_gab": {"bridge": False},
    "gab_stages": {"gab_stages": (True, False, True, False, True)},
    "gab_g1": {"gab_dilations": (1,)},
    "x0_5": {"widths": (4, 8, 12, 16, 24, 32)},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loss(out: SegOutput, y: torch.Tensor, weights) -> torch.Tensor:
    total = 0.0
    for w, m in zip(weights, (out.logits, *out.aux)):
        total = total + w * (F.binary_cross_entropy_with_logits(m, y) + torch.sigmoid(m).mean())
    return total


def _run(model, x, y):
    for p in model.parameters():
        p.grad = None
    out = model(x)
    _loss(out, y, model.loss_weights).backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    return out, grads


def _batch(size=64, b=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, 3, size, size, generator=g) * 255).to(dtype)  # image-like, as normalise() gives
    y = (torch.rand(b, 1, size, size, generator=g) > 0.5).to(dtype)
    return x, y


def _max_out_diff(a: SegOutput, b: SegOutput) -> float:
    assert len(a.aux) == len(b.aux)
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip((a.logits, *a.aux), (b.logits, *b.aux)))


# ------------------------------------------------------------------------------- the reference
def test_reference_matches_model_names_and_numbers():
    ref, model = ReferenceEGEUNet(), EGEUNet()
    assert sum(p.numel() for p in ref.parameters()) == 53_374
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    model.load_state_dict(ref.state_dict())  # both ways
    ref.load_state_dict(model.state_dict())
    x, _ = _batch()
    with torch.no_grad():
        a, b = ref(x), model(x)
    assert _max_out_diff(a, b) == 0.0
    assert ref.loss_weights == model.loss_weights and len(a.aux) == 5


# ------------------------------------------------------------------------- float64: the maths
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_equals_model_float64(name, kernels):
    torch.manual_seed(1)
    model = EGEUNet(EGEUNetConfig(**CONFIGS[name])).double()
    fm = make_fast(copy.deepcopy(model), "train")
    x, y = _batch(size=64, b=2, dtype=torch.float64)
    o_ref, g_ref = _run(model, x, y)
    o_fast, g_fast = _run(fm, x, y)
    assert isinstance(o_fast, SegOutput) and len(o_fast.aux) == len(o_ref.aux)
    scale = max(1.0, float(o_ref.logits.detach().abs().max()))
    assert _max_out_diff(o_ref, o_fast) <= 1e-10 * scale
    gscale = max(float(g.abs().max()) for g in g_ref.values())
    assert g_ref.keys() == g_fast.keys()
    for n in g_ref:
        assert float((g_ref[n] - g_fast[n]).abs().max()) <= 1e-10 * gscale, n
    with torch.no_grad():  # inference mode: final map only, same numbers
        o_inf = make_fast(model, "infer")(x)
    assert o_inf.aux == () and float((o_inf.logits - o_ref.logits.detach()).abs().max()) <= 1e-10 * scale


# ------------------------------------------------------------------------ float32: the budget
@pytest.mark.parametrize("name", ["default", "no_ds", "gab_no_mask", "ghpa_ids", "plain_conv"])
def test_fast_matches_reference_float32(name, kernels):
    torch.manual_seed(2)
    model = EGEUNet(EGEUNetConfig(**CONFIGS[name]))
    if name == "default":  # against the independent plain reference
        ref = ReferenceEGEUNet()
        ref.load_state_dict(model.state_dict())
    else:
        ref = copy.deepcopy(model)
    fm = make_fast(model, "train")
    x, y = _batch(size=64)
    o_ref, g_ref = _run(ref, x, y)
    o_fast, g_fast = _run(fm, x, y)
    scale = max(1.0, float(o_ref.logits.detach().abs().max()))
    assert _max_out_diff(o_ref, o_fast) <= 1e-4 * scale
    gscale = max(float(g.abs().max()) for g in g_ref.values())
    for n in g_ref:
        assert float((g_ref[n] - g_fast[n]).abs().max()) <= 1e-4 * gscale, n


def test_fast_float32_as_close_to_float64_as_reference(kernels):
    torch.manual_seed(3)
    ref = ReferenceEGEUNet()
    fm = make_fast(EGEUNet(), "infer")
    fm.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x, _ = _batch(size=128)
    with torch.no_grad():
        z64 = ref64(x.double()).logits
        e_ref = float((ref(x).logits.double() - z64).abs().max())
        e_fast = float((fm(x).logits.double() - z64).abs().max())
    assert e_fast <= 3 * e_ref + 1e-5


# ----------------------------------------------------------------------------- fast-path parts
def test_layer_norm_and_group_norm_primitives(kernels):
    from egeunet.layers import LayerNormCF

    g = torch.Generator().manual_seed(4)
    for c in (5, 9, 20, 36):  # formula path (< 16) and native path
        ln = LayerNormCF(c)
        with torch.no_grad():
            ln.weight.normal_(generator=g)
            ln.bias.normal_(generator=g)
        x = (torch.randn(2, c, 16, 16, generator=g) * 3 + 5).double().contiguous(memory_format=CL)
        ln64 = copy.deepcopy(ln).double()
        gy = torch.randn(2, c, 16, 16, generator=g).double()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        (ln64(xa) * gy).sum().backward()
        wa, ba = ln64.weight.grad.clone(), ln64.bias.grad.clone()
        ln64.zero_grad()
        (fast.layer_norm_cf(xb, ln64) * gy).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-10)
        assert torch.allclose(wa, ln64.weight.grad, atol=1e-10) and torch.allclose(ba, ln64.bias.grad, atol=1e-10)
    for c in (4, 8, 16):
        gn = torch.nn.GroupNorm(4, c).double()
        with torch.no_grad():
            gn.weight.normal_(generator=g)
        x = (torch.randn(2, c, 16, 16, generator=g) * 3 + 5).double().contiguous(memory_format=CL)
        gy = torch.randn(2, c, 16, 16, generator=g).double()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        (gn(xa.contiguous()) * gy).sum().backward()
        wa = gn.weight.grad.clone()
        gn.zero_grad()
        yb = fast.group_norm(gn, xb)
        (yb * gy).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-10) and torch.allclose(wa, gn.weight.grad, atol=1e-10)
        with torch.no_grad():  # the no-grad inference branch
            assert torch.allclose(fast.group_norm(gn, x), gn(x.contiguous()), atol=1e-10)
    # float32 accuracy on a conv-like input with a large mean (where the native CL kernel loses 1e-4)
    gn = torch.nn.GroupNorm(4, 8)
    x = (torch.randn(2, 8, 64, 64, generator=g) * 3 + 50).contiguous(memory_format=CL)
    with torch.no_grad():
        exact = F.group_norm(x.double().contiguous(), 4)
        assert float((fast.group_norm(gn, x).double() - exact).abs().max()) < 1e-5


def test_up_map_equals_interpolate():
    g = torch.Generator().manual_seed(5)
    for h, out in ((8, 256), (64, 256), (128, 256), (7, 100)):
        m = torch.randn(3, 1, h, h, generator=g, dtype=torch.float64, requires_grad=True)
        a = F.interpolate(m, size=(out, out), mode="bilinear", align_corners=True)
        b = fast.up_map(m, (out, out))
        assert torch.allclose(a, b, atol=1e-12)
        gy = torch.randn(a.shape, generator=g, dtype=torch.float64)
        ga, = torch.autograd.grad(a, m, gy)
        gb, = torch.autograd.grad(b, m, gy)
        assert torch.allclose(ga, gb, atol=1e-10)
        m32 = m.detach().float()
        assert float((fast.up_map(m32, (out, out)) - F.interpolate(m32, size=(out, out), mode="bilinear",
                                                                   align_corners=True)).abs().max()) < 1e-5


def test_mask_cache_bit_identical_and_invalidated():
    torch.manual_seed(6)
    model = EGEUNet()
    cached = make_fast(model, "infer")
    uncached = make_fast(model, "infer", cache_masks=False)
    x, _ = _batch(size=64)
    with torch.no_grad():
        a = cached(x).logits
        b = cached(x).logits  # from the cache
        c = uncached(x).logits
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(a, model(x).logits) or float((a - model(x).logits).abs().max()) < 1e-4 * a.abs().max()
    # a parameter update must invalidate the cached masks
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _loss(model(x), _batch(size=64)[1], model.loss_weights).backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(cached(x).logits, uncached(x).logits)
    # ATen's fused AdamW (the fast path's optimizer) updates in place without bumping version counters
    opt = adamw(model.parameters(), lr=0.1)
    assert opt.defaults.get("fused") is True
    _loss(model(x), _batch(size=64)[1], model.loss_weights).backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(cached(x).logits, uncached(x).logits)
    other = EGEUNet()
    cached.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(cached(x).logits, uncached(x).logits)


def test_wrapper_shares_parameters_and_state_dict():
    model = EGEUNet()
    fm = make_fast(model, "train")
    assert list(fm.state_dict()) == list(model.state_dict())
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(p is q for p, q in zip(fm.parameters(), model.parameters()))
    assert fm.loss_weights == model.loss_weights
    assert make_fast(model, "infer").loss_weights == model.loss_weights[:1]
    assert make_fast(model, "infer", side_outputs=True).loss_weights == model.loss_weights
    fm2 = make_fast(fm, "infer")  # re-wrapping unwraps
    assert fm2.inner is model


def test_micro_batches_and_workers_give_the_same_numbers(kernels):
    torch.manual_seed(7)
    model = EGEUNet()
    x, y = _batch(size=64, b=4)
    with torch.no_grad():
        whole = make_fast(model, "infer", micro_batch=64)(x).logits
        chunked = make_fast(model, "infer", micro_batch=1)(x).logits
        threaded = make_fast(model, "infer", micro_batch=1, workers=2)(x).logits
    scale = float(whole.abs().max())
    assert float((whole - chunked).abs().max()) <= 1e-4 * scale  # oneDNN picks kernels by batch size
    assert float((chunked - threaded).abs().max()) <= 1e-5 * scale
    # training through two worker threads: same outputs and gradients, deterministic
    o1, g1 = _run(make_fast(model, "train", workers=1), x, y)
    o2, g2 = _run(make_fast(model, "train", workers=2), x, y)
    o3, g3 = _run(make_fast(model, "train", workers=2), x, y)
    assert _max_out_diff(o1, o2) <= 1e-4 * scale
    gscale = max(float(g.abs().max()) for g in g1.values())
    for n in g1:
        assert float((g1[n] - g2[n]).abs().max()) <= 1e-4 * gscale, n
        assert torch.equal(g2[n], g3[n]), n


def test_default_workers_follow_the_torch_threads():
    model = EGEUNet()
    default, one, three = make_fast(model, "train"), make_fast(model, "train", workers=1), \
        make_fast(model, "infer", workers=3)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert default.workers == 2 and one.workers == 1 and three.workers == 3
        x, y = _batch(size=64, b=4)
        assert len(default._chunks(x, training=True)) == 2  # the batch goes to two worker threads
        torch.set_num_threads(1)  # e.g. a suite worker process: everything in the calling thread
        assert default.workers == 1 and len(default._chunks(x, training=True)) == 1
    finally:
        torch.set_num_threads(prev)


def test_generic_model_and_batchnorm_not_chunked():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))

    torch.manual_seed(8)
    net = Tiny()
    x = torch.randn(4, 3, 32, 32)
    fm = make_fast(net, "train", workers=2)
    assert len(fm._chunks(x, training=True)) == 1  # BatchNorm in train mode: never split the batch
    a = net(x)
    b = fm(x)
    assert isinstance(b, SegOutput) and torch.allclose(a, b.logits, atol=1e-5)
    net.eval()  # running statistics: per-sample again, chunks allowed
    fi = make_fast(net, "infer", workers=2, micro_batch=1)
    assert len(fi._chunks(x, training=False)) == 4
    with torch.no_grad():
        assert torch.allclose(net(x), fi(x).logits, atol=1e-5)


@pytest.mark.slow
def test_compiled_fast_path_matches():
    torch.manual_seed(9)
    model = EGEUNet()
    x, _ = _batch(size=64)
    compiled = make_fast(model, "infer", compile=True)
    with torch.no_grad():
        a = compiled(x).logits
        b = model(x).logits
    assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


def test_cached_interp_weights_made_under_inference_mode_serve_training():
    # a worker process may evaluate (inference mode) before it trains another run at the same size
    fast._INTERP_CACHE.clear()
    model = EGEUNet()
    with torch.inference_mode():
        make_fast(model, "infer", side_outputs=True)(torch.rand(1, 3, 64, 64) * 255)
    assert fast._INTERP_CACHE and not any(m.is_inference() for m in fast._INTERP_CACHE.values())
    x, y = _batch(size=64)
    out, grads = _run(make_fast(model, "train"), x, y)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("dilation", [1, 2, 5, 7])
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_conv_backward_equals_autograd(dilation, bias, kernels):
    g = torch.Generator().manual_seed(11 + dilation)
    for c, h in ((5, 24), (9, 16), (3, 8)):  # h=8 with dilation 7: taps that never overlap the image
        mod = torch.nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c, bias=bias).double()
        x = torch.randn(2, c, h, h + 3, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
        gy = torch.randn(2, c, h, h + 3, generator=g, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = mod(xa)
        ga = torch.autograd.grad(ya, [xa, *mod.parameters()], gy)
        yb = fast.conv(mod, xb)
        assert yb.grad_fn is not None and "DepthwiseConv" in type(yb.grad_fn).__name__
        gb = torch.autograd.grad(yb, [xb, *mod.parameters()], gy)
        if kernels == "torch":
            assert torch.equal(ya, yb)  # the forward is F.conv2d itself
        assert torch.allclose(ya, yb, atol=1e-12)
        with torch.no_grad():  # the no-grad branch
            assert torch.allclose(fast.conv(mod, x), ya, atol=1e-12)
        for a, b in zip(ga, gb):
            assert torch.allclose(a, b, atol=1e-11), float((a - b).abs().max())
    # a non-'same' depth-wise conv and an input that needs no gradient keep the plain path
    strided = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
    assert "DepthwiseConv" not in type(fast.conv(strided, torch.randn(1, 4, 8, 8).contiguous(memory_format=CL)
                                                 ).grad_fn).__name__


@pytest.mark.parametrize("negative", [False, True])
def test_group_norm_pool_equals_pool_of_group_norm(negative, kernels):
    g = torch.Generator().manual_seed(21)
    for c, groups in ((8, 4), (16, 4), (24, 4), (12, 4)):  # 12: the fused kernels' any-width loop
        gn = torch.nn.GroupNorm(groups, c).double()
        with torch.no_grad():
            gn.weight.normal_(generator=g)
            gn.bias.normal_(generator=g)
            if not negative:
                gn.weight.abs_()
        x = (torch.randn(2, c, 16, 20, generator=g) * 3 + 5).double().contiguous(memory_format=CL)
        x[0, :, :4, :4] = 1.5  # a constant patch: tied maxima inside pooling windows
        gy = torch.randn(2, c, 8, 10, generator=g).double()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = F.max_pool2d(gn(xa.contiguous()), 2, 2)
        ga = torch.autograd.grad(ya, [xa, gn.weight, gn.bias], gy)
        yb = fast.group_norm_pool(gn, xb)
        gb = torch.autograd.grad(yb, [xb, gn.weight, gn.bias], gy)
        assert torch.allclose(ya, yb, atol=1e-12)
        for a, b in zip(ga, gb):
            assert torch.allclose(a, b, atol=1e-10), float((a - b).abs().max())
        with torch.no_grad():  # the inference branch
            expect = F.max_pool2d(gn(x.contiguous()), 2, 2)
            assert torch.allclose(fast.group_norm_pool(gn, x), expect, atol=1e-12)
            scratch = x.clone()
            assert torch.allclose(fast.group_norm_pool(gn, scratch, inplace=True), expect, atol=1e-12)
            if kernels == "torch":
                assert not torch.equal(scratch, x)  # the in-place branch did use x's storage
            assert torch.allclose(fast.group_norm_pool(gn, x, gelu=True), F.gelu(expect), atol=1e-12)
        if negative:
            assert bool((gn.weight < 0).any())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_worker_threads_work_in_a_forked_child():
    import os
    model = EGEUNet()
    x, _ = _batch(size=64, b=4)
    fm = make_fast(model, "infer", micro_batch=1, workers=2)
    with torch.no_grad():
        before = fm(x).logits  # creates the 2-thread pool in this process
    pid = os.fork()
    if pid == 0:  # child: the inherited pool has no threads; a stale one would hang here
        code = 1
        try:
            with torch.no_grad():
                code = 0 if torch.allclose(fm(x).logits, before, atol=1e-5) else 2
        finally:
            os._exit(code)
    import signal
    import time
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:  # hung on the inherited pool: fail instead of blocking the suite
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the fast path's inherited worker pool")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_fused_kernels_build_where_a_compiler_is():
    """A machine with a C++ compiler must get the fused kernels (no silent fall-back to the slow path)."""
    import shutil

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler here: the fast path uses its PyTorch kernels")
    assert _fastops.ops() is not None


def test_fused_kernels_are_used_and_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("EGEUNET_FAST_EXT", "1")
    if _fastops.ops() is None:
        pytest.skip("the fused kernels are not built here")
    from egeunet.layers import LayerNormCF

    x = torch.randn(2, 5, 8, 8).contiguous(memory_format=CL).requires_grad_()
    assert "Ext" in type(fast.layer_norm_cf(x, LayerNormCF(5)).grad_fn).__name__
    assert "Ext" in type(fast.group_norm(torch.nn.GroupNorm(4, 8), torch.randn(2, 8, 8, 8).contiguous(
        memory_format=CL).requires_grad_()).grad_fn).__name__
    monkeypatch.setenv("EGEUNET_FAST_EXT", "0")
    assert _fastops.ops() is None
    assert "Ext" not in type(fast.layer_norm_cf(x, LayerNormCF(5)).grad_fn).__name__
    # a layout the kernels do not take (NCHW) keeps the PyTorch path
    monkeypatch.setenv("EGEUNET_FAST_EXT", "1")
    assert "Ext" not in type(fast.layer_norm_cf(torch.randn(2, 5, 8, 8, requires_grad=True),
                                                LayerNormCF(5)).grad_fn).__name__


@pytest.mark.parametrize("c", [5, 8, 9, 13, 17, 24, 64])  # the compile-time widths and the generic loop
def test_fused_layer_norm_every_width_float64(c):
    if _fastops.ops() is None:
        pytest.skip("the fused kernels are not built here")
    ext = _fastops.ops()
    g = torch.Generator().manual_seed(30 + c)
    x = (torch.randn(3, c, 7, 9, generator=g, dtype=torch.float64) * 2 + 4).contiguous(memory_format=CL)
    w = torch.randn(c, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    gy = torch.randn(3, c, 7, 9, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    ref = F.layer_norm(xr.permute(0, 2, 3, 1), (c,), wr, br, 1e-6).permute(0, 3, 1, 2)
    ref.backward(gy)
    y, mean, rstd = ext.ln_forward(x, w, b, 1e-6, True)
    gx, gw, gb = ext.ln_backward(gy, x, mean, rstd, w)
    assert torch.allclose(y, ref, atol=1e-12) and y.is_contiguous(memory_format=CL)
    for a, e in ((gx, xr.grad), (gw, wr.grad), (gb, br.grad)):
        assert torch.allclose(a, e, atol=1e-11), float((a - e).abs().max())


@pytest.mark.parametrize("pout", [1, 3, 4, 7, 8, 13])  # four output rows at a time, then the rest one by one
def test_fused_tail_layer_norm_and_projection_float64(pout):
    """GAB's inference tail (LayerNorm over the virtual concatenation of the group outputs, then the 1x1
    conv, in one pass) against F.layer_norm over the real concatenation and F.conv2d."""
    ext = _fastops.ops()
    if ext is None:
        pytest.skip("the fused kernels are not built here")
    g = torch.Generator().manual_seed(60 + pout)
    outs = [(torch.randn(2, 5, 6, 11, generator=g, dtype=torch.float64) * 3 + 1).contiguous(memory_format=CL)
            for _ in range(4)]
    w, b = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    pw = torch.randn(pout, 20, 1, 1, generator=g, dtype=torch.float64)
    pb = torch.randn(pout, generator=g, dtype=torch.float64)
    seg = [v for k in range(4) for v in (k, 0, 5)]
    cat = torch.cat(outs, 1)
    ref = F.conv2d(F.layer_norm(cat.permute(0, 2, 3, 1), (20,), w, b, 1e-6).permute(0, 3, 1, 2), pw, pb)
    got = ext.ln_multi_proj(outs, seg, w, b, 1e-6, pw, pb)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=CL)
    assert torch.allclose(got, ref, atol=1e-12), float((got - ref).abs().max())
    assert torch.allclose(ext.ln_multi_proj(outs, seg, w, b, 1e-6, pw, None), ref - pb[None, :, None, None],
                          atol=1e-12)


def test_fused_kernels_reject_bad_layouts_with_a_message():
    ext = _fastops.ops()
    if ext is None:
        pytest.skip("the fused kernels are not built here")
    x = torch.randn(2, 8, 6, 6)  # NCHW, not channels-last
    with pytest.raises(RuntimeError, match="channels-last"):
        ext.gn_stats(x, 4, 1e-5)
    with pytest.raises(RuntimeError, match="even sides"):
        ext.gn_pool_forward(torch.randn(1, 4, 5, 6).contiguous(memory_format=CL), torch.zeros(1, 4),
                            torch.ones(1, 4), torch.zeros(4), False)


@pytest.mark.parametrize("c,h,w,ho,wo", [(1, 8, 8, 16, 16), (8, 16, 12, 32, 24), (24, 5, 7, 10, 14), (2, 1, 4, 3, 8)])
def test_fused_bilinear_resize_float64(c, h, w, ho, wo):
    """The fused align_corners=True resize (one channel and many; odd and non-x2 sizes) against ATen."""
    ext = _fastops.ops()
    if ext is None:
        pytest.skip("the fused kernels are not built here")
    g = torch.Generator().manual_seed(40 + c)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    ref = F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=True)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
    (gref,) = torch.autograd.grad(ref, x, gy)
    assert torch.allclose(ext.up_forward(x.detach(), ho, wo), ref, atol=1e-13)
    assert torch.allclose(ext.up_backward(gy, h, w), gref, atol=1e-12)
    x2 = x.detach().clone().requires_grad_()
    y2 = fast._up(x2, size=(ho, wo))
    assert "UpBilinear" in type(y2.grad_fn).__name__
    (g2,) = torch.autograd.grad(y2, x2, gy)
    assert torch.allclose(g2, gref, atol=1e-12)


@pytest.mark.parametrize("c,k,d", [(5, 3, 1), (5, 3, 7), (9, 3, 5), (11, 3, 2), (3, 5, 1), (64, 3, 1)])
def test_fused_depthwise_conv_float64(c, k, d):
    """The fused depth-wise 'same' conv (compile-time and any-width channel loops) against F.conv2d."""
    ext = _fastops.ops()
    if ext is None:
        pytest.skip("the fused kernels are not built here")
    g = torch.Generator().manual_seed(50 + c + d)
    x = torch.randn(2, c, 9, 13, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    pad = d * (k // 2)
    assert torch.allclose(ext.dw_conv(x, w, b, d), F.conv2d(x, w, b, padding=pad, dilation=d, groups=c), atol=1e-12)
    assert torch.allclose(ext.dw_conv(x, w, None, d), F.conv2d(x, w, None, padding=pad, dilation=d, groups=c),
                          atol=1e-12)


def test_a_finished_build_loads_without_the_build_lock(tmp_path):
    """A process killed while holding torch's build lock must not stall later processes: a finished
    build is imported directly (the lock is only taken to build)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    mod = _fastops.ops()
    if mod is None:
        pytest.skip("the fused kernels are not built here")
    lock = Path(mod.__file__).parent / "lock"
    created = not lock.exists()
    lock.touch()
    try:
        proc = subprocess.run([sys.executable, "-c", "from kernels.fastops import ops; assert ops() is not None"],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "EGEUNET_FAST_EXT": "1"})
        assert proc.returncode == 0, proc.stderr
    finally:
        if created:
            lock.unlink(missing_ok=True)


def test_a_failed_build_falls_back_with_the_compiler_error(tmp_path):
    """A kernel source that does not compile: ops() is None, the fast path keeps its PyTorch kernels,
    and the warning quotes the compiler's error line (not just the command)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler here")
    bad = tmp_path / "fastops.cpp"
    bad.write_text("#include <torch/extension.h>\nint broken( {\n")
    code = ("import warnings, torch\nfrom pathlib import Path\nfrom kernels import fastops as _fastops\n"
            f"_fastops.SOURCE = Path({str(bad)!r})\n"
            "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    assert _fastops.ops() is None\n"
            "msg = ' '.join(str(x.message) for x in w)\nassert 'could not be built' in msg and 'error' in msg, msg\n"
            "from egeunet.fast import make_fast\nfrom egeunet.model import EGEUNet\n"
            "out = make_fast(EGEUNet(), 'infer')(torch.rand(1, 3, 32, 32))\nassert out.logits.shape == (1, 1, 32, 32)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
                                                       "EGEUNET_FAST_EXT": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
