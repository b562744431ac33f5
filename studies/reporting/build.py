"""Build one suite's report folder: tables (LaTeX + Markdown), figures, statistics, ``report.md``.

Output layout (``<out>/<suite>/``)::

    report.md                  tables, figures, conventions and provenance on one page
    tables.tex                 standalone LaTeX document \\input-ing every table
    tables/<group>.tex         one table per dataset x protocol x budget
    figures/<kind>__<group>.png / .pdf
    summary.csv                per group and variant: mean, std, n of every column (raw units)
    stats.csv                  every test against EGE-UNet (difference, CI, p, Holm-adjusted p, mark)
    external_<dataset>.csv, tables/external_<dataset>.tex   external evaluations (studies.evaluate), if any
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from studies.reporting import figures as figs
from studies.reporting.external import external_section
from studies.reporting.load import (Group, ReportError, done_runs, is_done, iter_groups,
                                    load_results, read_config, read_history, read_per_image, run_dir)
from studies.reporting.markdown import render
from studies.reporting.qualitative import qualitative_grid
from studies.reporting.stats import N_BOOT, compare_with_reference
from studies.reporting.tables import Table, build_table, caption, footnote, tests_frame, to_markdown, write_tables


@dataclass
class Options:
    n_boot: int = N_BOOT  # bootstrap replicates
    reported: bool = True  # rows with the numbers reported for EGE-UNet
    html: bool = True
    qualitative: bool = True
    max_qual_variants: int = 0  # 0: every variant of the table
    qual_ids: list[str] | None = None
    browser_images: int = 12  # test images with pre-rendered overlays in index.html (0: every test image)
    reference: str | None = None  # the suite's declared reference variant (None: EGE-UNet)


@dataclass
class SuiteReport:
    suite: str
    out_dir: Path
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, list[figs.FigureOutcome]] = field(default_factory=dict)  # group slug -> outcomes
    files: list[Path] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        return [f"{slug}/{f.key}: {f.note}" for slug, fs in self.figures.items() for f in fs if not f.made]


def _records(results_root: Path, suite: str, group: Group):
    """Per-image tables and histories of a group's runs, keyed by (variant, seed) / variant."""
    per_image: dict[tuple[str, int], pd.DataFrame] = {}
    histories: dict[str, list[pd.DataFrame]] = {}
    sizes: list[str] = []
    for _, row in group.runs.iterrows():
        rec = run_dir(results_root, suite, row)
        size = eval_size(read_config(rec))
        if size:
            sizes.append(size)
        per = read_per_image(rec, group.dataset)
        if per is not None:
            per_image[(str(row["variant"]), int(row["seed"]))] = per
        hist = read_history(rec)
        if hist is not None:
            histories.setdefault(str(row["variant"]), []).append(hist)
    return per_image, histories, sizes


def eval_size(config: dict | None) -> str | None:
    """'HxW' evaluation resolution of a run from its config.json (recipe.size), None when not recorded."""
    if not config:
        return None
    for src in (config, config.get("recipe") or {}):
        for key in ("size", "image_size", "input_size", "img_size"):
            v = src.get(key) if isinstance(src, dict) else None
            if v is not None:
                h, w = (v[0], v[-1]) if isinstance(v, (list, tuple)) else (v, v)
                return f"{int(h)}x{int(w)}"
    return None


def build_suite_report(results_root: Path | str, suite: str, out_root: Path | str,
                       options: Options | None = None) -> SuiteReport:
    """Read ``<results_root>/<suite>/`` and write ``<out_root>/<suite>/``; raises ReportError on bad input."""
    options = options or Options()
    results_root, out_root = Path(results_root), Path(out_root)
    df = load_results(results_root, suite)
    done = done_runs(df)
    if done.empty:
        raise ReportError(f"results table {results_root / suite} holds no finished run (status 'done' with a "
                          "test DSC)")
    out = out_root / suite
    (out / "figures").mkdir(parents=True, exist_ok=True)
    report = SuiteReport(suite, out)
    sections, html_sections = [], []
    summaries, all_tests = [], []
    for group in iter_groups(df, options.reference):
        per_image, histories, sizes = _records(results_root, suite, group)
        tests = compare_with_reference(group.reference, group.variants, per_image, n_boot=options.n_boot)
        table = build_table(group, tests, per_image, sizes, reported=options.reported)
        report.tables.append(table)
        fig_dir = out / "figures"
        outcomes = [
            figs.params_vs_dsc(table, fig_dir / f"params_dsc__{group.slug}"),
            figs.ablation_bars(table, fig_dir / f"ablation__{group.slug}"),
            figs.training_curves(histories, group.reference, fig_dir / f"curves__{group.slug}", group.variants,
                                 {v: table.name(v) for v in group.variants}),
            figs.latency_pareto(table, fig_dir / f"pareto__{group.slug}"),
        ]
        if options.qualitative:
            outcomes.append(qualitative_grid(group, results_root, suite, per_image,
                                             fig_dir / f"qualitative__{group.slug}",
                                             max_variants=options.max_qual_variants, ids=options.qual_ids,
                                             names={v: table.name(v) for v in group.variants}))
        else:
            outcomes.append(figs._skip("qualitative", "Qualitative results", "disabled (--no-qualitative)"))
        report.figures[group.slug] = outcomes
        for o in outcomes:
            report.files += o.files
        summaries.append(table.summary.reset_index().assign(dataset=group.dataset, protocol=group.protocol,
                                                            budget=group.budget, synthetic=group.synthetic))
        if not tests.empty:
            all_tests.append(tests.assign(dataset=group.dataset, protocol=group.protocol, budget=group.budget,
                                          reference=group.reference))
        sections.append(_section(table, outcomes, out))
        if options.html:
            html_sections.append(_html_section(table, outcomes, out, results_root, suite, per_image, options))
    report.files += write_tables(report.tables, out, suite)
    summary = pd.concat(summaries, ignore_index=True)
    lead = ["dataset", "protocol", "budget", "synthetic", "variant", "n", "seeds"]
    summary = summary[lead + [c for c in summary.columns if c not in lead]]
    summary.to_csv(out / "summary.csv", index=False)
    stats = pd.concat(all_tests, ignore_index=True) if all_tests else pd.DataFrame(
        columns=["variant", "metric", "test", "n_seeds", "n_images", "diff", "ci_low", "ci_high", "p", "p_holm",
                 "verdict", "mark", "dataset", "protocol", "budget", "reference"])
    stats.to_csv(out / "stats.csv", index=False)
    report.files += [out / "summary.csv", out / "stats.csv"]
    synthetic_groups = [t.group for t in report.tables if t.group.synthetic]
    md = render(
        suite=suite,
        results_path=str(results_root / suite),
        n_runs=len(done),
        n_failed=len(df) - len(done),
        synthetic=bool(synthetic_groups),
        synthetic_groups=", ".join(f"{g.dataset}/{g.protocol}/{g.budget}" for g in synthetic_groups),
        tables=sections,
        provenance=_provenance(done),
        failed=_failed(df),
    )
    ext_md, ext_files = external_section(results_root, suite, out)  # studies.evaluate's tables, if any
    md = md.rstrip("\n") + "\n\n" + ext_md if ext_md else md
    report.files += ext_files
    (out / "report.md").write_text(md)
    report.files.append(out / "report.md")
    if options.html:
        from studies.reporting import html as page

        left = df[~is_done(df)]
        cols = [c for c in ("variant", "dataset", "seed", "status", "reason", "config_hash") if c in left.columns]
        (out / "index.html").write_text(page.suite_page(suite, html_sections, page.provenance_frame(done),
                                                        left[cols] if len(left) else None, bool(synthetic_groups)))
        report.files += [out / "index.html", page.index_page(out_root)]
    return report


def _html_section(table: Table, outcomes, out: Path, results_root: Path, suite: str, per_image, options) -> dict:
    """One table's part of index.html, with the per-image browser and its pre-rendered overlays."""
    from studies.reporting import html as page
    from studies.reporting.qualitative import choose_ids, predict_variants, spread_ids

    g = table.group
    names = {v: table.name(v) for v in g.variants}
    anchor = g.reference or g.variants[0]
    anchor_seeds = sorted(s for (v, s) in per_image if v == anchor)
    browser = ""
    if anchor_seeds:
        seed = anchor_seeds[0]
        frame, _used = page.browser_frame(g, per_image, seed, names)
        rendered, notes = {}, {}
        if options.qualitative and not frame.empty:
            ref_per = per_image[(anchor, seed)]
            spread = spread_ids(ref_per, options.browser_images or len(ref_per))  # 0: every test image
            ids = list(dict.fromkeys([i for i, _ in choose_ids(ref_per)] + spread))
            preds = predict_variants(g, results_root, suite, per_image, ids, seed)
            if isinstance(preds, str):
                notes["all"] = preds
            else:
                rendered, notes = page.render_overlays(preds, out, g.slug, names)
        browser = page._browser(g.slug, frame, rendered, names, notes) if not frame.empty else ""
        if not rendered:
            why = notes.get("all", "disabled (--no-qualitative)" if not options.qualitative else "no image")
            browser += f'<p class="none">No overlays rendered: {page._e(why)}.</p>'
        else:
            browser = (f"<p>Seed {seed} of each variant (else its first seed). Click a column heading to sort, a row "
                       f"to open the image; overlays are pre-rendered for the {len(rendered)} rows marked ◆ (worst to "
                       "best of the reference; <code>python -m studies.report --browser-images 0</code> renders every "
                       "test image, for a local report).</p>" + browser)
    return page.section(table, outcomes, out, browser, tests_frame(table))


def _section(table: Table, outcomes: list[figs.FigureOutcome], out: Path) -> dict:
    g = table.group
    fig_entries = []
    for o in outcomes:
        png = next((p for p in o.files if p.suffix == ".png"), None)
        pdf = next((p for p in o.files if p.suffix == ".pdf"), None)
        fig_entries.append(dict(title=o.title, made=o.made, note=o.note, caption=o.caption,
                                png=png.relative_to(out).as_posix() if png else "",
                                pdf=pdf.relative_to(out).as_posix() if pdf else ""))
    return dict(
        heading=f"{g.dataset} · {g.protocol} protocol · {g.budget} budget" + (" · SYNTHETIC" if g.synthetic else ""),
        dataset=g.dataset, protocol=g.protocol, budget=g.budget, synthetic=g.synthetic,
        seeds=", ".join(str(s) for s in g.seeds), n_variants=len(g.variants),
        caption=caption(table), footnote=footnote(table), markdown=to_markdown(table), tex=f"tables/{g.slug}.tex",
        reference=table.name(g.reference) if g.reference else None,
        tests=tests_frame(table).to_markdown(index=False, disable_numparse=True) if not table.tests.empty else "",
        figures=fig_entries,
    )


def _provenance(done: pd.DataFrame) -> str:
    cols = [c for c in ("variant", "model", "dataset", "protocol", "budget", "seed", "config_hash", "commit",
                        "device", "precision", "numerics_version", "data", "best_epoch", "epochs", "wall_s",
                        "synthetic") if c in done.columns]
    frame = done[cols].copy()
    for c in ("best_epoch", "epochs", "seed", "numerics_version"):
        if c in frame:
            frame[c] = frame[c].map(lambda v: f"{int(v)}" if pd.notna(v) and str(v) != "" else "")
    if "wall_s" in frame:
        frame["wall_s"] = frame["wall_s"].map(lambda v: f"{v:.0f}" if pd.notna(v) else "")
    frame["variant"] = frame["variant"].map(lambda v: str(v).replace("_", "\\_"))
    frame["model"] = frame["model"].map(lambda v: f"`{v}`")
    frame["config_hash"] = frame["config_hash"].map(lambda v: f"`{v}`" if v else "")
    frame["commit"] = frame["commit"].map(lambda v: f"`{str(v)[:12]}`" if v else "")
    commits = sorted({str(c) for c in done["commit"] if c})
    head = (f"Code version(s): {', '.join(f'`{c[:12]}`' for c in commits)}.\n\n" if commits
            else "Code version: not recorded.\n\n")
    return head + frame.to_markdown(index=False, disable_numparse=True)


def _failed(df: pd.DataFrame) -> str:
    left = df[~is_done(df)]
    if left.empty:
        return ""
    cols = [c for c in ("variant", "dataset", "seed", "status", "reason", "config_hash") if c in left.columns]
    frame = left[cols].copy()
    frame["variant"] = frame["variant"].map(lambda v: str(v).replace("_", "\\_"))
    return frame.to_markdown(index=False, disable_numparse=True)
