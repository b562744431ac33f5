"""Generic fast views a registry entry can declare (``fast="zoo.views:channels_last"``).

A fast view is ``f(model, mode, **kw) -> nn.Module``: a module that shares the model's parameters and
returns what the model returns, to float32 round-off (see :mod:`engine.fastview`). Which models declare
which view follows ``python -m studies.bench --cases paths`` (``results/bench/paths_cpu.csv``);
``tests/test_paths.py`` checks that the declarations are what that CSV measured.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ChannelsLast", "CompiledView", "channels_last", "compiled"]


class _View(nn.Module):
    """A module around ``self.model`` whose other attributes (``loss_weights`` ...) are the model's."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def _check_mode(mode: str) -> None:
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")


class ChannelsLast(_View):
    """``model`` with its parameters and its input in channels-last (NHWC) memory order.

    oneDNN runs most 2-D convolutions faster on NHWC on the CPU. Only the memory order changes: the
    parameters are the same ``Parameter`` objects (an optimizer built on ``model.parameters()`` before or
    after still updates them) and ``state_dict`` keys and values are the model's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class CompiledView(_View):
    """``torch.compile(model)`` (inductor, static shapes) sharing the model's parameters and attributes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.__dict__["_compiled"] = torch.compile(model, dynamic=False)  # not a sub-module: one state_dict

    def forward(self, x: torch.Tensor) -> Any:
        return self._compiled(x)


def channels_last(model: nn.Module, mode: str = "train", **_: Any) -> nn.Module:
    """The channels-last view of ``model`` (``mode`` and options such as ``side_outputs`` change nothing)."""
    _check_mode(mode)
    return ChannelsLast(model)


def compiled(model: nn.Module, mode: str = "train", **_: Any) -> nn.Module:
    """The compiled view of ``model`` (the same for ``train`` and ``infer``: the mode switch recompiles). Not declared
    by any registry entry: the trainer takes it where :mod:`zoo.paths` says compiling pays."""
    _check_mode(mode)
    return CompiledView(model)
