"""External evaluations in a suite's report: ``<results>/<suite>/external_<dataset>.csv`` / ``.tex`` (written by
``python -m studies.evaluate``) become a section of ``report.md`` and files of the report folder.

Per external dataset: the LaTeX table is copied to ``<out>/tables/external_<dataset>.tex`` and the run table to
``<out>/external_<dataset>.csv``; the section shows, per variant and training dataset, the seed count and the
mean pooled DSC / mIoU on the external set beside the in-domain pooled DSC, and the Spearman rank correlation of
the two rankings. Nothing is added when the suite has no external evaluation.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd

from studies.reporting.names import display_name

SUFFIXES = ("_per_image",)  # external_<dataset>_per_image.csv is not a run table


def external_tables(results_root: Path, suite: str) -> list[tuple[str, Path]]:
    """(dataset tag, run table) of every external evaluation of the suite, sorted by tag."""
    folder = Path(results_root) / suite
    out = []
    for csv in sorted(folder.glob("external_*.csv")):
        tag = csv.stem[len("external_"):]
        if not any(tag.endswith(s) for s in SUFFIXES):
            out.append((tag, csv))
    return out


def _rho(a: pd.Series, b: pd.Series) -> float:
    from scipy.stats import spearmanr

    ok = a.notna() & b.notna()
    if ok.sum() < 3 or a[ok].nunique() < 2 or b[ok].nunique() < 2:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def _pct(v: float) -> str:
    return "--" if pd.isna(v) else f"{100 * v:.2f}"


def external_section(results_root: Path, suite: str, out: Path) -> tuple[str, list[Path]]:
    """The Markdown section (empty without external evaluations) and the files copied into ``out``."""
    tables = external_tables(results_root, suite)
    if not tables:
        return "", []
    parts = ["## External evaluation", "",
             "Best checkpoint of every finished run on a dataset it never trained on (`python -m studies.evaluate`); "
             "mean over seeds, in %."]
    files: list[Path] = []
    for tag, csv in tables:
        df = pd.read_csv(csv, dtype={"config_hash": str})
        parts += ["", f"### {tag}", ""]
        if df.empty:
            parts.append("No run evaluated yet.")
            continue
        dest = out / f"external_{tag}.csv"
        shutil.copyfile(csv, dest)
        files.append(dest)
        tex = csv.with_suffix(".tex")
        if tex.is_file():
            (out / "tables").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tex, out / "tables" / tex.name)
            files.append(out / "tables" / tex.name)
        g = (df.groupby(["dataset", "variant", "model"], sort=False)
             .agg(n=("seed", "size"), dsc=("pooled_dsc", "mean"), miou=("pooled_miou", "mean"),
                  images=("n_images", "max"), dom=("in_domain_pooled_dsc", "mean")).reset_index())
        rows = [{"Variant": display_name(r.variant, r.model).replace("_", "\\_"), "Trained on": r.dataset,
                 "n": int(r.n), "images": int(r.images), "DSC": _pct(r.dsc), "mIoU": _pct(r.miou),
                 "In-domain DSC": _pct(r.dom)} for r in g.itertuples()]
        parts.append(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))
        for ds, sub in g.groupby("dataset", sort=False):
            rho = _rho(sub["dom"], sub["dsc"])
            verdict = f"ρ = {rho:.2f}" if math.isfinite(rho) else "not defined (fewer than 3 variants or a tie)"
            parts += ["", f"Spearman rank correlation of the in-domain and external rankings ({len(sub)} variants "
                          f"trained on {ds}): {verdict}."]
        if tex.is_file():
            parts += ["", f"LaTeX: `tables/{tex.name}`; runs: `{dest.name}`."]
    return "\n".join(parts) + "\n", files
