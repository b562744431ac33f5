"""What one run asks Ray for: CPUs, and GPUs by a rule on the model's parameter count.

``C`` CPUs per run is ``--ray-cpus-per-run`` (default :data:`DEFAULT_CPUS_PER_RUN`, fractions allowed); it
is also the run's torch thread count (rounded up). GPUs are 0 on ``--device cpu``; on CUDA they are
``--ray-gpus-per-run``: a number for every run, or a :class:`GpuRule` (default :data:`DEFAULT_GPU_RULE` =
``1M:0.25,5M:0.5,*:1``: models under 1 M parameters -- EGE-UNet and its variants, MALUNet, UNeXt-S,
TransFuse-lite -- take a quarter of a GPU, so four share one; UNeXt half; UNet-32 and TransFuse-S a
whole GPU).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CPUS_PER_RUN", "DEFAULT_GPU_RULE", "GpuRule", "model_params"]

DEFAULT_CPUS_PER_RUN = 1.0
DEFAULT_GPU_RULE = "1M:0.25,5M:0.5,*:1"

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


@dataclass(frozen=True)
class GpuRule:
    """GPUs per run as a function of the model's parameter count.

    ``"1M:0.25,5M:0.5,*:1"``: below 1 M parameters 0.25 GPU, below 5 M 0.5, otherwise 1. A plain
    number (``"0.5"``) gives every run that share. Thresholds take K / M / G suffixes.
    """

    steps: tuple[tuple[float, float], ...]  # (params below, gpus), ascending
    otherwise: float
    text: str

    @classmethod
    def parse(cls, text: str | float | int) -> "GpuRule":
        """Parse a rule (``auto`` = :data:`DEFAULT_GPU_RULE`); a malformed one is a one-line ``ValueError``."""
        s = str(text).strip()
        if s.lower() == "auto":
            s = DEFAULT_GPU_RULE
        try:
            fixed = float(s)
        except ValueError:
            fixed = None
        if fixed is not None:
            return cls((), _check_gpus(fixed, s), s)
        steps: list[tuple[float, float]] = []
        otherwise: float | None = None
        for part in (p.strip() for p in s.split(",") if p.strip()):
            key, sep, val = part.partition(":")
            if not sep:
                raise ValueError(f"bad GPU rule part {part!r} in {s!r}: expected PARAMS:GPUS, e.g. {DEFAULT_GPU_RULE}")
            try:
                value = float(val)
            except ValueError:
                raise ValueError(f"bad GPU count {val!r} in GPU rule {s!r}") from None
            gpus = _check_gpus(value, s)
            if key.strip() == "*":
                otherwise = gpus
                continue
            m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([KMG]?)\s*", key, re.IGNORECASE)
            if not m:
                raise ValueError(f"bad parameter threshold {key!r} in GPU rule {s!r} (e.g. 1M, 500K, 2e6)")
            steps.append((float(m.group(1)) * _SUFFIX[m.group(2).upper()], gpus))
        if not steps and otherwise is None:
            raise ValueError(f"empty GPU rule {s!r}")
        steps.sort()
        if otherwise is None:
            otherwise = steps[-1][1]
        return cls(tuple(steps), otherwise, s)

    def gpus_for(self, params: int | None) -> float:
        """The GPU share of a model with ``params`` parameters (unknown: the rule's largest share)."""
        if params is None:
            return max([g for _, g in self.steps] + [self.otherwise])
        for below, gpus in self.steps:
            if params < below:
                return gpus
        return self.otherwise


def _check_gpus(g: float, rule: str) -> float:
    if not math.isfinite(g) or g < 0:
        raise ValueError(f"GPUs per run must be >= 0, got {g} in {rule!r}")
    if g > 1 and g != int(g):
        raise ValueError(f"GPUs per run above 1 must be whole (Ray's rule), got {g} in {rule!r}")
    return g


_PARAMS_CACHE: dict[str, int | None] = {}


def model_params(model: str, overrides: dict[str, Any] | None = None) -> int | None:
    """The model's parameter count: the registry's, or counted when the config overrides the model."""
    key = f"{model}|{sorted((overrides or {}).items())!r}"
    if key not in _PARAMS_CACHE:
        params = None
        try:
            from zoo.registry import create_model, get_entry

            if not overrides:
                params = get_entry(model).params
            if params is None:
                m = create_model(model, **(overrides or {}))
                params = int(sum(p.numel() for p in m.parameters()))
        except Exception:  # noqa: BLE001 - an unknown size falls back to the largest share
            params = None
        _PARAMS_CACHE[key] = params
    return _PARAMS_CACHE[key]
