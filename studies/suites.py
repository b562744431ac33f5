"""Study suites as short declarative tables: variants x datasets x seeds.

A suite names registered models (``zoo.registry``) and, optionally, a label for each (the macro
ablation calls ``egeunet_no_gab`` "+GHPA"). Expansion gives one :class:`RunSpec` per
(variant, dataset, seed); the run itself is identified by the engine's config hash, so a run that two
suites share (``egeunet`` on ISIC2018 with seed 0 is in every ablation) is trained once.

Defaults: ablations run on ISIC2018, ``compare`` on ISIC2017 and ISIC2018, ``smoke`` on synthetic data.
Every suite declares its default seed count; the ``smoke`` budget runs one seed unless seeds are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

BUDGETS = ("smoke", "cpu", "paper")
PROTOCOLS = ("clean", "paper")
DATASETS = ("isic2018", "isic2017", "ph2", "synthetic")


@dataclass(frozen=True)
class Suite:
    """One study: which variants, on which datasets, with how many seeds."""

    name: str
    description: str
    variants: tuple[str, ...]  # registered model names, in table order
    datasets: tuple[str, ...] = ("isic2018",)
    seeds: int = 5  # docs/protocol.md §10: 5 seeds per table cell by default
    budget: str = "cpu"  # default budget of the suite
    labels: dict[str, str] = field(default_factory=dict)  # model -> label shown in tables (default: model name)
    extra_at_budget: dict[str, tuple[str, ...]] = field(default_factory=dict)  # budget -> extra variants

    def variants_at(self, budget: str) -> tuple[str, ...]:
        """The variants run at ``budget`` (some heavy baselines join only at the ``paper`` budget)."""
        return self.variants + tuple(v for v in self.extra_at_budget.get(budget, ()) if v not in self.variants)

    def all_variants(self) -> tuple[str, ...]:
        extra = [v for vs in self.extra_at_budget.values() for v in vs]
        return self.variants + tuple(dict.fromkeys(v for v in extra if v not in self.variants))

    def label(self, model: str) -> str:
        return self.labels.get(model, model)

    def default_seed_count(self, budget: str) -> int:
        return 1 if budget == "smoke" else self.seeds


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


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise SuiteError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}") from None


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

    ``variants`` restricts the suite to a subset (names must belong to it).
    """
    s = get_suite(suite) if isinstance(suite, str) else suite
    budget = budget or s.budget
    if budget not in BUDGETS:
        raise SuiteError(f"unknown budget {budget!r}; valid budgets: {', '.join(BUDGETS)}")
    if protocol not in PROTOCOLS:
        raise SuiteError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    ds = tuple(datasets) if datasets else s.datasets
    for d in ds:
        if d not in DATASETS:
            raise SuiteError(f"unknown dataset {d!r}; valid datasets: {', '.join(DATASETS)}")
    seed_list = tuple(seeds) if seeds is not None else tuple(range(s.default_seed_count(budget)))
    models = s.variants_at(budget)
    if variants is not None:
        wanted = tuple(variants)
        for v in wanted:
            if v not in s.all_variants():
                raise SuiteError(
                    f"variant {v!r} is not in suite {s.name!r}; its variants: {', '.join(s.all_variants())}"
                )
        models = tuple(m for m in s.all_variants() if m in wanted)
    return [
        RunSpec(s.name, s.label(m), m, d, protocol, budget, int(seed))
        for d in ds
        for m in models
        for seed in seed_list
    ]


def check_models_registered(models: Iterable[str]) -> None:
    """Raise :class:`SuiteError` naming the first model the registry does not know, with the valid list."""
    from zoo.registry import list_models

    known = set(list_models())
    for m in models:
        if m not in known:
            raise SuiteError(f"unknown model {m!r}; valid models: {', '.join(sorted(known))}")
