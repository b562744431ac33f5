"""A CUDA-graph-captured training step: forward, loss and backward replayed as one graph launch.

A 53 K-parameter network is bound on a GPU by kernel launches (docs/gpu.md): one EGE-UNet step at batch 8 is
some hundreds of small kernels. Captured once into a ``torch.cuda.CUDAGraph`` with static input buffers, the
forward, the loss and the backward of a step are two copies (the batch into the static buffers) and one replay.
The optimizer step (a few multi-tensor kernels) then runs eagerly, through the run's ``GradScaler`` -- so
AMP, its skipped steps and its scale updates work as in an eager run, and the run keeps its own optimizer,
schedule and checkpoint state untouched by the capture.

How the constraints of capture are met:

* static shapes: the batch size is fixed at capture; a ragged last batch is trained eagerly by the same
  module, gradients and optimizer (:meth:`GraphStep.__call__` falls back);
* static gradients: the captured backward writes the parameters' ``.grad`` tensors, which the optimizer then
  reads; nothing may set them to None afterwards (the eager fallback zeroes them in place instead);
* the scale of AMP's ``GradScaler`` is a device tensor updated in place, so the graph always reads the
  current one; autocast runs with ``cache_enabled=False`` inside the capture (PyTorch's rule for graphs);
* capture needs warm-up iterations on a side stream: they compute gradients only (no optimizer step), and the
  buffers (BatchNorm statistics) and the CUDA random state are restored after them, so the first real step
  sees exactly what an eager first step would;
* no host synchronisation inside the captured part; the loss stays on the device until the caller reads it.

CUDA only: :func:`graph_problem` says why a step cannot be captured here (e.g. no GPU), and tests skip on
it. ``engine.train`` uses it for a run with ``cuda_graph=True`` (``studies.run --cuda-graph``; its training
path is ``graph``, and a run never resumes on another path). Not yet measured on a GPU: ``python -m
studies.bench --device cuda --extra graph`` adds it to the training-step case.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["GraphStep", "graph_problem", "graph_refusal", "WARMUP_STEPS"]

WARMUP_STEPS = 3  # side-stream iterations before capture (PyTorch's recipe for whole-network capture)


def graph_problem(device: torch.device | str) -> str | None:
    """Why a training step cannot be CUDA-graph-captured on ``device``, or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; none is available"
    return None


def graph_refusal(device: torch.device | str, *, fast: bool) -> str | None:
    """Why a run cannot train with a captured step: no CUDA device, or the fast view (its CPU worker threads
    cannot be captured); None when it can."""
    problem = graph_problem(device)
    if problem:
        return f"a CUDA-graph-captured step: {problem}"
    if fast:
        return "a CUDA-graph-captured step runs the plain model; turn the fast path off (--no-fast)"
    return None


class GraphStep:
    """``step(x, y) -> loss`` (a device tensor): one training step of ``model`` with ``optimizer``.

    ``loss_fn(model, x, y)`` computes the (unscaled) loss of a batch, autocast included where the run uses
    AMP (with ``cache_enabled=False``). ``scaler``: the run's ``torch.amp.GradScaler`` (a disabled one for
    fp32); the backward runs on ``scaler.scale(loss)``, and after it ``scaler.step(optimizer)`` and
    ``scaler.update()``, eagerly. The parameters, optimizer state, buffers and CUDA random state are the
    same after the capture as before it."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, example_x: Tensor,
                 example_y: Tensor) -> None:
        problem = graph_problem(example_x.device)
        if problem:
            raise RuntimeError(problem)
        dev = example_x.device
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.static_x, self.static_y = example_x.clone(), example_y.clone()

        saved_buffers = {k: v.clone() for k, v in model.named_buffers()}
        saved_rng = torch.cuda.get_rng_state(dev)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(self.loss_fn(self.model, self.static_x, self.static_y)).backward()
        torch.cuda.current_stream(dev).wait_stream(stream)
        with torch.no_grad():  # the warm-up's forwards moved BatchNorm statistics and the random state
            for k, v in model.named_buffers():
                v.copy_(saved_buffers[k])
        torch.cuda.set_rng_state(saved_rng, dev)
        self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the static gradients
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.loss_fn(self.model, self.static_x, self.static_y)
            self.scaler.scale(self.static_loss).backward()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on ``(x, y)``; returns the loss (on the device)."""
        if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
            loss = self._eager(x, y)  # a ragged batch: the same module, gradients and optimizer, uncaptured
        else:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            loss = self.static_loss.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def _eager(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=False)  # in place: the graph keeps writing these tensors
        loss = self.loss_fn(self.model, x, y)
        self.scaler.scale(loss).backward()
        return loss.detach()

