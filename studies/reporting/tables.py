"""The paper's results table, in LaTeX (pandas ``Styler.to_latex``, booktabs rules) and Markdown.

Columns as the EGE-UNet paper: Params (M), GFLOPs (= legacy-thop GMACs), mIoU, DSC, Acc, Spe, Sen (pooled over
all test pixels, %), plus the per-image mean DSC (%). Cells are mean ± sample std (ddof = 1) over seeds; the best
value of a column is bold and the second underlined (lower is better for the two cost columns); significance
marks compare every variant with EGE-UNet (see :mod:`studies.reporting.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from studies.reporting.load import COST_COLUMNS, PER_IMAGE_COLUMNS, POOLED_COLUMNS, Group
from studies.reporting.stats import aggregate, describe_tests

HEADER_COST = "Cost"
HEADER_POOLED = "Pooled over test pixels (%)"
HEADER_PER_IMAGE = "Per image (%)"
#: (source column, header level 0, header level 1, higher is better, scale, decimals)
TABLE_COLUMNS = (
    [(c, HEADER_COST, label, hib, scale, 3) for c, label, hib, scale in COST_COLUMNS]
    + [(c, HEADER_POOLED, label, hib, scale, 2) for c, label, hib, scale in POOLED_COLUMNS]
    + [(c, HEADER_PER_IMAGE, label, hib, scale, 2) for c, label, hib, scale in PER_IMAGE_COLUMNS]
)

#: aggregated for summary.csv and the figures, not shown in the LaTeX table
EXTRA_SUMMARY = ("latency_ms", "flop_counter_gmacs", "per_image_dsc_std", "per_image_iou_mean", "isic_tjaccard",
                 "best_epoch", "wall_s")

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters of plain text (variant names, dataset names, captions)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


@dataclass
class Table:
    """One comparable group rendered as a table."""

    group: Group
    summary: pd.DataFrame  # per variant: <col>_mean/_std (raw units), n, seeds
    tests: pd.DataFrame  # from stats.compare_with_reference
    cells: pd.DataFrame  # display values, scaled and rounded: <col>_mean, <col>_std
    best: dict[str, set[str]] = field(default_factory=dict)
    second: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    eval_sizes: list[str] = field(default_factory=list)  # evaluation resolutions of the runs, e.g. ["256x256"]

    @property
    def label(self) -> str:
        return f"tab:{self.group.slug}"


def _fmt(value: float, decimals: int) -> str:
    return "--" if value is None or not np.isfinite(value) else f"{value:.{decimals}f}"


def build_table(group: Group, tests: pd.DataFrame, eval_sizes: list[str] | None = None) -> Table:
    """Aggregate a group and decide bold / underline from the displayed (rounded) means."""
    cols = [c for c, *_ in TABLE_COLUMNS] + list(EXTRA_SUMMARY)
    summary = aggregate(group.runs, cols, group.variants)
    cells = pd.DataFrame(index=summary.index)
    best: dict[str, set[str]] = {}
    second: dict[str, set[str]] = {}
    for col, _h0, _h1, higher, scale, dec in TABLE_COLUMNS:
        cells[f"{col}_mean"] = (summary[f"{col}_mean"] * scale).round(dec)
        cells[f"{col}_std"] = (summary[f"{col}_std"] * scale).round(dec)
        vals = cells[f"{col}_mean"].dropna()
        ranked = sorted(set(vals), reverse=higher)
        if len(vals) >= 2 and len(ranked) >= 2:
            best[col] = set(vals.index[vals == ranked[0]])
            if len(ranked) >= 2 and len(vals) >= 3:
                second[col] = set(vals.index[vals == ranked[1]])
    return Table(group, summary, tests, cells, best, second, eval_sizes=sorted(set(eval_sizes or [])))


def _cell(table: Table, variant: str, col: str, dec: int, flavour: str) -> str:
    mean = table.cells.at[variant, f"{col}_mean"]
    std = table.cells.at[variant, f"{col}_std"]
    text = _fmt(mean, dec)
    if np.isfinite(std) and col not in {c for c, *_ in COST_COLUMNS}:
        text += (" $\\pm$ " if flavour == "latex" else " ± ") + _fmt(std, dec)
    sig = table.tests[(table.tests["variant"] == variant) & (table.tests["metric"] == col)]
    symbol = sig["mark"].iloc[0] if len(sig) else ""
    if symbol:
        # \rlap: the mark takes no width, so the numbers of a column stay aligned
        text += f"\\rlap{{$^{{{symbol}}}$}}" if flavour == "latex" else "\\" + "\\".join(symbol)
    return text


def _columns_index() -> pd.MultiIndex:
    return pd.MultiIndex.from_tuples([(h0, h1) for _c, h0, h1, *_ in TABLE_COLUMNS])


def display_frame(table: Table, flavour: str) -> pd.DataFrame:
    """The table's cells as strings (``flavour`` 'latex' or 'markdown'), index = variant."""
    data = {}
    for col, h0, h1, _hib, _scale, dec in TABLE_COLUMNS:
        data[(h0, h1)] = [_cell(table, v, col, dec, flavour) for v in table.cells.index]
    frame = pd.DataFrame(data, index=pd.Index(table.cells.index, name=None))
    frame.columns = _columns_index()
    if not _uniform_n(table):
        frame.insert(0, ("", "n"), table.summary["n"].astype(int).astype(str).to_numpy())
    return frame


def _uniform_n(table: Table) -> bool:
    return table.summary["n"].nunique() == 1


def _seed_phrase(table: Table) -> str:
    seeds = table.group.seeds
    ns = sorted(set(int(n) for n in table.summary["n"]))
    seed_list = ", ".join(str(s) for s in seeds)
    if ns == [1]:
        return f"Single run per variant (n = 1 seed; seed {seed_list}): no standard deviation"
    if len(ns) == 1:
        return (f"Mean $\\pm$ sample standard deviation (ddof = 1) over n = {ns[0]} seeds ({seed_list}), paired by "
                "seed")
    return (f"Mean $\\pm$ sample standard deviation (ddof = 1) over n = {ns[0]}-{ns[-1]} seeds per variant "
            f"(column n; seeds {seed_list})")


def _device_phrase(runs: pd.DataFrame) -> str:
    """'Trained on cpu.' or, for mixed devices, 'Trained on cpu (2 runs), cuda -> cpu (5 runs).' ('' if unknown)."""
    if "device" not in runs.columns:
        return ""
    devices = runs["device"].dropna().astype(str)
    if devices.empty:
        return ""
    counts = devices.value_counts(sort=False)
    if len(counts) == 1:
        return f"Trained on {counts.index[0]}."
    listed = ", ".join(f"{d} ({n} run{'s' if n != 1 else ''})" for d, n in counts.items())
    return f"Trained on {listed}; a -> marks a run resumed on another device."


def caption(table: Table, flavour: str = "latex") -> str:
    """Caption naming dataset, protocol, budget, metric convention, seeds, tests and correction."""
    g = table.group
    esc = latex_escape if flavour == "latex" else (lambda s: s)
    pm = "$\\pm$" if flavour == "latex" else "±"
    parts = []
    if g.synthetic:
        warn = ("SYNTHETIC DATA -- pipeline check only, these numbers are NOT results on real images.")
        parts.append(f"\\textbf{{{warn}}}" if flavour == "latex" else f"**{warn}**")
    parts.append(f"{esc(g.runs['suite'].iloc[0])} suite on {esc(g.dataset)} (test split), protocol "
                 f"{esc(g.protocol)}, budget {esc(g.budget)}.")
    parts.append(_seed_phrase(table).replace("$\\pm$", pm) + ".")
    where = _device_phrase(g.runs)
    if where:
        parts.append(esc(where).replace(" -> ", " $\\to$ ") if flavour == "latex" else where)
    times = "$1\\times3\\times256\\times256$" if flavour == "latex" else "1×3×256×256"
    if table.eval_sizes:
        res = " / ".join(r.replace("x", "$\\times$" if flavour == "latex" else "×") for r in table.eval_sizes)
        res_txt = f" at {res} pixels"
    else:
        res_txt = " at the evaluation resolution (not recorded)"
    parts.append("mIoU, DSC, Acc, Spe and Sen are pooled over all test pixels (one confusion matrix, threshold 0.5; "
                 f"mIoU = foreground IoU as in the official code){res_txt}, "
                 "per-image DSC is the mean over test images; "
                 f"all in %. Params = sum of parameter counts (M); GFLOPs = legacy-thop GMACs at {times}, batch 1 "
                 "(the papers' convention).".replace("%", "\\%" if flavour == "latex" else "%"))
    parts.append("Best value per column in bold, second underlined (lower is better for Params and GFLOPs)."
                 if flavour == "latex" else
                 "Best value per column in bold, second in italics (lower is better for Params and GFLOPs).")
    ref = g.reference
    if ref is None:
        parts.append(f"No {esc('egeunet')} run in this table: no significance tests.")
    elif table.tests.empty:
        parts.append(f"Reference: {esc(ref)}. No significance test possible (fewer than 2 seeds shared with the "
                     "reference and no per-image records).")
    else:
        star = ("$^{*}$ / $^{**}$" if flavour == "latex" else "\\* / \\*\\*")
        ps = "$p < 0.05$ / $p < 0.01$" if flavour == "latex" else "p < 0.05 / p < 0.01"
        ref_txt = esc(ref) if ref == "egeunet" else f"{esc(ref)} (EGE-UNet, model {esc('egeunet')})"
        parts.append(f"{star}: Holm-adjusted {ps} against {ref_txt} (the reference row): "
                     f"{esc(describe_tests(table.tests))}.")
    return " ".join(parts)


def to_latex(table: Table) -> str:
    """The table environment (booktabs rules via ``Styler.to_latex(hrules=True)``)."""
    frame = display_frame(table, "latex")
    styler = frame.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    keys = list(frame.columns)
    src_of = {(h0, h1): col for col, h0, h1, *_ in TABLE_COLUMNS}

    def emphasis(column: pd.Series) -> list[str]:
        col = src_of.get(column.name)
        out = []
        for variant in column.index:
            if col and variant in table.best.get(col, ()):
                out.append("textbf:--rwrap;")
            elif col and variant in table.second.get(col, ()):
                out.append("underline:--rwrap;")
            else:
                out.append("")
        return out

    styler = styler.apply(emphasis, axis=0, subset=keys)
    latex = styler.to_latex(
        hrules=True,
        caption=caption(table, "latex"),
        label=table.label,
        position="htbp",
        position_float="centering",
        column_format=_column_format(table, keys),
        multicol_align="c",
    )
    # smaller type for wide tables; 'centering' comes right after the float's opening line
    latex = latex.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{5pt}\n", 1)
    return _polish_header(latex, list(frame.columns))


def _column_format(table: Table, keys: list[tuple[str, str]]) -> str:
    """Right-aligned columns; a column carrying significance marks gets room for them on its right (the marks are
    \\rlap'ed so that the numbers stay aligned)."""
    src_of = {(h0, h1): col for col, h0, h1, *_ in TABLE_COLUMNS}
    marked = set(table.tests.loc[table.tests["mark"] != "", "metric"]) if not table.tests.empty else set()
    return "l" + "".join("r@{\\hspace{15pt}}" if src_of.get(k) in marked else "r" for k in keys)


def _polish_header(latex: str, columns: list[tuple[str, str]]) -> str:
    """'Variant' in the corner, and booktabs \\cmidrule under each multi-column group heading."""
    lines = latex.split("\n")
    top = lines.index("\\toprule")
    # Styler writes: group row, column-name row (, index-name row); the data follow \\midrule
    mid = lines.index("\\midrule")
    header = lines[top + 1:mid]
    rules, start = [], 2
    for name, count in _runs([h0 for h0, _ in columns]):
        if name and count > 1:
            rules.append(f"\\cmidrule(lr){{{start}-{start + count - 1}}}")
        start += count
    names = header[1] if len(header) > 1 else header[0]
    names = "Variant" + names[names.index(" &"):] if names.startswith(" &") else names
    new_header = [header[0], " ".join(rules), names] if len(header) > 1 else [names]
    return "\n".join(lines[:top + 1] + [h for h in new_header if h] + lines[mid:])


def _runs(items: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for it in items:
        if out and out[-1][0] == it:
            out[-1] = (it, out[-1][1] + 1)
        else:
            out.append((it, 1))
    return out


def to_markdown(table: Table) -> str:
    frame = display_frame(table, "markdown")
    for col, h0, h1, *_ in TABLE_COLUMNS:
        for variant in frame.index:
            if variant in table.best.get(col, ()):
                frame.at[variant, (h0, h1)] = f"**{frame.at[variant, (h0, h1)]}**"
            elif variant in table.second.get(col, ()):
                frame.at[variant, (h0, h1)] = f"_{frame.at[variant, (h0, h1)]}_"
    flat = frame.copy()
    flat.columns = [h1 if not h0 or h0 == HEADER_COST else f"{h1} ({'pooled' if h0 == HEADER_POOLED else 'per image'})"
                    for h0, h1 in frame.columns]
    flat.index = [v.replace("_", "\\_") for v in flat.index]
    flat.index.name = "Variant"
    return flat.to_markdown(colalign=["left"] + ["right"] * len(flat.columns), disable_numparse=True)


MARKDOWN_TEST_METRICS = ("pooled_dsc", "per_image_dsc_mean")


def tests_markdown(tests: pd.DataFrame, scale: dict[str, float],
                   metrics: tuple[str, ...] = MARKDOWN_TEST_METRICS) -> str:
    """The significance tests of the DSC columns as a Markdown table (differences in percentage points)."""
    tests = tests[tests["metric"].isin(metrics)] if not tests.empty else tests
    if tests.empty:
        return ""
    rows = []
    for _, r in tests.iterrows():
        s = scale.get(r["metric"], 100.0)
        rows.append({
            "Variant": str(r["variant"]).replace("_", "\\_"),
            "Metric": METRIC_LABELS.get(r["metric"], r["metric"]),
            "Test": r["test"],
            "n": f"{int(r['n'])} {r['unit']}",
            "Δ vs ref. (pp)": _fmt(r["mean_diff"] * s, 2),
            "95 % CI (pp)": f"[{_fmt(r['ci_low'] * s, 2)}, {_fmt(r['ci_high'] * s, 2)}]",
            "p": _fmt_p(r["p"]),
            "p (Holm)": _fmt_p(r["p_holm"]),
            "": r["mark"].replace("*", "\\*") if isinstance(r["mark"], str) else "",
        })
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


METRIC_LABELS = {c: f"{label} ({'per image' if c.startswith('per_image') else 'pooled'})"
                 for c, label, *_ in POOLED_COLUMNS + PER_IMAGE_COLUMNS}


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "--"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


STANDALONE_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[utf8]{inputenc}
\usepackage[a4paper,landscape,margin=2cm]{geometry}
\usepackage{booktabs}
\usepackage{multirow}
\usepackage{caption}
\captionsetup{font=small,labelfont=bf}
\begin{document}
"""


def standalone_document(suite: str, table_files: list[str], synthetic: bool) -> str:
    """``tables.tex``: a compilable article that ``\\input``s every table file."""
    body = [STANDALONE_PREAMBLE, f"\\section*{{Results of the {latex_escape(suite)} suite}}\n"]
    if synthetic:
        body.append("\\noindent\\fbox{\\parbox{\\linewidth}{\\textbf{Warning: synthetic data.} Some tables "
                    "below come from synthetic images; they check the pipeline and are not results.}}\n\n")
    if not table_files:
        body.append("No finished runs.\n")
    for name in table_files:
        body.append(f"\\input{{{name}}}\n")
    body.append("\\end{document}\n")
    return "".join(body)


def write_tables(tables: list[Table], out_dir: Path, suite: str) -> list[Path]:
    """Write ``tables/<group>.tex`` per table and the standalone ``tables.tex``; return the paths."""
    tdir = out_dir / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    written, names = [], []
    for t in tables:
        path = tdir / f"{t.group.slug}.tex"
        path.write_text(to_latex(t))
        written.append(path)
        names.append(f"tables/{t.group.slug}")
    doc = out_dir / "tables.tex"
    doc.write_text(standalone_document(suite, names, any(t.group.synthetic for t in tables)))
    return [doc] + written
