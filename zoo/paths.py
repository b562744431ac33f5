"""Which CPU training path pays for a registered model: its declared fast view, or ``torch.compile``.

The facts are the committed measurements of ``python -m studies.bench --cases paths --paths
channels_last,compiled`` (``results/bench/paths_cpu.csv``): per model, the training-step ratio of the
channels-last view and of the compiled model against the plain eager step (medians with 95 % intervals), the
plain step's images/s and the seconds the first compiled step took.

Compilation is a fixed cost paid again by every session of a run (and once more per new input shape: the last
short batch of an epoch, the evaluation forward), so it pays only for runs long enough to win it back:

    compile  iff  compiled beats channels-last outright (its whole interval above the view's)
             and  planned images x (1/r_view - 1/r_compiled) / plain images/s  >  COMPILE_SETUP_FACTOR x compile s

with the per-image times scaled by the pixel count from the measured side to the run's. A model without rows
in the file (EGE-UNet: its fast path is :mod:`egeunet.fast`; outside models), or a checkout without the file,
keeps its declared view; a model that declares no view trains plain (compiling is weighed only against a
declared view: :func:`engine.fastview.choose_view` is asked only for fast-path runs).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PATHS_CSV", "COMPILE_SETUP_FACTOR", "PathMeasurement", "measurements", "break_even_images", "compile_pays",
           "choose_path"]

PATHS_CSV = Path(__file__).resolve().parents[1] / "results" / "bench" / "paths_cpu.csv"

#: compilations a run pays, in units of the measured first-step compile: the training step at the batch size and
#: at the last short batch's size, plus two evaluation forwards (about a third of a training compile each)
COMPILE_SETUP_FACTOR = 3.0


@dataclass(frozen=True)
class PathMeasurement:
    """One model's row set of ``paths_cpu.csv``."""

    model: str
    size: int
    plain_img_per_s: float
    view_ratio: float
    view_ci: tuple[float, float]
    compiled_ratio: float
    compiled_ci: tuple[float, float]
    compile_s: float

    def saved_s(self, planned_images: int, size: int) -> float:
        """Seconds the compiled step saves over the view's on ``planned_images`` training images at ``size``."""
        per_image = (size / self.size) ** 2 / self.plain_img_per_s
        return planned_images * per_image * (1.0 / self.view_ratio - 1.0 / self.compiled_ratio)


def measurements(path: Path | str | None = None) -> dict[str, PathMeasurement]:
    """Per model, the measured facts in ``path`` (default :data:`PATHS_CSV`; models without a reference, a
    channels_last and a compiled row are left out; no file: none)."""
    path = Path(path) if path is not None else PATHS_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("case") == "path"]
    by_model: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["candidate"]] = r
    out: dict[str, PathMeasurement] = {}
    for model, c in by_model.items():
        if not {"reference", "channels_last", "compiled"} <= c.keys():
            continue
        try:
            out[model] = PathMeasurement(
                model=model, size=int(c["compiled"]["size"]),
                plain_img_per_s=float(c["reference"]["img_per_s"]),
                view_ratio=float(c["channels_last"]["ratio_vs_reference"]),
                view_ci=(float(c["channels_last"]["ratio_ci_low"]), float(c["channels_last"]["ratio_ci_high"])),
                compiled_ratio=float(c["compiled"]["ratio_vs_reference"]),
                compiled_ci=(float(c["compiled"]["ratio_ci_low"]), float(c["compiled"]["ratio_ci_high"])),
                compile_s=float(c["compiled"]["setup_s"]))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: the rows of model {model!r} are malformed ({e}); re-run "
                             "python -m studies.bench --cases paths --paths channels_last,compiled") from None
    return out


def break_even_images(m: PathMeasurement, size: int) -> float:
    """Training images at ``size`` after which compiling has paid for itself (``inf``: never, when the compiled
    step does not beat the view's outright)."""
    if m.compiled_ci[0] <= m.view_ci[1]:
        return math.inf
    return COMPILE_SETUP_FACTOR * m.compile_s / m.saved_s(1, size)


def compile_pays(m: PathMeasurement, planned_images: int, size: int) -> bool:
    """The rule of the module docstring for one model and one run."""
    return planned_images > break_even_images(m, size)


def choose_path(model: str, planned_images: int, size: int, path: Path | str | None = None) -> str:
    """``"compiled"`` when compiling pays for this run of ``model``, else ``"declared"`` (the registry's view)."""
    m = measurements(path).get(model)
    return "compiled" if m is not None and compile_pays(m, planned_images, size) else "declared"
