"""A registry of named, zero-logic model constructors (EGE-UNet, its ablation variants, baselines).

A constructor is registered with the facts a test can check exactly::

    @register_model("unext_s", family="unext", params=253_561, thop_macs=103_800_000)
    def unext_s(**overrides) -> nn.Module:
        return UNeXt(UNeXtConfig.small().replace(**overrides))

``params`` is ``sum(p.numel())`` at the default input; ``thop_macs`` the legacy-thop
multiply-accumulate count at 1x3x256x256 (the papers' "GFLOPs" convention) and
``macs_rel_tol`` how close the counted value must be (0 = exact).
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

Constructor = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """Facts recorded for one registered model name."""

    name: str
    constructor: Constructor
    family: str
    params: int | None = None
    thop_macs: int | None = None
    macs_rel_tol: float = 0.0
    description: str = ""
    switches: dict[str, Any] = field(default_factory=dict)
    heavy: bool = False  # slow on CPU: tests use small inputs
    min_side: int = 32  # input sides must be multiples of this
    non_square: tuple[int, int] = (64, 96)  # a non-square input the model supports (H, W)
    fast: str | None = None  # "module:function" building the model's fast CPU view (same parameters and outputs)

    def fast_view(self) -> Callable[..., nn.Module] | None:
        """The fast-view factory ``f(model, mode, **kw)`` this model declares, imported on demand (or None)."""
        if self.fast is None:
            return None
        module, _, func = self.fast.partition(":")
        return getattr(importlib.import_module(module), func)


_REGISTRY: dict[str, ModelEntry] = {}
_PROVIDERS = ("egeunet.variants", "baselines")
_loaded = False


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(
    name: str,
    *,
    family: str,
    params: int | None = None,
    thop_macs: int | None = None,
    macs_rel_tol: float = 0.0,
    description: str = "",
    switches: dict[str, Any] | None = None,
    heavy: bool = False,
    min_side: int = 32,
    non_square: tuple[int, int] = (64, 96),
    fast: str | None = None,
) -> Callable[[Constructor], Constructor]:
    """Decorator adding a constructor to the registry under ``name``."""

    def deco(fn: Constructor) -> Constructor:
        if name in _REGISTRY and _REGISTRY[name].constructor is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name=name,
            constructor=fn,
            family=family,
            params=params,
            thop_macs=thop_macs,
            macs_rel_tol=macs_rel_tol,
            description=description or _first_line(fn.__doc__),
            switches=dict(switches or {}),
            heavy=heavy,
            min_side=min_side,
            non_square=non_square,
            fast=fast,
        )
        return fn

    return deco


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _PROVIDERS:
            importlib.import_module(mod)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names (in registration order), optionally filtered by a glob pattern."""
    _ensure_loaded()
    names = list(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; unknown names raise with the valid list."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}; valid names: {valid}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; keyword overrides go to its constructor."""
    return get_entry(name).constructor(**overrides)
