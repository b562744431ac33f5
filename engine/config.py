"""What defines a run: the training recipe, the named budgets and the run config with its hash.

**Recipe** (:class:`Recipe`, paper defaults, docs/protocol.md §4): AdamW (lr 1e-3, betas (0.9, 0.999),
eps 1e-8, weight decay 1e-2, one parameter group); CosineAnnealingLR(T_max = 50, eta_min = 1e-5)
stepped once after every epoch -- with 300 epochs this cosine is *periodic with period 100 epochs*
(lr = 1e-3 at epochs 1, 101, 201; 1e-5 at epochs 51, 151, 251), kept on purpose in both protocols
(T_max = epochs is an ablation); 300 epochs, batch 8 (shuffled, last partial batch kept), 256 x 256
inputs scaled per image to [0, 255]; loss ``model_loss`` with ``model.loss_weights`` (GT-BceDice for
EGE-UNet); AMP (float16 autocast + GradScaler) on CUDA only (the official code has none: ``amp=False``
restores it); ``paper_quirks`` = one rotation angle for the whole run (the official config's quirk).
Model selection on ``val`` by the lowest val loss (``selection="val_loss"``, as the official
``best.pth``; any summary key such as ``"pooled_dsc"`` selects by its highest val value); under the
``paper`` protocol ``val`` is the test set (labelled in every record).

**Budgets** (:data:`BUDGETS`) override the recipe: ``smoke`` (64 x 64, 2 epochs, batch 4, 16 train /
8 val / 8 test images: plumbing checks only), ``cpu`` (224 x 224, 50 epochs: exactly the first
half-period of the official cosine, sized for CPU-only campaigns; timings in docs/performance.md),
``paper`` (the full recipe: 256 x 256, 300 epochs). ``RunConfig.recipe`` overrides win over the budget.
Metrics of ``cpu`` runs are at 224 x 224: they are labelled with that resolution.

**Config hash** (:meth:`RunConfig.config_hash`): the first 12 hex digits of sha256 over the canonical
JSON of the fully resolved config (recipe after budget and overrides, data fingerprint included). It
names the run record ``<results>/runs/<config_hash>/``; :data:`CONFIG_SCHEMA` is part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from engine.evaluate import parse_eval_target
from engine.metrics import SUMMARY_KEYS

__all__ = ["Recipe", "Budget", "BUDGETS", "RunConfig", "lr_at_epoch", "CONFIG_SCHEMA"]

#: part of every config hash: bump only when the meaning of a stored config changes
CONFIG_SCHEMA = 1


@dataclass(frozen=True)
class Recipe:
    """The training recipe; defaults = the official EGE-UNet code (docs/protocol.md §4). See the module docstring.

    ``max_train_images`` / ``max_eval_images`` keep the first images of the train / val / test splits
    (budgets only; None = all). ``max_loss``: a training step loss above it counts as divergence.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t_max: int = 50
    eta_min: float = 1e-5
    epochs: int = 300
    batch_size: int = 8
    size: int = 256
    amp: bool = True
    paper_quirks: bool = False
    selection: str = "val_loss"
    max_train_images: int | None = None
    max_eval_images: int | None = None
    max_loss: float = 1e4

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("lr", "weight_decay", "eps", "eta_min", "max_loss"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.epochs < 1 or self.batch_size < 1 or self.t_max < 1 or self.size < 1:
            raise ValueError(f"epochs, batch_size, t_max and size must be positive: {self}")
        if self.selection != "val_loss" and self.selection not in SUMMARY_KEYS:
            raise ValueError(f"selection must be 'val_loss' or one of {', '.join(SUMMARY_KEYS)}, "
                             f"got {self.selection!r}")

    def replace(self, **changes: Any) -> "Recipe":
        """This recipe with ``changes``; an unknown field name is a ``ValueError`` listing the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; valid: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``betas`` as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def lr_at_epoch(recipe: Recipe, epoch: int) -> float:
    """Closed form of the learning rate used in (1-based) ``epoch``: periodic cosine, period 2 * t_max."""
    return recipe.eta_min + 0.5 * (recipe.lr - recipe.eta_min) * (1 + math.cos(math.pi * (epoch - 1) / recipe.t_max))


@dataclass(frozen=True)
class Budget:
    """A named compute budget: recipe fields it overrides, and what it is for."""

    name: str
    description: str
    recipe: dict[str, Any] = field(default_factory=dict)

    def apply(self, recipe: Recipe) -> Recipe:
        """``recipe`` with this budget's overrides."""
        return recipe.replace(**self.recipe)


BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", "seconds: 64 x 64, 2 epochs, 16 train / 8 eval images (plumbing checks only)",
                    {"size": 64, "epochs": 2, "batch_size": 4, "max_train_images": 16, "max_eval_images": 8}),
    "cpu": Budget("cpu", "CPU-only campaigns: 224 x 224, 50 epochs (T_max 50: one half-period of the cosine)",
                  {"size": 224, "epochs": 50}),
    "paper": Budget("paper", "the official recipe: 256 x 256, 300 epochs, batch 8", {}),
}

_PROTOCOL_ALIASES = {"official": "paper", "paper": "paper", "clean": "clean"}


@dataclass
class RunConfig:
    """Everything that defines a run. ``recipe``: overrides of :class:`Recipe` fields (win over the budget).

    ``external_test``: extra evaluations of the selected checkpoint, each ``"dataset"`` or
    ``"dataset:split"`` (split default ``test``), e.g. ``("ph2",)`` for an ISIC-trained model; checked
    by ``engine.data.check_eval_allowed`` before training starts. ``data``: the data fingerprint id
    (empty: filled by ``run_training`` from the data it finds).
    """

    model: str = "egeunet"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "isic2018"
    protocol: str = "clean"
    budget: str = "cpu"
    seed: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    external_test: tuple[str, ...] = ()
    data: str = ""

    def __post_init__(self) -> None:
        self.dataset = str(self.dataset).lower()
        self.data = str(self.data or "")
        if not self.data and self.dataset == "synthetic":  # its identity needs no folder
            from engine.data import data_fingerprint

            self.data = data_fingerprint("synthetic").id
        proto = str(self.protocol).lower()
        if proto not in _PROTOCOL_ALIASES:
            raise ValueError(f"unknown protocol {self.protocol!r}; valid: clean, paper (alias official)")
        self.protocol = _PROTOCOL_ALIASES[proto]
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; valid: {', '.join(BUDGETS)}")
        self.seed = int(self.seed)
        self.model_overrides = dict(self.model_overrides or {})
        self.recipe = dict(self.recipe or {})
        self.external_test = tuple(self.external_test or ())
        self.resolved_recipe()  # validate now

    def resolved_recipe(self) -> Recipe:
        """Paper recipe -> budget overrides -> this config's overrides."""
        return BUDGETS[self.budget].apply(Recipe()).replace(**self.recipe)

    def to_dict(self) -> dict[str, Any]:
        """The full resolved config (what ``config.json`` holds and the hash covers)."""
        return _canonical({
            "schema": CONFIG_SCHEMA,
            "model": self.model,
            "model_overrides": self.model_overrides,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "budget": self.budget,
            "seed": self.seed,
            "recipe": self.resolved_recipe().to_dict(),
            "external_test": [":".join(parse_eval_target(t)) for t in self.external_test],
            "data": self.data,
        })

    def with_data(self, root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> "RunConfig":
        """This config with ``data`` set to the fingerprint of the dataset found under ``root``."""
        from engine.data import data_fingerprint

        return dataclasses.replace(self, data=data_fingerprint(self.dataset, self.protocol, root, cache_dir).id)

    def config_hash(self) -> str:
        """First 12 hex digits of sha256 over the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict` (the stored recipe becomes the overrides; the hash is unchanged)."""
        return cls(model=d["model"], model_overrides=dict(d.get("model_overrides", {})), dataset=d["dataset"],
                   protocol=d["protocol"], budget=d["budget"], seed=d["seed"], recipe=dict(d.get("recipe", {})),
                   external_test=tuple(d.get("external_test", ())), data=d.get("data", ""))


def _canonical(obj: Any) -> Any:
    """JSON-stable form: tuples -> lists, dict keys -> str (keys are sorted when dumped)."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj
