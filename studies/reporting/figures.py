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


def params_vs_dsc(table: Table, stem: Path) -> FigureOutcome:
    key, title = "params_dsc", "Parameters vs DSC (bubble area proportional to GFLOPs)"
    s = table.summary
    ok = s["params_mean"].notna() & s["pooled_dsc_mean"].notna() & (s["params_mean"] > 0)
    if ok.sum() < 2:
        return _skip(key, title, "needs at least 2 variants with a parameter count and a test DSC")
    s = s[ok]
    ref = table.group.reference
    x = s["params_mean"] / 1e6
    y, yerr = s["pooled_dsc_mean"] * 100, s["pooled_dsc_std"] * 100
    g = s["gmacs_mean"]
    has_g = bool(g.notna().all() and (g > 0).all())
    max_area = 150.0
    min_area = 14.0  # the smallest bubbles are drawn at this size (said in the caption when it happens)
    area = (g / g.max() * max_area).clip(lower=min_area) if has_g else pd.Series(40.0, index=s.index)
    floored = bool(has_g and (g / g.max() * max_area < min_area).any())
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.7))
        for v in s.index:
            is_ref = v == ref
            ax.errorbar(x[v], y[v], yerr=yerr[v] if np.isfinite(yerr[v]) else None, fmt="none",
                        ecolor="#222222", elinewidth=0.6, capsize=1.5, capthick=0.6, zorder=2.5)
            ax.scatter(x[v], y[v], s=area[v], color=REF_COLOR if is_ref else OTHER_COLOR,
                       alpha=0.85 if is_ref else 0.5, edgecolor="black" if is_ref else "white",
                       linewidth=0.8 if is_ref else 0.5, zorder=4 if is_ref else 3)
        ax.set_xscale("log")
        lo, hi = float(x.min()), float(x.max())
        span = max(hi / lo, 1.0)
        pad = span ** 0.12 if span > 1.5 else 1.6
        ax.set_xlim(lo / pad, hi * pad)
        _plain_log_ticks(ax.xaxis)
        ylo = float((y - yerr.fillna(0)).min())
        yhi = float((y + yerr.fillna(0)).max())
        ypad = max((yhi - ylo) * 0.18, 0.3)
        ax.set_ylim(ylo - ypad, yhi + ypad * 1.6)
        ax.set_xlabel("Parameters (M, log scale)")
        ax.set_ylabel("DSC, pooled (%)")
        ax.grid(True, which="major", axis="both")
        names = _label_subset(y, ref)
        idx = [list(s.index).index(v) for v in names]
        place_labels(ax, x.iloc[idx].to_numpy(), y.iloc[idx].to_numpy(), names, fontsize=5.8,
                     colors=[REF_COLOR if v == ref else "#222222" for v in names],
                     weights=["bold" if v == ref else "normal" for v in names],
                     marker_radius_pt=[float(np.sqrt(area[v]) / 2) for v in names])
        if has_g:
            _size_legend(ax, g, max_area)
        fig.tight_layout()
        files = save(fig, stem)
    cap = ("Pooled test DSC (mean over seeds; error bars: sample std) against parameter count (log axis); "
           + ("bubble area proportional to GFLOPs (legacy-thop GMACs at 256x256). " if has_g else
              "GFLOPs missing: constant bubble size. ")
           + (f"{ref} in vermillion." if ref else "No EGE-UNet run in this group."))
    if floored:
        cap += f" Bubbles below {min_area:g} pt² are drawn at that minimum size so that they stay visible."
    if len(y) > MAX_LABELS:
        cap += " Only the reference and the three best and worst variants are labelled."
    return FigureOutcome(key, title, files, cap)


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


def _size_legend(ax, gmacs: pd.Series, max_area: float, min_area: float = 14.0) -> None:
    lo, hi = float(gmacs.min()), float(gmacs.max())
    refs = sorted({float(f"{v:.2g}") for v in ((lo, hi) if hi / lo > 3 else (hi,))})
    handles = [ax.scatter([], [], s=max(v / hi * max_area, min_area), color=MUTED, alpha=0.5, edgecolor="white")
               for v in refs]
    ax.legend(handles, [f"{v:g}" for v in refs], title=None, loc="lower right", bbox_to_anchor=(1.0, 1.0),
              ncol=len(refs) + 1, frameon=False, scatterpoints=1, borderpad=0.2, handletextpad=0.4,
              columnspacing=1.0, borderaxespad=0.1)
    ax.text(0.0, 1.02, "bubble area ∝ GFLOPs:", transform=ax.transAxes, ha="left", va="bottom",
            fontsize=6.5)


# ------------------------------------------------------------------------------------------ ablation bars


def ablation_bars(table: Table, stem: Path) -> FigureOutcome:
    key, title = "ablation", "Ablation chart: pooled DSC of every variant against EGE-UNet"
    s = table.summary
    runs = table.group.runs
    ok = s["pooled_dsc_mean"].notna()
    if ok.sum() < 2:
        return _skip(key, title, "needs at least 2 variants with a test DSC")
    s = s[ok]
    ref = table.group.reference
    mean, std = s["pooled_dsc_mean"] * 100, s["pooled_dsc_std"] * 100
    relative = ref is not None and ref in s.index
    base = float(mean[ref]) if relative else 0.0
    delta = (mean - base).sort_values(ascending=True)
    order = list(delta.index)
    height = max(1.5, 0.55 + 0.17 * len(order))
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, height))
        ypos = np.arange(len(order))
        colours = [REF_COLOR if v == ref else OTHER_COLOR for v in order]
        err = [std[v] if np.isfinite(std[v]) else 0.0 for v in order]
        has_err = any(np.isfinite(std[v]) for v in order)
        ax.barh(ypos, [delta[v] for v in order], height=0.62, color=colours, alpha=0.85, zorder=2,
                xerr=err if has_err else None,
                error_kw=dict(ecolor="#333333", elinewidth=0.6, capsize=1.5, capthick=0.6))
        span = max(abs(float(np.nanmax(delta))), abs(float(np.nanmin(delta))), 1e-9)
        if relative:
            for yi, v in zip(ypos, order):  # the difference, written beyond its bar, error bar and seeds
                if v == ref:
                    continue
                dv = float(delta[v])
                e = err[order.index(v)] if np.isfinite(err[order.index(v)]) else 0.0
                seeds = runs.loc[runs["variant"] == v, "pooled_dsc"].dropna().to_numpy() * 100 - base
                reach = max([abs(dv) + e] + [abs(x) for x in seeds if np.sign(x) == np.sign(dv) or dv == 0])
                off = reach + span * 0.03
                ax.text(off if dv >= 0 else -off, yi, f"{dv:+.2f}", va="center",
                        ha="left" if dv >= 0 else "right", fontsize=5.5, color="#333333", zorder=4)
        for yi, v in zip(ypos, order):  # individual seeds
            seeds = runs.loc[runs["variant"] == v, "pooled_dsc"].dropna() * 100 - base
            if len(seeds) > 1:
                jitter = np.linspace(-0.14, 0.14, len(seeds))
                ax.scatter(seeds, yi + jitter, s=3, color="black", zorder=3, linewidth=0)
        ax.set_yticks(ypos)
        ax.set_yticklabels(order)
        for lab in ax.get_yticklabels():
            if lab.get_text() == ref:
                lab.set_color(REF_COLOR)
                lab.set_fontweight("bold")
        if relative:
            ax.axvline(0, color=REF_COLOR, lw=0.8, ls="--", zorder=1)
            sd = std[ref]
            ref_txt = f"{base:.2f}" + (f" ± {sd:.2f}" if np.isfinite(sd) else "") + " %"
            ax.set_xlabel(f"Δ pooled DSC vs {ref} (percentage points)\n{ref} = {ref_txt}")
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))  # no colliding labels
        else:
            ax.set_xlabel("DSC, pooled (%)")
        d = delta[order].to_numpy()
        e = np.asarray(err)
        seed_vals = runs.loc[runs["variant"].isin(order), "pooled_dsc"].dropna().to_numpy() * 100 - base
        lo = min(0.0, float(np.nanmin(d - e)), float(seed_vals.min()) if len(seed_vals) else 0.0)
        hi = max(0.0, float(np.nanmax(d + e)), float(seed_vals.max()) if len(seed_vals) else 0.0)
        pad = max((hi - lo) * (0.22 if relative else 0.08), 0.05)  # room for the value labels
        ax.set_xlim(lo - (pad if lo < 0 else 0.0), hi + pad)
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.grid(True, axis="x")
        ax.tick_params(axis="y", length=0)
        fig.tight_layout()
        files = save(fig, stem)
    ns = sorted(set(int(n) for n in s["n"]))
    n_txt = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
    rel_txt = f" relative to {ref} (vermillion, dashed line)" if relative else ""
    cap = (f"Pooled test DSC of each variant{rel_txt}; "
           f"bars: mean over seeds, error bars: sample std over seeds, dots: single seeds ({n_txt} seeds).")
    if all(n == 1 for n in ns):
        cap += " One seed per variant: no error bars."
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
                    order: list[str]) -> FigureOutcome:
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
        fig.legend(handles, variants, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False,
                   handlelength=2.2, columnspacing=1.2)
        files = save(fig, stem)
    seeds = max(len(h) for h in histories.values())
    cap = ("Per-epoch training loss" + (", validation loss" if _first(cols, _VAL_LOSS) else "")
           + (" and validation DSC (pooled)" if _first(cols, _VAL_DSC) else "")
           + (f"; lines: mean over seeds, bands: min-max over seeds (up to {seeds})." if seeds > 1 else "; one seed.")
           + (f" {reference} in vermillion." if reference in histories else "")
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
        ax.step(fl.to_numpy(), y[fl.index].to_numpy(), where="post", color="#444444", lw=0.8, ls="--", zorder=1,
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
        place_labels(ax, lat.iloc[idx].to_numpy(), y.iloc[idx].to_numpy(), names, fontsize=5.8,
                     colors=[REF_COLOR if v == ref else "#222222" for v in names],
                     weights=["bold" if v == ref else "normal" for v in names], marker_radius_pt=3.0)
        handles = [Line2D([], [], color="#444444", lw=0.8, ls="--", label="Pareto front"),
                   Line2D([], [], marker="o", ls="", color=OTHER_COLOR, ms=3.5, label="Pareto-optimal"),
                   Line2D([], [], marker="o", ls="", color=MUTED, ms=3.5, label="dominated")]
        if ref is not None and ref in s.index:
            handles.append(Line2D([], [], marker="o", ls="", color=REF_COLOR, mec="black", mew=0.6, ms=4,
                                  label=ref))
        ax.legend(handles=handles, loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")
        fig.tight_layout()
        files = save(fig, stem)
    cap = ("Pooled test DSC (mean over seeds) against inference latency (mean over the runs' recorded medians, "
           "batch 1); dashed: Pareto front (no other variant is both faster and more accurate). Latency depends "
           "on the machine and its load (PROTOCOL §7): compare ratios within one report only.")
    return FigureOutcome(key, title, files, cap)
