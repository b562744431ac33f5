"""A registry of named, zero-logic model constructors (EGE-UNet, its ablation variants, baselines).

A constructor is registered with the facts a test can check exactly::

    @register_model("unext_s", family="unext", params=253_561, thop_macs=103_800_000)
    def unext_s(**overrides) -> nn.Module:
        return UNeXt(UNeXtConfig.small().replace(**overrides))

``params`` is ``sum(p.numel())`` at the default input; ``thop_macs`` the legacy-thop
multiply-accumulate count at 1x3x256x256 (the papers' "GFLOPs" convention) and
``macs_rel_tol`` how close the counted value must be (0 = exact).

Models from outside the package
-------------------------------
* **By import path.** ``get_entry`` / ``create_model`` accept a name of the form
  ``"package.module:callable"`` directly: the module is imported on demand and the callable (a function
  or class returning an ``nn.Module``; dotted attributes such as ``Net.build`` allowed) becomes an
  entry of family ``"external"``. Keyword arguments go to the callable (``create_model(name, width=8)``),
  so they travel in the engine's ``RunConfig.model_overrides`` and are covered by the run's hash.
  Worker processes import the module themselves, so it must be importable there (installed, or on
  ``PYTHONPATH`` / the current folder).
* **By entry point.** Installed distributions may declare entry points in the group
  ``egeunet.models`` (:data:`ENTRY_POINT_GROUP`); they are discovered with
  ``importlib.metadata.entry_points`` the first time the registry is used. Each entry point is one of:

  - ``name = "package.module:callable"`` - the callable is registered under the entry point's name
    (family ``"external"``), loaded lazily on first use;
  - ``anything = "package.module"`` (no ``:``) - the module is imported and registers its models itself
    with ``@register_model`` (so it can record params, MACs, family and switches like the built-ins).

  A plug-in never replaces a built-in name; a plug-in that fails to load does not break the registry
  (its error is shown when its name is asked for, and by :func:`plugin_errors`). ``list_models()``
  lists the package's own models; ``list_models(outside=True)`` adds the plug-ins' models.

Every model built from outside the package is checked against the output contract
(:mod:`zoo.contract`) by :func:`check_contract` when it is created: an ``nn.Module`` whose forward
on a 1 x 3 x 64 x 64 image returns a :class:`~zoo.contract.SegOutput` (or a bare logit tensor, or a
``(logits, aux)`` tuple) with 1-channel logits at input resolution. A violation raises
:class:`ModelContractError` with one line naming the callable.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
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
    source: str = "package"  # "package", or where an outside model came from (entry point, import path)

    def fast_view(self) -> Callable[..., nn.Module] | None:
        """The fast-view factory ``f(model, mode, **kw)`` this model declares, imported on demand (or None)."""
        if self.fast is None:
            return None
        module, _, func = self.fast.partition(":")
        return getattr(importlib.import_module(module), func)

    @property
    def external(self) -> bool:
        """True for a model from outside the package (entry point or ``module:callable``)."""
        return self.source != "package"


ENTRY_POINT_GROUP = "egeunet.models"
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

_REGISTRY: dict[str, ModelEntry] = {}
_PROVIDERS = ("egeunet.variants", "baselines")
_loaded = False
_source = "package"  # what register_model records as the source while a provider is imported
_EXTERNAL: dict[str, ModelEntry] = {}  # "module:callable" names, imported on demand
_PLUGIN_ERRORS: dict[str, str] = {}  # entry point name -> one-line reason it did not load


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class ExternalModelError(ValueError):
    """A model from outside the package cannot be imported or built (one line naming the callable)."""


class ModelContractError(ExternalModelError):
    """An outside model does not follow the output contract of :mod:`zoo.contract`."""


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
            source=_source,
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
        _load_entry_points()


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _load_entry_points() -> None:
    """Register the models of the installed ``egeunet.models`` entry points (see the module docstring)."""
    global _source
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value}"
        if ep.attr is None:  # a module that registers its models with @register_model
            _source = where
            try:
                importlib.import_module(ep.module)
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the registry
                _PLUGIN_ERRORS[ep.name] = f"{where} failed to import: {_one_line(e)}"
            finally:
                _source = "package"
        elif ep.name in _REGISTRY:
            _PLUGIN_ERRORS[ep.name] = f"{where} ignored: {ep.name!r} is already a registered model"
        else:
            _REGISTRY[ep.name] = ModelEntry(name=ep.name, constructor=_lazy(ep.name, ep.value, ep.load),
                                            family="external", description=f"outside model ({ep.value})",
                                            source=where)


def _lazy(name: str, target: str, load: Callable[[], Any]) -> Constructor:
    """A constructor that imports ``target`` on its first call (entry points are loaded lazily)."""
    loaded: list[Any] = []

    def construct(**overrides: Any) -> nn.Module:
        if not loaded:
            try:
                fn = load()
            except Exception as e:  # noqa: BLE001
                raise ExternalModelError(f"model {name!r}: cannot load {target}: {_one_line(e)}") from None
            if not callable(fn):
                raise ExternalModelError(f"model {name!r}: {target} is a {type(fn).__name__}, not a callable")
            loaded.append(fn)
        return loaded[0](**overrides)

    construct.__qualname__ = construct.__name__ = target
    return construct


def plugin_errors() -> dict[str, str]:
    """Entry points of the ``egeunet.models`` group that did not load: name -> one-line reason."""
    _ensure_loaded()
    return dict(_PLUGIN_ERRORS)


def is_import_path(name: str) -> bool:
    """True for a ``package.module:callable`` name (an outside model imported on demand)."""
    return bool(_IMPORT_PATH.match(name))


def _import_path_entry(name: str) -> ModelEntry:
    """The entry of a ``module:callable`` name: imports the module, resolves the (dotted) attribute."""
    if name in _EXTERNAL:
        return _EXTERNAL[name]
    module, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure becomes one line naming the model
        raise ExternalModelError(f"model {name!r}: cannot import module {module!r}: {_one_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExternalModelError(f"model {name!r}: {getattr(obj, '__name__', module)!s} has no attribute "
                                     f"{part!r}") from None
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExternalModelError(f"model {name!r}: {attr} is a {type(obj).__name__}, not a callable "
                                 "returning an nn.Module")
    entry = ModelEntry(name=name, constructor=obj, family="external",
                       description=_first_line(obj.__doc__) or f"outside model ({name})", source=name)
    _EXTERNAL[name] = entry
    return entry


def list_models(pattern: str | None = None, *, outside: bool = False) -> list[str]:
    """Registered names (in registration order), optionally filtered by a glob pattern.

    The package's own models only, unless ``outside``: then the models of installed ``egeunet.models``
    entry points too (an installed plug-in never changes what the package's own checks iterate over).
    ``module:callable`` names are never listed (they are not registered, only imported on demand)."""
    _ensure_loaded()
    names = [n for n, e in _REGISTRY.items() if outside or not e.external]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; unknown names raise with the valid list."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    if is_import_path(name):
        return _import_path_entry(name)
    if name in _PLUGIN_ERRORS:
        raise UnknownModelError(f"unknown model {name!r}: {_PLUGIN_ERRORS[name]}")
    valid = ", ".join(sorted(_REGISTRY))
    raise UnknownModelError(f"unknown model {name!r}; valid names: {valid} "
                            "(or an outside model as package.module:callable)") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; keyword overrides go to its constructor.

    A model from outside the package (entry point, ``module:callable``) is checked against the
    output contract (:func:`check_contract`) before it is returned."""
    entry = get_entry(name)
    if not entry.external:
        return entry.constructor(**overrides)
    target = repr(name) if entry.source == name else f"{name!r} ({entry.source})"
    try:
        model = entry.constructor(**overrides)
    except ExternalModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a failing outside constructor is named in one line
        args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ExternalModelError(f"model {target}: calling it with ({args}) failed: {_one_line(e)}") from None
    check_contract(model, target)
    return model


PROBE_SHAPE = (1, 3, 64, 64)


def check_contract(model: Any, name: str) -> None:
    """Raise :class:`ModelContractError` (one line naming ``name``) unless ``model`` follows the contract.

    ``model`` must be an ``nn.Module`` whose forward on a 1 x 3 x 64 x 64 image returns what
    :func:`zoo.contract.as_seg_output` accepts (``SegOutput``, a bare logit tensor, or a ``(logits, aux)``
    tuple), with logits and every aux map 1 x 1 x 64 x 64, and, when it declares ``loss_weights``, one
    weight per output. The probe runs in eval mode without gradients on a fixed input (the global RNG
    is not touched), and the model's training mode is restored."""
    import torch

    from zoo.contract import as_seg_output

    def fail(what: str) -> None:
        raise ModelContractError(f"model {name} does not follow the model contract (zoo/contract.py): {what}")

    if not isinstance(model, nn.Module):
        fail(f"it returned a {type(model).__name__}, not a torch.nn.Module")
    x = torch.rand(PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001
        fail(f"forward on a {'x'.join(map(str, PROBE_SHAPE))} float image failed: {_one_line(e)}")
    finally:
        model.train(was_training)
    try:
        seg = as_seg_output(out)
    except TypeError:
        fail(f"forward returned {type(out).__name__}; return SegOutput(logits, aux), a logit tensor or a "
             "(logits, aux) tuple")
    want = (PROBE_SHAPE[0], 1, *PROBE_SHAPE[2:])
    for i, t in enumerate((seg.logits, *seg.aux)):
        what = "logits" if i == 0 else f"aux[{i - 1}]"
        if not isinstance(t, torch.Tensor):
            fail(f"{what} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != want:
            fail(f"{what} have shape {tuple(t.shape)}; want B x 1 x H x W at input resolution {want} "
                 "(one logit channel, no sigmoid)")
        if not t.is_floating_point():
            fail(f"{what} have dtype {t.dtype}; want floating-point logits")
    weights = getattr(model, "loss_weights", None)
    if weights is not None and len(tuple(weights)) != 1 + len(seg.aux):
        fail(f"loss_weights has {len(tuple(weights))} entries; want one per output (1 + {len(seg.aux)} aux)")
