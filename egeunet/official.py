"""Loading checkpoints written by the official EGE-UNet code (JCruan519/EGE-UNet).

Our module names are the official ones, so for the default configuration the mapping is the
identity; this module adds what a real checkpoint needs: unwrapping ``latest.pth``
(``{"model_state_dict": ...}``), stripping a DataParallel ``module.`` prefix, and loud, named
errors for missing, unexpected and mis-shaped tensors. Variants whose shapes differ load
partially with ``strict=False`` and get a report of what was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn


class OfficialCheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into."""


@dataclass
class LoadReport:
    """What a (partial) load did."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint AxB vs model CxD"

    @property
    def skipped(self) -> list[str]:
        return self.missing + self.unexpected + self.mismatched


def unwrap_official(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The plain ``state_dict`` inside ``best.pth`` / ``latest.pth`` with any ``module.`` prefix removed."""
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"expected a state dict (mapping), got {type(obj).__name__}")
    if "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        key = k[len("module."):] if k.startswith("module.") else k
        if not isinstance(v, Tensor):
            raise OfficialCheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor")
        out[key] = v
    return out


def _shape(t: Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


@torch.no_grad()
def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> LoadReport:
    """Copy an official checkpoint into ``model`` in place (copying keeps shared storage intact).

    With ``strict=True`` any missing, unexpected or mis-shaped key raises
    :class:`OfficialCheckpointError` naming the keys, and nothing is copied.
    """
    sd = unwrap_official(state_dict)
    own = model.state_dict()
    rep = LoadReport()
    for k, v in sd.items():
        if k not in own:
            rep.unexpected.append(k)
        elif own[k].shape != v.shape:
            rep.mismatched.append(f"{k}: checkpoint {_shape(v)} vs model {_shape(own[k])}")
    rep.missing = [k for k in own if k not in sd]
    if strict and rep.skipped:
        parts = []
        if rep.missing:
            parts.append(f"missing {len(rep.missing)}: {_short(rep.missing)}")
        if rep.unexpected:
            parts.append(f"unexpected {len(rep.unexpected)}: {_short(rep.unexpected)}")
        if rep.mismatched:
            parts.append(f"wrong shape {len(rep.mismatched)}: {_short(rep.mismatched, 4)}")
        raise OfficialCheckpointError(
            "checkpoint does not match this EGE-UNet configuration (" + "; ".join(parts)
            + "). Official weights load only into the default configuration; use strict=False for a partial load.")
    bad = set(rep.unexpected) | {m.split(":")[0] for m in rep.mismatched}
    for k, v in sd.items():
        if k not in bad:
            own[k].copy_(v.to(dtype=own[k].dtype))
            rep.loaded.append(k)
    return rep


def export_official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors under the official names, in the official order (identity for our naming)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
