"""CUDA paths: AMP training end to end, the fast path on the GPU, every registered model on the GPU.

Skipped where no CUDA device is present (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from zoo.contract import as_seg_output
from egeunet.model import EGEUNet
from egeunet.reference import ReferenceEGEUNet
from zoo.registry import create_model, list_models
from egeunet.fast import make_fast
from engine.train import run_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_amp_training_run_on_cuda(smoke_config, tmp_path):
    res = run_training(smoke_config(), tmp_path, device="cuda")
    assert res.status == "done", res.reason
    env = json.loads((res.record_dir / "env.json").read_text())
    assert env["device"].startswith("cuda") and env["amp"] is True and env["cuda_version"]
    metrics = json.loads((res.record_dir / "metrics.json").read_text())
    assert all(math.isfinite(float(metrics["test"][k])) for k in ("pooled_dsc", "pooled_miou", "per_image_dsc_mean"))
    # the checkpoint written on the GPU loads on the CPU
    ck = torch.load(res.record_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert ck["config_hash"] == res.config_hash


@pytest.fixture
def strict_fp32():
    """cuDNN convolutions default to TF32 (10-bit mantissa): switch it off to compare float32 numbers."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fast_path_on_cuda_matches_reference(strict_fp32):
    torch.manual_seed(0)
    ref = ReferenceEGEUNet().cuda()
    fm = make_fast(EGEUNet(), "train").cuda()
    fm.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 96, 96, device="cuda") * 255
    with torch.no_grad():
        a, b = ref(x).logits, fm(x).logits
        a64 = copy.deepcopy(ref).double()(x.double()).logits
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= 1e-4 * scale
    assert float((b.double() - a64).abs().max()) <= 1e-4 * scale
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        h = fm(x).logits
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward_backward_on_cuda(name):
    torch.manual_seed(0)
    model = create_model(name).cuda()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = as_seg_output(model(x))
    assert out.logits.shape[-2:] == (64, 64) and torch.isfinite(out.logits.float()).all()
    sum(m.float().mean() for m in (out.logits, *out.aux)).backward()
    unused = set(getattr(model, "unused_parameters", ()))  # declared by the model (e.g. TransFuse-S's head)
    assert [n for n, p in model.named_parameters() if p.grad is None and n not in unused] == []
    cpu = copy.deepcopy(model).cpu()
    assert sum(p.numel() for p in cpu.parameters()) == sum(p.numel() for p in model.parameters())


def test_packed_runs_on_cuda(tmp_path):
    """engine.packed on the GPU (float32: the pack refuses AMP): complete records, path ``packed``."""
    from engine.packed import run_packed
    from engine.record import load_record
    from engine.train import RunConfig

    cfgs = [RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=s, recipe={"amp": False})
            for s in (0, 1)]
    res = run_packed(cfgs, tmp_path, device="cuda", progress=False, profile=False)
    assert [r.status for r in res] == ["done", "done"]
    for r in res:
        rec = load_record(r.record_dir)
        assert rec.first_session.path == "packed" and rec.first_session.device_type == "cuda"
        assert math.isfinite(rec.test_metrics["pooled_dsc"])


def _graph_setup(seed: int = 0):
    from engine.losses import model_loss

    torch.manual_seed(seed)
    model = ReferenceEGEUNet().cuda()
    w = tuple(model.loss_weights)
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(4, 3, 64, 64, generator=g).cuda() for _ in range(3)]
    ys = [(torch.rand(4, 1, 64, 64, generator=g) > 0.5).float().cuda() for _ in range(3)]
    return model, (lambda net, x, y: model_loss(net(x), y, w)), xs, ys


@pytest.mark.parametrize("amp", [False, True])
def test_graph_step_trains_as_the_eager_step(strict_fp32, amp):
    """Three steps with the forward, loss and backward replayed (a learning-rate change between them, a ragged
    last batch) against three eager steps, fp32 and AMP (the GradScaler steps eagerly after the replay)."""
    from engine.graphs import GraphStep

    model, loss_fn, xs, ys = _graph_setup()
    eager = copy.deepcopy(model)

    def amp_loss(net, x, y):
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp, cache_enabled=False):
            return loss_fn(net, x, y)

    opt_g, opt_e = (torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (model, eager))
    sc_g, sc_e = (torch.amp.GradScaler("cuda", enabled=amp) for _ in range(2))
    step = GraphStep(model, amp_loss, opt_g, sc_g, xs[0], ys[0])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager.state_dict().values()))
    assert not opt_g.state  # the capture did not step the optimizer
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i == 1:
            for opt in (opt_g, opt_e):
                for grp in opt.param_groups:
                    grp["lr"] = 5e-4
        if i == 2:
            x, y = x[:3], y[:3]  # ragged: the eager fallback
        got = float(step(x, y))
        opt_e.zero_grad()
        want = amp_loss(eager, x, y)
        sc_e.scale(want).backward()
        sc_e.step(opt_e)
        sc_e.update()
        assert math.isclose(got, float(want), rel_tol=1e-3 if amp else 1e-4)
    for (k, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        assert float((a - b).abs().max()) < (1e-3 if amp else 1e-4), k


def test_graph_run_matches_the_eager_run(smoke_config, tmp_path):
    """A smoke run trained with --cuda-graph: path 'graph' in its record, and the eager run's numbers."""
    eager = run_training(smoke_config(), tmp_path / "eager", device="cuda", progress=False, profile=False)
    graph = run_training(smoke_config(), tmp_path / "graph", device="cuda", progress=False, profile=False,
                         cuda_graph=True)
    assert eager.status == graph.status == "done", graph.reason
    from engine.record import load_record

    rg, re_ = load_record(graph.record_dir), load_record(eager.record_dir)
    assert rg.first_session.path == "graph" and re_.first_session.path == "plain"
    for k in ("pooled_dsc", "pooled_miou"):
        assert abs(rg.test_metrics[k] - re_.test_metrics[k]) < 0.02, k
