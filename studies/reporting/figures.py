"""Report figures (PNG + PDF, one style, column width 3.5 in unless stated).

* params vs DSC bubble chart (x: params, log axis; y: pooled DSC; bubble area proportional to GMACs);
* ablation bar chart (pooled DSC relative to EGE-UNet, error bars = sample std over seeds, seeds as dots);
* training curves (training loss, validation loss, validation DSC vs epoch, mean over seeds);
* latency vs DSC with its Pareto front;
* the qualitative grid lives in :mod:`studies.reporting.qualitative`.

A figure that cannot be made (one variant, no latency, no history ...) returns an outcome with a ``note``
instead of files; nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from studies.reporting.labels import place_labels
from studies.reporting.style import (COLUMN_WIDTH, MUTED, OTHER_COLOR, REF_COLOR, figure_style, linestyle,
                                     palette, save)
from studies.reporting.tables import Table
from studies.reporting.names import display_name

import matplotlib.pyplot as plt  # noqa: E402  (backend chosen in style)

MAX_LABELS = 12  # label every point up to this many; beyond it the reference, best and worst only


@dataclass
class FigureOutcome:
    key: str
    title: str
    files: list[Path] = field(default_factory=list)
    caption: str = ""
    note: str | None = None  # set when the figure was skipped (and why)

    @property
    def made(self) -> bool:
        return bool(self.files)


def _skip(key: str, title: str, why: str) -> FigureOutcome:
    return FigureOutcome(key, title, [], "", why)


def _dsc(table: Table) -> tuple[pd.Series, pd.Series]:
    s = table.summary
    return s["pooled_dsc_mean"] * 100.0, s["pooled_dsc_std"] * 100.0


def _label_subset(values: pd.Series, reference: str | None, k: int = 3) -> list[str]:
    """All names when few; else the reference plus the k best and k worst."""
    if len(values) <= MAX_LABELS:
        return list(values.index)
    ranked = values.sort_values(ascending=False)
    keep = list(ranked.index[:k]) + list(ranked.index[-k:])
    if reference is not None:
        keep.append(reference)
    return [v for v in values.index if v in set(keep)]


# ---------------------------------------------------------------------------------------------- bubble chart


AREA_PER_PARAM = 0.8e-3  # pt² per parameter (53 K -> 43 pt², 250 K -> 200 pt²) unless the largest would exceed max


def bubble_areas(params: pd.Series, max_area: float = 900.0) -> pd.Series:
    """Marker areas (pt²) proportional to the parameter count: ``AREA_PER_PARAM`` per parameter, or less so
    that the largest model is ``max_area``. No floor, so 53 K and 250 K stay 4.7x apart in area (2.2x in
    diameter) whatever else is in the chart."""
    return params.astype(float) * area_scale(params, max_area)


def area_scale(params: pd.Series, max_area: float = 900.0) -> float:
    return min(AREA_PER_PARAM, max_area / float(params.max()))


def _legend_sizes(lo: float, hi: float, scale: float, cap: float = 260.0) -> list[float]:
    """Round parameter counts for the size legend: from the smallest model up, none drawn above ``cap`` pt²."""
    cands = [1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7]
    ok = [c for c in cands if c >= lo * 0.5 and c * scale <= cap]
    if len(ok) > 3:
        ok = [ok[0], ok[len(ok) // 2], ok[-1]]
    return ok or [lo]


def params_vs_dsc(table: Table, stem: Path) -> FigureOutcome:
    key, title = "params_dsc", "Parameters vs DSC (bubble area proportional to parameters)"
    s = table.summary
    ok = s["params_mean"].notna() & s["pooled_dsc_mean"].notna() & (s["params_mean"] > 0)
    if ok.sum() < 2:
        return _skip(key, title, "needs at least 2 variants with a parameter count and a test DSC")
    s = s[ok]
    ref = table.group.reference
    x = s["params_mean"]
    y, yerr = s["pooled_dsc_mean"] * 100, s["pooled_dsc_std"] * 100
    max_area = 900.0
    area = bubble_areas(x, max_area)
    names = {v: table.name(v) for v in s.index}
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9))
        for v in s.index:
            is_ref = v == ref
            ax.scatter(x[v], y[v], s=area[v], color=REF_COLOR if is_ref else OTHER_COLOR,
                       alpha=0.75 if is_ref else 0.4, edgecolor="black" if is_ref else OTHER_COLOR,
                       linewidth=0.7 if is_ref else 0.5, zorder=4 if is_ref else 3)
            ax.errorbar(x[v], y[v], yerr=yerr[v] if np.isfinite(yerr[v]) else None, fmt="o", ms=1.6,
                        color="#222222", ecolor="#222222", elinewidth=0.6, capsize=1.5, capthick=0.6, zorder=5)
        front = pareto_front(x.to_numpy(), y.to_numpy())
        fr = x[front].sort_values()
        ax.step(fr.to_numpy(), y[fr.index].to_numpy(), where="post", color="#444444", lw=0.8, ls="--", zorder=2)
        ax.set_xscale("log")
        lo, hi = float(x.min()), float(x.max())
        span = max(hi / lo, 1.0)
        pad = span ** 0.15 if span > 1.5 else 1.6
        ax.set_xlim(lo / pad, hi * pad)
        _param_ticks(ax.xaxis)
        ylo = float((y - yerr.fillna(0)).min())
        yhi = float((y + yerr.fillna(0)).max())
        ypad = max((yhi - ylo) * 0.25, 0.3)
        ax.set_ylim(ylo - ypad, yhi + ypad * 1.6)
        ax.set_xlabel("Parameters (log scale)")
        ax.set_ylabel("DSC, pooled (%)")
        ax.grid(True, which="major", axis="both")
        shown = _label_subset(y, ref)
        idx = [list(s.index).index(v) for v in shown]
        place_labels(ax, x.iloc[idx].to_numpy(), y.iloc[idx].to_numpy(), [names[v] for v in shown], fontsize=5.8,
                     colors=[REF_COLOR if v == ref else "#222222" for v in shown],
                     weights=["bold" if v == ref else "normal" for v in shown],
                     marker_radius_pt=[float(np.sqrt(area[v] / np.pi)) for v in shown],
                     yerr=yerr[shown].to_numpy(),
                     avoid=[(x[v], y[v], yerr[v]) for v in s.index if v not in shown])
        scale = area_scale(x, max_area)
        sizes = _legend_sizes(lo, hi, scale)
        handles = [ax.scatter([], [], s=c * scale, color=MUTED, alpha=0.4, edgecolor=MUTED) for c in sizes]
        handles.append(Line2D([], [], color="#444444", lw=0.8, ls="--"))
        ax.legend(handles, [_fmt_count(c) for c in sizes] + ["Pareto front"], loc="lower left",
                  bbox_to_anchor=(0.0, 1.0), ncol=len(handles), frameon=False, scatterpoints=1, borderpad=0.2,
                  handletextpad=0.4, columnspacing=0.9, borderaxespad=0.1, handlelength=2.0)
        fig.tight_layout()
        files = save(fig, stem)
    ns = sorted(set(int(n) for n in s["n"]))
    cap = ("Pooled test DSC against parameter count (log axis); marker area proportional to parameters (no "
           "minimum size); error bars: sample std over seeds"
           + (f" (n = {ns[0]})" if len(ns) == 1 else f" (n = {ns[0]}-{ns[-1]})")
           + ("; one seed, so no error bars" if ns == [1] else "")
           + "; dashed: Pareto front (no other variant is both smaller and more accurate)."
           + (f" {names[ref]} in vermillion." if ref in names else " No EGE-UNet run in this group."))
    if len(y) > MAX_LABELS:
        cap += " Only the reference and the three best and worst variants are labelled."
    return FigureOutcome(key, title, files, cap)


def _fmt_count(n: float) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}K"


def _param_ticks(axis) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_count(v)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))


def _plain_log_ticks(axis) -> None:
    """Decimal tick labels ('0.05', '2') on a log axis instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    lo, hi = sorted(axis.get_view_interval())
    span = hi / lo if lo > 0 else 100.0
    subs = (1.0, 2.0, 5.0) if span > 8 else (1.0, 2.0, 3.0, 5.0, 7.0) if span > 2.5 else tuple(range(1, 10))
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))


# ------------------------------------------------------------------------------------------ ablation bars


def ablation_bars(table: Table, stem: Path) -> FigureOutcome:
    key, title = "ablation", "Ablation chart: Δ pooled DSC of every variant to EGE-UNet"
    s = table.summary
    runs = table.group.runs
    ref = table.group.reference
    if ref is None or ref not in s.index or s["pooled_dsc_mean"].notna().sum() < 2:
        return _skip(key, title, "needs EGE-UNet and at least one other variant with a test DSC")
    tests = table.tests
    t = tests[tests["metric"] == "pooled_dsc"].set_index("variant") if not tests.empty else pd.DataFrame()
    ref_seed = runs[runs["variant"] == ref].set_index("seed")["pooled_dsc"]
    others = [v for v in s.index if v != ref and np.isfinite(s.at[v, "pooled_dsc_mean"])]
    delta, lo, hi, dots, marks = {}, {}, {}, {}, {}
    for v in others:
        seeds = runs[runs["variant"] == v].set_index("seed")["pooled_dsc"]
        paired = (seeds - ref_seed).dropna() * 100
        dots[v] = paired.to_numpy()
        if v in t.index:
            delta[v] = float(t.at[v, "diff"]) * 100
            lo[v], hi[v] = float(t.at[v, "ci_low"]) * 100, float(t.at[v, "ci_high"]) * 100
            marks[v] = str(t.at[v, "mark"])
        else:
            delta[v] = float(paired.mean()) if len(paired) else float(s.at[v, "pooled_dsc_mean"]
                                                                      - s.at[ref, "pooled_dsc_mean"]) * 100
            lo[v] = hi[v] = np.nan
            marks[v] = ""
    order = sorted(others, key=lambda v: delta[v])
    height = max(1.5, 0.65 + 0.2 * len(order))
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, height))
        ypos = np.arange(len(order))
        d = np.array([delta[v] for v in order])
        colours = ["#009E73" if marks[v] == "↑" else "#CC79A7" if marks[v] == "↓" else OTHER_COLOR for v in order]
        ax.barh(ypos, d, height=0.6, color=colours, alpha=0.75, zorder=2)
        has_ci = any(np.isfinite(lo[v]) for v in order)
        for yi, v in zip(ypos, order):
            if np.isfinite(lo[v]):
                ax.errorbar(delta[v], yi, xerr=[[delta[v] - lo[v]], [hi[v] - delta[v]]], fmt="none",
                            ecolor="#222222", elinewidth=0.7, capsize=1.8, capthick=0.7, zorder=4)
            if len(dots[v]):
                jitter = np.linspace(-0.15, 0.15, len(dots[v])) if len(dots[v]) > 1 else np.zeros(1)
                ax.scatter(dots[v], yi + jitter, s=5, color="black", zorder=5, linewidth=0)
        ax.axvline(0, color=REF_COLOR, lw=0.9, ls="--", zorder=1)
        if not has_ci:
            ax.text(0.99, 0.01, "one seed: no inference", transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=6, color="#555555", style="italic")
        ax.set_yticks(ypos)
        ax.set_yticklabels([table.name(v) + (f" {marks[v]}" if marks[v] else "") for v in order])
        sd = s.at[ref, "pooled_dsc_std"] * 100
        base = s.at[ref, "pooled_dsc_mean"] * 100
        ref_txt = f"{base:.2f}" + (f" ± {sd:.2f}" if np.isfinite(sd) else "") + " %"
        ax.set_xlabel(f"Δ pooled DSC to {table.name(ref)} (pp); {table.name(ref)} = {ref_txt}")
        vals = [x for v in order for x in [delta[v], lo[v], hi[v], *dots[v]] if np.isfinite(x)] + [0.0]
        span = max(max(vals) - min(vals), 0.1)
        ax.set_xlim(min(vals) - 0.08 * span, max(vals) + 0.08 * span)
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.grid(True, axis="x")
        ax.tick_params(axis="y", length=0)
        fig.tight_layout()
        files = save(fig, stem)
    ns = sorted(set(int(n) for n in s["n"]))
    cap = (f"Difference of pooled test DSC to {table.name(ref)} (dashed line), in percentage points; bars: "
           "mean over seeds of the paired per-seed difference, dots: single seeds"
           + ("; error bars: 95 % interval of the paired hierarchical bootstrap (seeds, then images); green / pink: "
              "better / worse after Holm correction." if has_ci else
              "; one seed: no inference, no interval."))
    if ns == [1]:
        cap = cap.replace("mean over seeds of the paired per-seed difference, dots: single seeds", "one seed")
    return FigureOutcome(key, title, files, cap)


# ---------------------------------------------------------------------------------------- training curves

_TRAIN_LOSS = ("train_loss", "loss")
_VAL_LOSS = ("val_loss",)
_VAL_DSC = ("val_pooled_dsc", "val_dsc", "pooled_dsc_val", "val_per_image_dsc_mean")


def _first(cols, candidates) -> str | None:
    for c in candidates:
        if c in cols:
            return c
    return None


def training_curves(histories: dict[str, list[pd.DataFrame]], reference: str | None, stem: Path,
                    order: list[str], names: dict[str, str] | None = None) -> FigureOutcome:
    key, title = "curves", "Training curves"
    histories = {v: h for v, h in histories.items() if h}
    if not histories:
        return _skip(key, title, "no run has a history.csv")
    cols = set().union(*(set(df.columns) for hs in histories.values() for df in hs))
    panels = [(c, lab) for c, lab in ((_first(cols, _TRAIN_LOSS), "Training loss"),
                                       (_first(cols, _VAL_LOSS), "Validation loss"),
                                       (_first(cols, _VAL_DSC), "Validation DSC (%)")) if c]
    if not panels:
        return _skip(key, title, "history.csv has no loss or validation DSC column")
    variants = [v for v in order if v in histories]
    others = [v for v in variants if v != reference]
    colours = dict(zip(others, palette(len(others))))
    styles = {v: linestyle(i) for i, v in enumerate(others)}
    max_epochs = max(int(df["epoch"].max()) for hs in histories.values() for df in hs)
    few = max_epochs <= 12
    legend_rows = int(np.ceil(len(variants) / 2))
    with figure_style():
        fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH, 1.0 * len(panels) + 0.35 + 0.12 * legend_rows),
                                 sharex=True, squeeze=False)
        axes = axes[:, 0]
        for ax, (col, lab) in zip(axes, panels):
            for v in variants:
                frames = [df[["epoch", col]].dropna() for df in histories[v] if col in df.columns]
                frames = [f for f in frames if len(f)]
                if not frames:
                    continue
                wide = pd.concat([f.set_index("epoch")[col].rename(i) for i, f in enumerate(frames)], axis=1)
                wide = wide.sort_index()
                if col in _VAL_DSC and float(wide.max().max()) <= 1.0:
                    wide = wide * 100.0
                m = wide.mean(axis=1)
                is_ref = v == reference
                c = REF_COLOR if is_ref else colours[v]
                ax.plot(m.index, m.to_numpy(), color=c, lw=1.3 if is_ref else 0.9, ls="-" if is_ref else styles[v],
                        marker="o" if few else None, ms=2.2, zorder=3 if is_ref else 2, label=v)
                if wide.shape[1] > 1:
                    ax.fill_between(m.index, wide.min(axis=1), wide.max(axis=1), color=c, alpha=0.15, lw=0)
            ax.set_ylabel(lab)
            ax.grid(True, axis="y")
            if "loss" in col:
                vals = ax.get_ylim()
                if vals[0] > 0 and vals[1] / vals[0] > 20:
                    ax.set_yscale("log")
        axes[-1].set_xlabel("Epoch")
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
        handles = [Line2D([], [], color=REF_COLOR if v == reference else colours[v], lw=1.3 if v == reference else 0.9,
                          ls="-" if v == reference else styles[v]) for v in variants]
        fig.tight_layout()
        fig.legend(handles, [(names or {}).get(v, v) for v in variants], loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False,
                   handlelength=2.2, columnspacing=1.2)
        files = save(fig, stem)
    seeds = max(len(h) for h in histories.values())
    cap = ("Per-epoch training loss" + (", validation loss" if _first(cols, _VAL_LOSS) else "")
           + (" and validation DSC (pooled)" if _first(cols, _VAL_DSC) else "")
           + (f"; lines: mean over seeds, bands: min-max over seeds (up to {seeds})." if seeds > 1 else "; one seed.")
           + (f" {(names or {}).get(reference, reference)} in vermillion." if reference in histories else "")
           + " Losses include each model's deep-supervision terms, whose number and weights differ between "
             "variants: compare the shapes of the loss curves, not their levels.")
    return FigureOutcome(key, title, files, cap)


# ------------------------------------------------------------------------------------------ Pareto front


def pareto_front(latency: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats (lower latency and higher score, one strictly)."""
    lat, sc = np.asarray(latency, float), np.asarray(score, float)
    keep = np.ones(len(lat), bool)
    for i in range(len(lat)):
        dominated = (lat <= lat[i]) & (sc >= sc[i]) & ((lat < lat[i]) | (sc > sc[i]))
        keep[i] = not dominated.any()
    return keep


def latency_pareto(table: Table, stem: Path) -> FigureOutcome:
    key, title = "pareto", "Latency vs DSC (Pareto front)"
    s = table.summary
    ok = s["latency_ms_mean"].notna() & s["pooled_dsc_mean"].notna() & (s["latency_ms_mean"] > 0)
    if ok.sum() < 2:
        return _skip(key, title, "needs at least 2 variants with a recorded latency and a test DSC")
    s = s[ok]
    ref = table.group.reference
    lat = s["latency_ms_mean"]
    y = s["pooled_dsc_mean"] * 100
    front = pd.Series(pareto_front(lat.to_numpy(), y.to_numpy()), index=s.index)
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.5))
        f = s.index[front]
        fl = lat[f].sort_values()
        ax.step(fl.to_numpy(), y[fl.index].to_numpy(), where="post", color="#444444", lw=1.0, ls="--", zorder=1,
                label="Pareto front")
        for v in s.index:
            is_ref = v == ref
            ax.scatter(lat[v], y[v], s=28 if is_ref else 16,
                       color=REF_COLOR if is_ref else (OTHER_COLOR if front[v] else MUTED),
                       edgecolor="black" if is_ref else "white", linewidth=0.6, zorder=3)
        if lat.max() / lat.min() > 10:
            ax.set_xscale("log")
        xlo, xhi = float(lat.min()), float(lat.max())
        if ax.get_xscale() == "log":
            ax.set_xlim(xlo / 1.5, xhi * 1.5)
            _plain_log_ticks(ax.xaxis)
        else:
            pad = max((xhi - xlo) * 0.15, xhi * 0.05)
            ax.set_xlim(max(xlo - pad, 0), xhi + pad)
        ylo, yhi = float(y.min()), float(y.max())
        ypad = max((yhi - ylo) * 0.2, 0.3)
        ax.set_ylim(ylo - ypad, yhi + ypad * 1.5)
        ax.set_xlabel("Latency (ms per image, batch 1, median)")
        ax.set_ylabel("DSC, pooled (%)")
        ax.grid(True)
        names = [v for v in s.index if front[v] or v == ref or len(s) <= MAX_LABELS]
        idx = [list(s.index).index(v) for v in names]
        place_labels(ax, lat.iloc[idx].to_numpy(), y.iloc[idx].to_numpy(), [table.name(v) for v in names],
                     fontsize=5.8,
                     colors=[REF_COLOR if v == ref else "#222222" for v in names],
                     weights=["bold" if v == ref else "normal" for v in names], marker_radius_pt=3.0)
        handles = [Line2D([], [], color="#444444", lw=1.0, ls="--", label="Pareto front"),
                   Line2D([], [], marker="o", ls="", color=OTHER_COLOR, ms=3.5, label="Pareto-optimal"),
                   Line2D([], [], marker="o", ls="", color=MUTED, ms=3.5, label="dominated")]
        if ref is not None and ref in s.index:
            handles.append(Line2D([], [], marker="o", ls="", color=REF_COLOR, mec="black", mew=0.6, ms=4,
                                  label=table.name(ref)))
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles), frameon=False,
                  handlelength=2.6, columnspacing=0.8, handletextpad=0.4, borderaxespad=0.1)
        fig.tight_layout()
        files = save(fig, stem)
    cap = ("Pooled test DSC (mean over seeds) against inference latency (mean over the runs' recorded medians, "
           "batch 1); dashed: Pareto front (no other variant is both faster and more accurate). Latency depends "
           "on the machine and its load (docs/protocol.md §7): compare ratios within one report only.")
    return FigureOutcome(key, title, files, cap)
