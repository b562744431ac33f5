"""Which modules a run trains and evaluates through: the model itself, or its registered fast view.

A registry entry may declare a fast view (``fast="egeunet.fast:make_fast"``): modules that share the
model's parameters and return the same ``SegOutput`` to float32 round-off, built for the CPU. The
engine never asks what a model *is*; it asks the registry whether the entry has a view.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["uses_fast_path", "choose_view", "fast_views"]


def uses_fast_path(model: str, device: str | torch.device, request: bool | None = None) -> bool:
    """Whether a run of registered ``model`` trains through its fast view (default: on the CPU, for the models
    whose registry entry declares one: the EGE-UNet family, and the baselines by zoo.views.channels_last)."""
    if request is not None:
        return bool(request)
    from zoo.registry import get_entry

    return torch.device(device).type == "cpu" and get_entry(model).fast is not None


def choose_view(name: str, device: str | torch.device, use_fast: bool, planned_images: int, size: int,
                started_path: str | None = None) -> str:
    """``"compiled"`` or ``"declared"``: whether a fast-path run of ``name`` trains through ``torch.compile``
    because it pays for this run's length (:func:`zoo.paths.choose_path`, from the committed bench
    measurements). A resumed run keeps the path it started on (``started_path`` from its record)."""
    if not use_fast or torch.device(device).type != "cpu":
        return "declared"
    if started_path in ("compiled", "fast"):
        return "compiled" if started_path == "compiled" else "declared"
    from zoo.paths import choose_path

    return choose_path(name, planned_images, size)


def fast_views(name: str, model: nn.Module, use_fast: bool, compiled: bool = False) -> tuple[nn.Module, nn.Module]:
    """``(train module, eval module)``: ``model`` twice, or the registered fast views of ``name`` sharing its
    parameters (``compiled``: :func:`zoo.views.compiled` instead, as :func:`choose_view` decides). The eval view
    keeps the side outputs: the validation loss that selects the checkpoint is the training loss."""
    if not use_fast:
        return model, model
    if compiled:
        from zoo.views import compiled as compiled_view

        view = compiled_view(model, "train")
        return view, view  # one compiled module: eval() switches it (a recompile, counted by the rule)
    from zoo.registry import get_entry

    make_fast = get_entry(name).fast_view()
    if make_fast is None:
        raise ValueError(f"model {name!r} declares no fast view in the registry; run it without --fast")
    return make_fast(model, "train"), make_fast(model, "infer", side_outputs=True)
