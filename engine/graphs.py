"""A CUDA-graph-captured training step: forward, loss, backward and AdamW replayed as one graph launch.

A 53 K-parameter network is bound on a GPU by kernel launches (docs/gpu.md): one EGE-UNet step at batch 8 is
some hundreds of small kernels. Captured once into a ``torch.cuda.CUDAGraph`` with static input buffers, a
step is two copies (the batch into the static buffers) and one replay.

Constraints of capture, and how they are met:

* static shapes: the batch size is fixed at capture; a ragged last batch is trained eagerly by the same
  module and optimizer (:meth:`GraphStep.__call__` falls back);
* the optimizer steps inside the graph: ``torch.optim.AdamW(..., capturable=True)`` with ``lr`` a device
  tensor, so a schedule changes it between replays (:meth:`GraphStep.set_lr`) without a recapture;
* capture needs warm-up iterations on a side stream; they would train the model, so the parameters and the
  optimizer state are saved before and restored after them: the first real step starts from the weights
  the run built;
* no AMP (a GradScaler's skipped steps cannot be replayed) and no host synchronisation inside the step; the
  loss stays on the device until the caller reads it.

CUDA only: :func:`graph_problem` says why a step cannot be captured here (e.g. no GPU), and tests skip on
it. Not yet measured on a GPU: ``python -m studies.bench --device cuda --extra graph`` adds it to the
training-step case.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["GraphStep", "graph_problem", "WARMUP_STEPS"]

WARMUP_STEPS = 3  # side-stream iterations before capture (PyTorch's recipe for whole-network capture)


def graph_problem(device: torch.device | str) -> str | None:
    """Why a training step cannot be CUDA-graph-captured on ``device``, or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; none is available"
    return None


class GraphStep:
    """``step(x, y) -> loss`` (a device tensor) for ``model`` trained by ``loss_fn(output, y)``, captured.

    ``optimizer_kwargs`` are AdamW's (``lr`` a float, turned into a device tensor). The optimizer is built
    here (capturable); use :attr:`optimizer` for its state and :meth:`set_lr` for the schedule."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Tensor], Tensor], example_x: Tensor,
                 example_y: Tensor, **optimizer_kwargs: Any) -> None:
        problem = graph_problem(example_x.device)
        if problem:
            raise RuntimeError(problem)
        dev = example_x.device
        self.model, self.loss_fn = model, loss_fn
        lr = float(optimizer_kwargs.pop("lr", 1e-3))
        self.lr = torch.tensor(lr, device=dev)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, capturable=True, **optimizer_kwargs)
        self.static_x, self.static_y = example_x.clone(), example_y.clone()

        saved_model = copy.deepcopy(model.state_dict())
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self._eager(self.static_x, self.static_y)
        torch.cuda.current_stream(dev).wait_stream(stream)
        # the warm-up trained: back to the built weights and a fresh optimizer state (kept in place, the graph
        # reads these very tensors)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for state in self.optimizer.state.values():
                for v in state.values():
                    if isinstance(v, Tensor):
                        v.zero_()
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.loss_fn(self.model(self.static_x), self.static_y)
            self.static_loss.backward()
            self.optimizer.step()

    def _eager(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (a schedule calls this once per epoch)."""
        self.lr.fill_(float(lr))

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on ``(x, y)``; returns the loss (on the device)."""
        if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
            return self._eager(x, y)  # a ragged last batch: the same module and optimizer, uncaptured
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.detach()
