"""engine.graphs off the GPU: a captured step is refused with a reason (the GPU test is in test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from egeunet.reference import ReferenceEGEUNet
from engine.graphs import GraphStep, graph_problem
from engine.losses import model_loss


def test_capture_is_refused_on_the_cpu_with_the_reason():
    assert graph_problem("cpu") == "CUDA graphs need a CUDA device, not cpu"
    if not torch.cuda.is_available():
        assert "none is available" in graph_problem("cuda")
    model = ReferenceEGEUNet()
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="not cpu"):
        GraphStep(model, lambda out, t: model_loss(out, t, model.loss_weights), x, y, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained
