"""Study suites as short declarative tables: variants x datasets x seeds.

A suite names registered models (``zoo.registry``) and, optionally, a label for each (the macro
ablation calls ``egeunet_no_gab`` "+GHPA"). Expansion gives one :class:`RunSpec` per
(variant, dataset, seed); the run itself is identified by the engine's config hash, so a run that two
suites share (``egeunet`` on ISIC2018 with seed 0 is in every ablation) is trained once.

Defaults: ablations run on ISIC2018, ``compare`` on ISIC2017 and ISIC2018, ``smoke`` on synthetic data.
Every suite declares its default seed count per budget: 5 per table cell (docs/protocol.md §10), 3 at the
``cpu`` budget (:data:`CPU_BUDGET_SEEDS`), one at ``smoke`` unless seeds are given.

Models from outside the package (``package.module:callable`` or an ``egeunet.models`` entry point, see
``zoo.registry``) may be variants of a suite, with keyword arguments (a variant *key* then names model and
arguments, e.g. ``mypkg.net:build(width=8)``), and may join any suite through ``--variants``. Suites can
also be written as TOML files (:mod:`studies.suitefile`); :func:`get_suite` takes such a path too.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from engine.config import BUDGETS as _ENGINE_BUDGETS
from engine.data.loader import DATASETS
from engine.data.splits import PROTOCOLS

BUDGETS = tuple(_ENGINE_BUDGETS)  # the engine defines budgets, datasets and protocols; suites only name them

#: seeds per table cell at the ``cpu`` budget: the CPU evidence campaign's count (three one-thread runs of about
#: an hour each per cell on two cores); the ``paper`` budget keeps the protocol's 5
CPU_BUDGET_SEEDS = 3
DEFAULT_SEEDS_AT_BUDGET = {"cpu": CPU_BUDGET_SEEDS}


@dataclass(frozen=True)
class Suite:
    """One study: which variants, on which datasets, with how many seeds."""

    name: str
    description: str
    variants: tuple[str, ...]  # variant keys, in table order: registered model names (or see ``models``)
    datasets: tuple[str, ...] = ("isic2018",)
    seeds: int = 5  # docs/protocol.md §10: 5 seeds per table cell by default ...
    seeds_at_budget: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SEEDS_AT_BUDGET))  # ... but here
    budget: str = "cpu"  # default budget of the suite
    labels: dict[str, str] = field(default_factory=dict)  # variant key -> label shown in tables (default: the key)
    extra_at_budget: dict[str, tuple[str, ...]] = field(default_factory=dict)  # budget -> extra variants
    models: dict[str, str] = field(default_factory=dict)  # variant key -> model name, where they differ
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant key -> constructor kwargs
    reference: str | None = None  # the variant key every other variant is compared with (None: not declared)

    def model_of(self, key: str) -> str:
        """The model name of variant ``key`` (the key itself for a plain registered or outside model)."""
        return self.models.get(key, key)

    def overrides_of(self, key: str) -> dict[str, Any]:
        """The keyword arguments the model of variant ``key`` is built with (a copy; empty for none)."""
        return dict(self.overrides.get(key, {}))

    def variants_at(self, budget: str) -> tuple[str, ...]:
        """The variants run at ``budget`` (some heavy baselines join only at the ``paper`` budget)."""
        return self.variants + tuple(v for v in self.extra_at_budget.get(budget, ()) if v not in self.variants)

    def all_variants(self) -> tuple[str, ...]:
        extra = [v for vs in self.extra_at_budget.values() for v in vs]
        return self.variants + tuple(dict.fromkeys(v for v in extra if v not in self.variants))

    def label(self, model: str) -> str:
        return self.labels.get(model, model)

    def default_seed_count(self, budget: str) -> int:
        """Seeds per table cell this suite declares at ``budget`` (what runs when no seeds are given)."""
        return 1 if budget == "smoke" else self.seeds_at_budget.get(budget, self.seeds)

    def seeds_text(self) -> str:
        """The declaration in words, e.g. ``3 seeds at cpu, 5 at paper``."""
        counts = {b: self.default_seed_count(b) for b in BUDGETS if b != "smoke"}
        if len(set(counts.values())) == 1:
            n = next(iter(counts.values()))
            return f"{n} seed{'' if n == 1 else 's'}"
        return ", ".join(f"{n} seeds at {b}" if i == 0 else f"{n} at {b}" for i, (b, n) in enumerate(counts.items()))


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite, before it is turned into an engine ``RunConfig``."""

    suite: str
    variant: str  # label in the suite's table
    model: str  # registered model name
    dataset: str
    protocol: str
    budget: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)  # keyword arguments of the model

    @property
    def key(self) -> str:
        """The variant key: the model name, with its keyword arguments when it has some."""
        return variant_key(self.model, self.overrides)


def variant_key(model: str, overrides: dict[str, Any] | None = None) -> str:
    """``model``, or ``model(k=v, ...)`` (sorted keys) for a model built with keyword arguments."""
    if not overrides:
        return model
    return f"{model}({', '.join(f'{k}={overrides[k]!r}' for k in sorted(overrides))})"


def kwargs_problem(kwargs: Any) -> str | None:
    """Why ``kwargs`` cannot be a model's keyword arguments (None when it can).

    They go into the run's config and its hash, so they must be JSON data: a table of names to
    strings, booleans, integers, finite floats, lists and tables of those (tuples count as lists)."""
    if not isinstance(kwargs, dict):
        return f"keyword arguments must be a table of name = value, got {type(kwargs).__name__}"
    for k, v in kwargs.items():
        if not isinstance(k, str) or not k.isidentifier():
            return f"keyword argument name {k!r} is not a Python identifier"
        why = _value_problem(v)
        if why:
            return f"keyword argument {k}: {why}"
    return None


def _value_problem(v: Any) -> str | None:
    if v is None or isinstance(v, (bool, int, str)):
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else f"{v} is not a finite number"
    if isinstance(v, (list, tuple)):
        return next((w for w in map(_value_problem, v) if w), None)
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return "table keys must be strings"
        return next((w for w in map(_value_problem, v.values()) if w), None)
    return (f"a {type(v).__name__} value is not allowed (allowed: string, boolean, integer, float, "
            "list, table)")


def _plain(v: Any) -> Any:
    """Tuples as lists, recursively (what the run's config stores and a TOML array gives)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name(k=v, ...)`` -> (model name, keyword arguments).

    ``name`` is a registered model, an entry-point model or ``package.module:callable``; the values
    are Python literals (``width=8``, ``mode='fast'``, ``dims=[8, 16]``, ``flag=True``). Raises
    :class:`SuiteError` (one line) for anything else."""
    text = text.strip()
    if not text.endswith(")") or "(" not in text:
        if "(" in text or ")" in text:
            raise SuiteError(f"variant {text!r}: unbalanced parentheses; write MODEL or MODEL(k=v, ...)")
        return text, {}
    model, _, args = text.partition("(")
    model = model.strip()
    try:
        call = ast.parse(f"_({args}", mode="eval").body
    except SyntaxError:
        raise SuiteError(f"variant {text!r}: the arguments are not k=v, ... with Python literal values") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise SuiteError(f"variant {text!r}: write MODEL or MODEL(k=v, ...)")
    if call.args or any(k.arg is None for k in call.keywords):
        raise SuiteError(f"variant {text!r}: only keyword arguments (k=v) are allowed")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        try:
            kwargs[str(kw.arg)] = _plain(ast.literal_eval(kw.value))
        except (ValueError, SyntaxError, TypeError):
            raise SuiteError(f"variant {text!r}: the value of {kw.arg} is not a Python literal "
                             "(quote strings: mode='fast')") from None
    why = kwargs_problem(kwargs)
    if why:
        raise SuiteError(f"variant {text!r}: {why}")
    return model, kwargs


def split_variants(text: str) -> list[str]:
    """Split a ``--variants`` value at the commas outside parentheses, brackets, braces and quotes."""
    items: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [v.strip() for v in items if v.strip()]


def is_outside_model(name: str) -> bool:
    """True for a model from outside the package: ``module:callable`` or an entry-point registration."""
    from zoo.registry import UnknownModelError, get_entry, is_import_path

    if is_import_path(name):
        return True
    try:
        return get_entry(name).external
    except UnknownModelError:
        return False


def unknown_model_message(model: str) -> str:
    """The one-line error for a model name nobody registered (with a failed plug-in's reason, if any)."""
    from zoo.registry import list_models, plugin_errors

    why = plugin_errors().get(model)
    if why:
        return f"unknown model {model!r}: {why}"
    return (f"unknown model {model!r}; valid models: {', '.join(sorted(list_models(outside=True)))} "
            "(or an outside model as package.module:callable)")


def _s(*names: str) -> tuple[str, ...]:
    return tuple(names)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "smoke",
            "tiny end-to-end check on synthetic data (seconds per run)",
            _s("egeunet", "egeunet_no_gab", "egeunet_no_ds"),
            datasets=("synthetic",),
            seeds=1,
            seeds_at_budget={},
            budget="smoke",
        ),
        Suite(
            "compare",
            "EGE-UNet against the baselines (TransFuse-S joins at the paper budget)",
            _s("egeunet", "unet32", "unext_s", "unext", "malunet", "transfuse_lite"),
            datasets=("isic2017", "isic2018"),
            extra_at_budget={"paper": ("transfuse_s",)},
        ),
        Suite(
            "ablation_macro",
            "macro ablation: plain U-shape, +GHPA, +GAB, both (= EGE-UNet)",
            _s("egeunet_plain_unet", "egeunet_no_gab", "egeunet_plain_conv", "egeunet"),
            labels={
                "egeunet_plain_unet": "baseline",
                "egeunet_no_gab": "+GHPA",
                "egeunet_plain_conv": "+GAB",
                "egeunet": "+GHPA+GAB",
            },
        ),
        Suite(
            "ablation_ghpa",
            "GHPA micro-ablation: branches, axes, groups, plain conv",
            _s("egeunet", "egeunet_no_xy", "egeunet_no_zx", "egeunet_no_zy", "egeunet_no_dw",
               "egeunet_only_xy", "egeunet_ghpa_g2", "egeunet_ghpa_g8", "egeunet_plain_conv"),
        ),
        Suite(
            "ablation_gab",
            "GAB micro-ablation: mask, dilations, groups, no GAB",
            _s("egeunet", "egeunet_gab_no_mask", "egeunet_gab_dil_1111", "egeunet_gab_dil_1234",
               "egeunet_gab_dil_2468", "egeunet_gab_g1", "egeunet_no_gab"),
        ),
        Suite(
            "ablation_ds",
            "deep-supervision ablation: off, unsupervised heads, uniform and reversed weights",
            _s("egeunet", "egeunet_no_ds", "egeunet_ds_unsup", "egeunet_ds_uniform", "egeunet_ds_reversed"),
        ),
        Suite(
            "width",
            "channel-width scaling x0.5 ... x2",
            _s("egeunet_x0_5", "egeunet_x0_75", "egeunet", "egeunet_x1_5", "egeunet_x2"),
        ),
    ]
}

DEFAULT_SUITE = "smoke"


class SuiteError(ValueError):
    """A name the user gave is not known; the message lists the valid ones (CLIs exit 2)."""


def is_suite_file(name: str) -> bool:
    """True when ``name`` is meant as a suite file (ends in ``.toml``) rather than a built-in suite name."""
    return str(name).lower().endswith(".toml")


def get_suite(name: str) -> Suite:
    """The built-in suite ``name``, or the suite declared by the TOML file ``name`` (a path ending in .toml)."""
    if is_suite_file(name):
        from studies.suitefile import load_suite

        return load_suite(name)
    try:
        return SUITES[name]
    except KeyError:
        hint = "; a suite file is a path ending in .toml" if ("/" in name or "." in name) else ""
        raise SuiteError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}{hint}") from None


def dataset_problem(name: str) -> str | None:
    """Why ``name`` is not a dataset a suite can run on (None when it is): the one check of suites and files."""
    from engine.data import is_dataset_name

    if name not in DATASETS and not (name.startswith("folder:") and is_dataset_name(name)):
        return f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}, folder:PATH"
    return None


def expand(
    suite: Suite | str,
    *,
    budget: str | None = None,
    datasets: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    protocol: str = "clean",
    variants: Iterable[str] | None = None,
) -> list[RunSpec]:
    """All runs of ``suite`` (variants x datasets x seeds), in table order.

    ``variants`` restricts the suite to a subset: variant keys or labels of the suite, or models from
    outside the package (``module:callable``, entry-point names), which join the suite for this call.
    """
    s = get_suite(suite) if isinstance(suite, str) else suite
    budget = budget or s.budget
    if budget not in BUDGETS:
        raise SuiteError(f"unknown budget {budget!r}; valid budgets: {', '.join(BUDGETS)}")
    if protocol not in PROTOCOLS:
        raise SuiteError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    from engine.data import canonical_dataset

    ds = tuple(canonical_dataset(d) if d.startswith("folder:") else d
               for d in (tuple(datasets) if datasets else s.datasets))
    for d in ds:
        why = dataset_problem(d)
        if why:
            raise SuiteError(why)
    seed_list = tuple(seeds) if seeds is not None else tuple(range(s.default_seed_count(budget)))
    keys = s.variants_at(budget)
    models, overrides = dict(s.models), {k: dict(v) for k, v in s.overrides.items()}
    if variants is not None:
        wanted = [_resolve_variant(s, v, models, overrides) for v in variants]
        keys = tuple(k for k in s.all_variants() if k in wanted) + tuple(
            dict.fromkeys(k for k in wanted if k not in s.all_variants()))
    return [
        RunSpec(s.name, s.label(k), models.get(k, k), d, protocol, budget, int(seed), dict(overrides.get(k, {})))
        for d in ds
        for k in keys
        for seed in seed_list
    ]


def _resolve_variant(s: Suite, text: str, models: dict[str, str], overrides: dict[str, dict[str, Any]]) -> str:
    """The variant key ``text`` asks for in ``s``: a key or label of the suite, or an outside model (with
    keyword arguments) that joins the suite; it is added to ``models`` / ``overrides``."""
    from zoo.registry import list_models

    if text in s.all_variants():
        return text
    by_label = {s.label(k): k for k in s.all_variants()}
    if text in by_label:
        return by_label[text]
    model, kw = parse_variant(text)
    key = variant_key(model, kw)
    if key in s.all_variants():
        return key
    if is_outside_model(model):
        if key != model:
            models[key] = model
        if kw:
            overrides[key] = kw
        return key
    if model in list_models():
        raise SuiteError(
            f"variant {text!r} is not in suite {s.name!r}; its variants: {', '.join(s.all_variants())} "
            "(models from outside the package, module:callable or entry points, may join any suite)")
    raise SuiteError(unknown_model_message(model))


def check_models_registered(models: Iterable[str | RunSpec]) -> None:
    """Raise :class:`SuiteError` naming the first model the registry does not know, with the valid list.

    Items are model names (``name`` or ``name(k=v, ...)``) or :class:`RunSpec` s. A model from outside the
    package is imported, built (with the run's keyword arguments) and checked against the output contract,
    once per variant key; a package model given keyword arguments is built with them. A failure is one
    line naming the callable."""
    from zoo.registry import ExternalModelError, UnknownModelError, create_model, list_models

    known = set(list_models())
    seen: set[str] = set()
    for item in models:
        m, kw = (item.model, item.overrides) if isinstance(item, RunSpec) else parse_variant(item)
        if variant_key(m, kw) in seen:
            continue
        seen.add(variant_key(m, kw))
        outside = is_outside_model(m)
        if not outside and m not in known:
            raise SuiteError(unknown_model_message(m))
        if not outside and not kw:
            continue
        try:
            create_model(m, **kw)
        except (ExternalModelError, UnknownModelError) as e:
            raise SuiteError(str(e)) from None
        except (TypeError, ValueError) as e:  # a package model's constructor refusing the arguments
            args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
            raise SuiteError(f"model {m!r}: calling it with ({args}) failed: {type(e).__name__}: {e}") from None
