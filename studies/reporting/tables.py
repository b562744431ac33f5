"""The paper-style results table, in LaTeX (pandas ``Styler.to_latex``, booktabs rules), Markdown and HTML.

Columns: Params (K / M), GMACs (legacy-thop, the papers' "GFLOPs"), n (seeds), pooled mIoU and DSC (%) as
mean ± sample std over seeds, and the difference of each variant to EGE-UNet (percentage points) with the 95 %
interval of the paired hierarchical bootstrap (:mod:`studies.reporting.stats`). ↑ / ↓ mark a variant better /
worse than EGE-UNet after Holm correction; bold marks the best mean of a column only when it is distinguishable
from the runner-up. Optional rows below a rule quote the numbers *reported* for EGE-UNet; they never enter a
statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from studies.reporting.load import Group
from studies.reporting.names import display_name
from studies.reporting.stats import NO_INFERENCE, aggregate, best_distinguishable, describe_test

#: (results column, header, higher is better, scale to display, decimals)
SCORE_COLUMNS = (("pooled_miou", "mIoU (%)", True, 100.0, 2), ("pooled_dsc", "DSC (%)", True, 100.0, 2))
COST_COLUMNS = (("params", "Params", False), ("gmacs", "GMACs", False))
DELTA_HEADERS = {"pooled_miou": "ΔmIoU (pp) [95% CI]", "pooled_dsc": "ΔDSC (pp) [95% CI]"}

#: aggregated for summary.csv and the figures, not shown in the table
EXTRA_SUMMARY = ("pooled_acc", "pooled_spe", "pooled_sen", "per_image_dsc_mean", "latency_ms", "flop_counter_gmacs",
                 "per_image_dsc_std", "per_image_iou_mean", "isic_tjaccard", "best_epoch", "wall_s")

#: numbers reported for a model on a dataset (in %), shown in separate rows, never used in statistics.
#: docs/protocol.md §8.2 lists EGE-UNet on ISIC2018 (status S, unverified); its ISIC2017 scores are NOT FOUND there.
REPORTED = {
    ("egeunet", "isic2018"): dict(pooled_miou=(80.94, 0.11), pooled_dsc=(89.46, 0.07),
                                  source="reported for EGE-UNet on ISIC2018 (third-party document, unverified; "
                                         "docs/protocol.md §8.2), official recipe"),
}

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$",
                  "−": r"$-$", "→": r"$\to$", "§": r"\S{}", "≤": r"$\leq$", "≥": r"$\geq$"}


def latex_escape(text: str) -> str:
    """Escape plain text for LaTeX (special characters, and the few non-ASCII symbols the report uses)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def fmt_params(n: float) -> str:
    """53374 -> '53.4K', 1471921 -> '1.47M'."""
    if n is None or not np.isfinite(n):
        return "--"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{int(n)}"


def fmt_gmacs(g: float) -> str:
    if g is None or not np.isfinite(g):
        return "--"
    return f"{g:.3f}" if g < 1 else f"{g:.2f}"


COST_FORMAT = {"params": fmt_params, "gmacs": fmt_gmacs}


def _fmt(value: float, decimals: int = 2, sign: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "--"
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    return text.replace("-", "−")


@dataclass
class Table:
    """One comparable group (dataset x protocol x budget) rendered as a table."""

    group: Group
    summary: pd.DataFrame  # per variant: <col>_mean/_std (raw units), n, seeds
    tests: pd.DataFrame  # from stats.compare_with_reference
    best: dict[str, str] = field(default_factory=dict)  # column -> the variant in bold
    reported: list[dict] = field(default_factory=list)  # rows of reported numbers
    eval_sizes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"tab:{self.group.slug}"

    def name(self, variant: str) -> str:
        return display_name(variant, self.group.model_of(variant))

    @property
    def single_seed(self) -> bool:
        return int(self.summary["n"].max()) < 2


def build_table(group: Group, tests: pd.DataFrame, per_image: dict[tuple[str, int], pd.DataFrame],
                eval_sizes: list[str] | None = None, reported: bool = True) -> Table:
    """Aggregate a group, decide what is bold, and attach the reported rows that apply."""
    cols = [c for c, *_ in SCORE_COLUMNS] + [c for c, *_ in COST_COLUMNS] + list(EXTRA_SUMMARY)
    summary = aggregate(group.runs, cols, group.variants)
    best: dict[str, str] = {}
    for col, _h, higher, *_ in SCORE_COLUMNS:
        b = best_distinguishable(summary[f"{col}_mean"], per_image, col, higher)
        if b is not None:
            best[col] = b
    for col, _h, higher in COST_COLUMNS:  # deterministic: the unique lowest count, as printed
        vals = summary[f"{col}_mean"].dropna()
        if len(vals) >= 2:
            shown = vals.map(COST_FORMAT[col])
            low = str(vals.idxmin())
            if (shown == shown[low]).sum() == 1:  # a tie at the printed precision is not bold
                best[col] = low
    rows = []
    if reported:
        for (model, dataset), rep in REPORTED.items():
            if dataset == group.dataset and (group.runs["model"] == model).any():
                rows.append(dict(rep, model=model, name=f"{display_name(model, model)} (reported)"))
    return Table(group, summary, tests, best, rows, sorted(set(eval_sizes or [])))


# ------------------------------------------------------------------------------------------ cells


def _delta_cell(table: Table, variant: str, col: str) -> str:
    if variant == table.group.reference:
        return "reference"
    t = table.tests
    hit = t[(t["variant"] == variant) & (t["metric"] == col)] if not t.empty else t
    if hit.empty:
        return "--"
    r = hit.iloc[0]
    d = _fmt(r["diff"] * 100, 2, sign=True)
    if r["verdict"] == NO_INFERENCE:
        return f"{d} (one seed)"
    ci = f"[{_fmt(r['ci_low'] * 100, 2, sign=True)}, {_fmt(r['ci_high'] * 100, 2, sign=True)}]"
    return f"{d} {ci}{r['mark']}"


def columns(table: Table) -> list[str]:
    heads = ["Params", "GMACs", "n"] + [h for _c, h, *_ in SCORE_COLUMNS]
    if table.group.reference is not None:
        heads += [DELTA_HEADERS[c] for c, *_ in SCORE_COLUMNS]
    return heads


def cell_frame(table: Table) -> pd.DataFrame:
    """The table as plain text cells (Unicode ±, −, ↑, ↓), index = display name; reported rows last.

    Used by every flavour; ``source`` says per row which entries are 'run' and which 'reported'.
    """
    heads = columns(table)
    rows, index = [], []
    s = table.summary
    for v in s.index:
        row = [fmt_params(s.at[v, "params_mean"]), fmt_gmacs(s.at[v, "gmacs_mean"]), str(int(s.at[v, "n"]))]
        for col, _h, _hib, scale, dec in SCORE_COLUMNS:
            m, sd = s.at[v, f"{col}_mean"] * scale, s.at[v, f"{col}_std"] * scale
            row.append(_fmt(m, dec) + (f" ± {_fmt(sd, dec)}" if np.isfinite(sd) else ""))
        if table.group.reference is not None:
            row += [_delta_cell(table, v, col) for col, *_ in SCORE_COLUMNS]
        rows.append(row)
        index.append(table.name(v))
    for rep in table.reported:
        row = ["--", "--", "--"]
        for col, *_ in SCORE_COLUMNS:
            m, sd = rep.get(col, (np.nan, np.nan))
            row.append(_fmt(m) + (f" ± {_fmt(sd)}" if np.isfinite(sd) else ""))
        if table.group.reference is not None:
            row += ["--"] * len(SCORE_COLUMNS)
        rows.append(row)
        index.append(rep["name"])
    return pd.DataFrame(rows, index=pd.Index(index), columns=heads)


def _bold_positions(table: Table) -> set[tuple[int, str]]:
    """(row position, column header) of the bold cells."""
    heads = {c: h for c, h, *_ in SCORE_COLUMNS} | {c: h for c, h, _ in COST_COLUMNS}
    order = list(table.summary.index)
    return {(order.index(v), heads[c]) for c, v in table.best.items()}


# ------------------------------------------------------------------------------------ captions


def _seed_counts(table: Table) -> str:
    ns = sorted(set(int(n) for n in table.summary["n"]))
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"


def caption(table: Table) -> str:
    """At most two sentences (plain text, Unicode): what the cells are, and what the marks mean."""
    g = table.group
    suite = str(g.runs["suite"].iloc[0])
    first = (f"{suite} suite on the {g.dataset} test split: pooled mIoU and DSC in % as mean ± std over seeds "
             f"({_seed_counts(table)} per variant)")
    if g.reference is None:
        return first + "; no EGE-UNet run in this table, so no comparison."
    first += f", and the difference to {table.name(g.reference)} in percentage points."
    if table.single_seed or (not table.tests.empty and (table.tests["verdict"] == NO_INFERENCE).all()):
        second = (f"{NO_INFERENCE[0].upper()}{NO_INFERENCE[1:]}: differences are point estimates without "
                  "interval, mark or bold.")
    elif table.tests.empty:
        second = "No per-image counts shared with the reference: no test."
    else:
        second = (f"Intervals from a {describe_test(table.tests)}; ↑/↓ where the interval excludes 0 after the "
                  "correction, bold where the best mean is distinguishable from the runner-up.")
    return f"{first} {second}"


def _budget_text(budget: str) -> str:
    try:
        from engine.train import BUDGETS

        return BUDGETS[budget].description
    except Exception:  # engine missing or budget unknown: name it only
        return "not described"


PROTOCOL_TEXT = {
    "clean": "train / validation / test split, checkpoint selected on validation, test evaluated once "
             "(docs/protocol.md §9 fixes)",
    "paper": "the official recipe and 7:3 split (the test set also selects the checkpoint)",
}


def _values(runs: pd.DataFrame, col: str) -> str:
    if col not in runs.columns:
        return "not recorded"
    vals = runs[col].dropna().astype(str)
    vals = vals[vals.str.strip() != ""]
    if vals.empty:
        return "not recorded"
    counts = vals.value_counts(sort=False)
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{k} ({n} runs)" for k, n in counts.items())


def _device_class(device: str) -> str:
    d = str(device)
    if "->" in d:
        return d
    return "GPU (" + d + ")" if d.startswith("cuda") else "CPU" if d == "cpu" else d


def footnote(table: Table) -> str:
    """Definitions of budget, protocol, device class, numerics version (and data, precision, reported rows)."""
    g = table.group
    runs = g.runs
    devices = runs["device"].dropna().astype(str).map(_device_class) if "device" in runs.columns else pd.Series([])
    dev = _values(pd.DataFrame({"d": devices}), "d") if len(devices) else "not recorded"
    parts = []
    if g.synthetic:
        parts.append("SYNTHETIC DATA: a pipeline check, not a result.")
    parts += [
        f"Budget {g.budget}: {_budget_text(g.budget)}.",
        f"Protocol {g.protocol}: {PROTOCOL_TEXT.get(g.protocol, 'see docs/protocol.md')}.",
        f"Device class: {dev} (a → marks a run resumed on another device).",
        f"Numerics version: {_values(runs, 'numerics_version')}; precision: {_values(runs, 'precision')}; "
        f"data fingerprint: {_values(runs, 'data')}.",
    ]
    if table.eval_sizes:
        parts.append(f"Evaluated at {' / '.join(table.eval_sizes)} pixels, threshold 0.5.")
    parts.append("Params: parameter count; GMACs: legacy-thop multiply-accumulates at 1×3×256×256 (the papers' "
                 "GFLOPs); mIoU is the foreground IoU (as the official code).")
    for rep in table.reported:
        parts.append(f"{rep['name']}: {rep['source']}; never used in any statistic.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------- LaTeX


def to_latex(table: Table) -> str:
    """The table float: ``Styler.to_latex`` with booktabs rules, reported rows below a midrule, a footnote."""
    frame = cell_frame(table)
    esc = frame.copy()
    esc.index = [latex_escape(i) for i in frame.index]
    esc.columns = [latex_escape(c) for c in frame.columns]
    for c in esc.columns:
        esc[c] = esc[c].map(latex_escape)
    bold = {(r, latex_escape(h)) for r, h in _bold_positions(table)}

    def emphasis(column: pd.Series) -> list[str]:
        return ["textbf:--rwrap;" if (i, column.name) in bold else "" for i in range(len(column))]

    styler = esc.style.apply(emphasis, axis=0)
    n_run = len(table.summary)
    latex = styler.to_latex(
        hrules=True,
        caption=latex_escape(caption(table)),
        label=table.label,
        position="htbp",
        position_float="centering",
        column_format="l" + "r" * len(esc.columns),
    )
    lines = latex.split("\n")
    mid = lines.index("\\midrule")
    lines[mid - 1] = "Variant" + lines[mid - 1]
    if table.reported:
        lines.insert(mid + 1 + n_run, "\\midrule")
    end = lines.index("\\end{tabular}")
    note = latex_escape(footnote(table))
    lines.insert(end + 1, "\\par\\smallskip\n\\begin{minipage}{0.95\\linewidth}\\footnotesize " + note
                 + "\\end{minipage}")
    latex = "\n".join(lines)
    return latex.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{4pt}\n", 1)


STANDALONE_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[utf8]{inputenc}
\usepackage[T1]{fontenc}
\usepackage[a4paper,landscape,margin=2cm]{geometry}
\usepackage{booktabs}
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


# ------------------------------------------------------------------------------------ Markdown / text


def to_markdown(table: Table) -> str:
    frame = cell_frame(table)
    for r, h in _bold_positions(table):
        frame.iat[r, list(frame.columns).index(h)] = f"**{frame.iat[r, list(frame.columns).index(h)]}**"
    frame.index = [i.replace("_", "\\_") for i in frame.index]
    frame.index.name = "Variant"
    return frame.to_markdown(colalign=["left"] + ["right"] * len(frame.columns), disable_numparse=True)


def to_text(table: Table) -> str:
    """A plain-text rendering (bold as *x*), for logs and notes."""
    frame = cell_frame(table)
    for r, h in _bold_positions(table):
        j = list(frame.columns).index(h)
        frame.iat[r, j] = f"*{frame.iat[r, j]}*"
    frame.index.name = "Variant"
    return frame.to_string()


def tests_frame(table: Table) -> pd.DataFrame:
    """The comparisons with the reference, in display units (pp), for report.md / index.html."""
    t = table.tests
    if t.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "Variant": [table.name(v) for v in t["variant"]],
        "Metric": t["metric"].map({"pooled_dsc": "DSC", "pooled_miou": "mIoU"}),
        "seeds": t["n_seeds"].astype(int),
        "images": t["n_images"].astype(int),
        "Δ (pp)": [_fmt(x * 100, 2, sign=True) for x in t["diff"]],
        "95% CI (pp)": [f"[{_fmt(a * 100, 2, True)}, {_fmt(b * 100, 2, True)}]" for a, b in
                        zip(t["ci_low"], t["ci_high"])],
        "p": [_fmt_p(p) for p in t["p"]],
        "p (Holm)": [_fmt_p(p) for p in t["p_holm"]],
        "verdict": t["verdict"],
    })
    return out


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "--"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"
