"""engine.graphs off the GPU: a captured step, and a run or suite asking for one, are refused with the reason
and nothing is trained or written (the GPU tests are in test_cuda.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from egeunet.reference import ReferenceEGEUNet
from engine.graphs import GraphStep, graph_problem, graph_refusal
from engine.losses import model_loss
from engine.numerics import training_path
from engine.train import RunConfig, run_training


def test_capture_is_refused_on_the_cpu_with_the_reason():
    assert graph_problem("cpu") == "CUDA graphs need a CUDA device, not cpu"
    if not torch.cuda.is_available():
        assert "none is available" in graph_problem("cuda")
    model = ReferenceEGEUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="not cpu"):
        GraphStep(model, lambda net, a, b: model_loss(net(a), b, net.loss_weights), opt,
                  torch.amp.GradScaler("cpu", enabled=False), x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained
    assert all(p.grad is None for p in model.parameters())


def test_refusal_names_the_device_then_the_fast_path(monkeypatch):
    assert "not cpu" in graph_refusal("cpu", fast=False)
    import engine.graphs as graphs

    monkeypatch.setattr(graphs, "graph_problem", lambda device: None)  # as on a GPU machine
    assert graphs.graph_refusal("cuda", fast=False) is None
    assert "--no-fast" in graphs.graph_refusal("cuda", fast=True)


def test_the_graph_path_has_its_own_name():
    assert [training_path(fast=f, graph=g) for f, g in ((False, False), (True, False), (False, True))] == \
        ["plain", "fast", "graph"]
    assert training_path(fast=False, packed=True) == "packed"


def test_a_run_asking_for_a_graph_on_the_cpu_writes_nothing(tmp_path):
    cfg = RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0)
    with pytest.raises(RuntimeError, match="CUDA-graph-captured step: CUDA graphs need a CUDA device, not cpu"):
        run_training(cfg, tmp_path, cuda_graph=True, progress=False, profile=False)
    assert not (tmp_path / "runs").exists()


def test_suite_with_cuda_graph_on_the_cpu_exits_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--cuda-graph",
                        "--results", str(tmp_path / "r")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--cuda-graph" in lines[0] and "not cpu" in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "r" / "runs").exists()
    p = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--cuda-graph", "--pack", "2",
                        "--results", str(tmp_path / "r")], capture_output=True, text=True)
    assert p.returncode == 2 and "choose one" in p.stderr


def test_an_eager_record_does_not_resume_on_the_graph_path(tmp_path):
    from engine.train import resume_conflict

    def stop_after_first_epoch(**row):
        raise KeyboardInterrupt

    cfg = RunConfig(model="egeunet", dataset="synthetic", budget="smoke", seed=0)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path, threads=1, progress=stop_after_first_epoch, profile=False, fast=False)
    assert resume_conflict(cfg, tmp_path, device="cpu", fast=False) is None
    problem = resume_conflict(cfg, tmp_path, device="cpu", fast=False, graph=True)
    assert problem and "path 'plain' -> 'graph'" in problem and "--restart" in problem
