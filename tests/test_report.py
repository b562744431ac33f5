"""Tests of ``python -m studies.report`` (issue 7).

The main tests run on REAL output: a session fixture trains the smoke suite into a temporary results
folder (``python -m studies.run --suite smoke --budget smoke``) and reports it through the CLI. Small
fabricated tables cover what the smoke suite cannot show (several seeds, t-tests, bold/underline, errors).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from studies.reporting.figures import pareto_front
from studies.reporting.stats import holm, per_image_test, seed_test
from studies.reporting.tables import TABLE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
PDFLATEX = shutil.which("pdflatex")
FIGURE_KINDS = ("params_dsc", "ablation", "curves", "pareto", "qualitative")
# figures the smoke suite must produce (it records no latency: the Pareto plot is skipped with a note)
SMOKE_FIGURES = ("params_dsc", "ablation", "curves", "qualitative")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """A real results folder: the smoke suite trained end to end (synthetic data, smoke budget).

    ``EGEUNET_REPORT_TEST_RESULTS=<folder>`` reuses a folder holding a finished smoke run (a copy is used).
    """
    results = tmp_path_factory.mktemp("results")
    reuse = os.environ.get("EGEUNET_REPORT_TEST_RESULTS")
    if reuse:
        shutil.copytree(reuse, results, dirs_exist_ok=True)
        return results
    proc = _run("studies.run", "--suite", "smoke", "--budget", "smoke", "--results", str(results))
    assert proc.returncode == 0, (f"smoke suite failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    assert (results / "smoke" / "results.csv").is_file()
    return results


@pytest.fixture(scope="session")
def smoke_report(smoke_results, tmp_path_factory) -> Path:
    """The report of the smoke results, made through the CLI."""
    out = tmp_path_factory.mktemp("reports")
    proc = _run("studies.report", "--suite", "smoke", "--results", str(smoke_results), "--out", str(out))
    assert proc.returncode == 0, f"report failed:\n{proc.stdout}\n{proc.stderr}"
    return out / "smoke"


def _results_table(results: Path, suite: str) -> pd.DataFrame:
    df = pd.read_csv(results / suite / "results.csv", dtype={"config_hash": str, "commit": str})
    return df[(df["status"] == "done") & df["pooled_dsc"].notna()]


# --------------------------------------------------------------------------------------- LaTeX parsing


def _strip_cell(cell: str) -> tuple[str, dict]:
    """A LaTeX cell without its decorations, and which decorations it had."""
    info = {"bold": "\\textbf{" in cell, "underline": "\\underline{" in cell,
            "mark": "".join(re.findall(r"\$\^\{(\*+)\}\$", cell))}
    cell = re.sub(r"\\rlap\{\$\^\{\*+\}\$\}", "", cell)
    cell = re.sub(r"\$\^\{\*+\}\$", "", cell)
    for cmd in ("textbf", "underline"):
        cell = re.sub(r"\\%s\{(.*)\}" % cmd, r"\1", cell)
    return cell.strip(), info


def parse_latex_table(tex: str) -> tuple[list[str], dict[str, list[tuple]]]:
    """Column names and, per variant, the cells (mean, std or None, decorations) in column order."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    header = [line for line in tex.split("\\midrule", 1)[0].splitlines() if line.startswith("Variant &")][0]
    names = [c.strip() for c in header.rstrip("\\ ").split("&")][1:]
    rows: dict[str, list[tuple]] = {}
    for line in body.strip().splitlines():
        cells = [c.strip() for c in line.rstrip().removesuffix("\\\\").split(" & ")]
        assert len(cells) == len(names) + 1, line
        variant = cells[0].replace("\\_", "_")
        parsed = []
        for raw in cells[1:]:
            text, info = _strip_cell(raw)
            if "$\\pm$" in text:
                mean, std = (float(x) for x in text.split("$\\pm$"))
            else:
                mean, std = (float("nan") if text == "--" else float(text)), None
            parsed.append((mean, std, info))
        rows[variant] = parsed
    return names, rows


def _column_map(names: list[str]) -> list[tuple[int, str, float, int]]:
    """(position in the LaTeX row, results column, scale, decimals) of every table column."""
    offset = 1 if names and names[0] == "n" else 0
    assert len(names) - offset == len(TABLE_COLUMNS)
    out = []
    for i, (col, _h0, h1, _hib, scale, dec) in enumerate(TABLE_COLUMNS):
        assert names[i + offset] == h1
        out.append((i + offset, col, scale, dec))
    return out


def assert_latex_matches_results(tex: str, runs: pd.DataFrame) -> None:
    """Every number of the LaTeX table equals mean / sample std (ddof=1) computed here from the results."""
    names, rows = parse_latex_table(tex)
    assert set(rows) == set(runs["variant"])
    for pos, col, scale, dec in _column_map(names):
        for variant, sub in runs.groupby("variant"):
            mean, std, _ = rows[variant][pos]
            vals = sub[col].astype(float) * scale
            tol = 0.5 * 10 ** -dec + 1e-9
            assert abs(mean - vals.mean()) <= tol, (variant, col, mean, vals.mean())
            if len(vals) >= 2 and col not in ("params", "gmacs"):
                assert std is not None and abs(std - vals.std(ddof=1)) <= tol, (variant, col, std)
            else:
                assert std is None, (variant, col, "a single seed must show no std")


def _pdflatex(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=180)


def assert_compiles(folder: Path) -> None:
    proc = _pdflatex(folder)
    log = (folder / "tables.log").read_text(errors="replace") if (folder / "tables.log").exists() else ""
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert proc.returncode == 0 and not errors, f"LaTeX error: {errors or proc.stdout[-2000:]}"
    assert (folder / "tables.pdf").stat().st_size > 1000
    assert "undefined" not in " ".join(line for line in log.splitlines() if "Warning" in line).lower()


# ------------------------------------------------------------------------------------ real smoke output


def test_report_writes_every_output(smoke_report: Path):
    for name in ("report.md", "tables.tex", "summary.csv", "stats.csv"):
        assert (smoke_report / name).stat().st_size > 0, name
    tables = list((smoke_report / "tables").glob("*.tex"))
    assert len(tables) == 1 and tables[0].name == "synthetic-clean-smoke.tex"
    assert "\\input{tables/synthetic-clean-smoke}" in (smoke_report / "tables.tex").read_text()


def test_every_figure_file_is_produced_and_non_empty(smoke_report: Path):
    from PIL import Image

    figs = smoke_report / "figures"
    for kind in SMOKE_FIGURES:
        for ext in ("png", "pdf"):
            path = figs / f"{kind}__synthetic-clean-smoke.{ext}"
            assert path.is_file() and path.stat().st_size > 2000, path
        with Image.open(figs / f"{kind}__synthetic-clean-smoke.png") as im:
            assert min(im.size) >= 300  # 300 dpi, at least 1 in each way
        assert (figs / f"{kind}__synthetic-clean-smoke.pdf").read_bytes()[:5] == b"%PDF-"
    md = (smoke_report / "report.md").read_text()
    # every figure the report links exists, and a figure that is not made is explained, not missing
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (smoke_report / link).stat().st_size > 0, link
    assert "_Skipped: needs at least 2 variants with a recorded latency" in md


def test_latex_numbers_equal_the_results_table(smoke_results: Path, smoke_report: Path):
    tex = (smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text()
    assert_latex_matches_results(tex, _results_table(smoke_results, "smoke"))


def test_latex_caption_states_data_conventions_and_test(smoke_report: Path):
    tex = (smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text()
    caption = tex.split("\\caption{", 1)[1].split("\\label", 1)[0]
    assert "SYNTHETIC DATA" in caption and "\\textbf{" in caption
    for needed in ("synthetic (test split)", "protocol clean", "budget smoke", "n = 1 seed", "pooled over all test",
                   "per-image DSC", "legacy-thop GMACs", "Wilcoxon signed-rank over per-image DSC", "n = 8 images",
                   "Holm", "64$\\times$64 pixels", "Trained on cpu."):
        assert needed in caption, needed
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\cmidrule" in tex
    assert "egeunet\\_no\\_gab" in tex and "egeunet_no_gab" not in tex


def test_caption_names_mixed_training_devices():
    from studies.reporting.tables import _device_phrase

    assert _device_phrase(pd.DataFrame({"variant": ["a"]})) == ""
    assert _device_phrase(pd.DataFrame({"device": ["cpu", "cpu"]})) == "Trained on cpu."
    mixed = _device_phrase(pd.DataFrame({"device": ["cpu", "cuda -> cpu", "cuda -> cpu"]}))
    assert mixed.startswith("Trained on cpu (1 run), cuda -> cpu (2 runs)")


def test_significance_marks_follow_stats(smoke_report: Path):
    stats = pd.read_csv(smoke_report / "stats.csv")
    names, rows = parse_latex_table((smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text())
    assert set(stats["variant"]) == {"egeunet_no_gab", "egeunet_no_ds"}
    assert set(stats["metric"]) == {"per_image_dsc_mean"}  # one seed: per-image test of that column only
    assert (stats["test"] == "Wilcoxon signed-rank over per-image DSC").all()
    for _, r in stats.iterrows():
        expected = "**" if r["p_holm"] < 0.01 else "*" if r["p_holm"] < 0.05 else ""
        assert rows[r["variant"]][-1][2]["mark"] == expected  # the per-image DSC column is the last
    assert all(cell[2]["mark"] == "" for cell in rows["egeunet"])
    assert all(cell[2]["mark"] == "" for v in rows for cell in rows[v][:-1])


def test_best_bold_second_underlined(smoke_results: Path, smoke_report: Path):
    names, rows = parse_latex_table((smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text())
    runs = _results_table(smoke_results, "smoke")
    for pos, col, scale, dec in _column_map(names):
        vals = (runs.set_index("variant")[col] * scale).round(dec)
        higher = col not in ("params", "gmacs")
        ranked = sorted(set(vals), reverse=higher)
        for v in vals.index:
            info = rows[v][pos][2]
            assert info["bold"] == (len(ranked) > 1 and vals[v] == ranked[0]), (v, col)
            assert info["underline"] == (len(ranked) > 1 and len(vals) > 2 and vals[v] == ranked[1]), (v, col)


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed")
def test_tables_tex_compiles(smoke_report: Path, tmp_path: Path):
    work = tmp_path / "tex"
    shutil.copytree(smoke_report, work)
    assert_compiles(work)


def test_report_md_states_provenance_and_conventions(smoke_results: Path, smoke_report: Path):
    md = (smoke_report / "report.md").read_text()
    runs = _results_table(smoke_results, "smoke")
    assert "WARNING: SYNTHETIC DATA" in md
    for h in runs["config_hash"]:
        assert f"`{h}`" in md
    for c in set(runs["commit"].dropna()):
        assert str(c)[:12] in md
    for needed in ("protocol", "budget", "seeds", "Pooled", "Per-image", "legacy-thop", "ddof = 1", "Holm",
                   "| egeunet\\_no\\_gab"):
        assert needed in md, needed
    assert md.count("![") == len(SMOKE_FIGURES)


def test_qualitative_predictions_reproduce_the_records(smoke_report: Path):
    md = (smoke_report / "report.md").read_text()
    qual = md.split("### Qualitative results", 1)[1]
    assert "recomputed DSC differs" not in qual and "prediction failed" not in qual
    assert "lowest per-image DSC for egeunet" in qual


# ------------------------------------------------------------------------------------ errors (CLI)


def test_missing_results_folder_is_a_one_line_error(tmp_path: Path):
    proc = _run("studies.report", "--suite", "nope", "--results", str(tmp_path), "--out", str(tmp_path / "o"),
                timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no results folder" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["", "suite,variant,model,dataset,protocol,budget,seed,pooled_dsc,status\n"])
def test_empty_results_table_is_a_one_line_error(tmp_path: Path, content: str):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.csv").write_text(content)
    proc = _run("studies.report", "--suite", "s", "--results", str(tmp_path), "--out", str(tmp_path / "o"),
                timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "empty" in proc.stderr


def test_all_with_no_suite_is_a_one_line_error(tmp_path: Path):
    proc = _run("studies.report", "--all", "--results", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_only_failed_runs_is_an_error(tmp_path: Path):
    _fabricate(tmp_path, "s", ["egeunet"], seeds=1)
    df = pd.read_csv(tmp_path / "s" / "results.csv")
    df["status"] = "failed"
    df.to_csv(tmp_path / "s" / "results.csv", index=False)
    from studies.report import main

    assert main(["--suite", "s", "--results", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


# ------------------------------------------------------------------------------------- statistics


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.09, max(0.09, 0.08), 0.5
    assert np.allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True)
    assert np.all(holm([0.9, 0.8]) <= 1.0)


def test_seed_test_is_scipy_paired_t_and_wilcoxon_needs_six_seeds():
    ref = pd.Series([0.80, 0.81, 0.82, 0.80, 0.83], index=[0, 1, 2, 3, 4])
    other = pd.Series([0.78, 0.80, 0.79, 0.79, 0.80, 0.99], index=[0, 1, 2, 3, 4, 9])  # seed 9 is unpaired
    res = seed_test(ref, other, "wilcoxon")  # 5 shared seeds: still the t-test
    expected = sps.ttest_rel(other.iloc[:5], ref)
    assert res.test == "paired t-test over seeds" and res.n == 5
    assert res.p == pytest.approx(expected.pvalue)
    ci = expected.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high))
    six = seed_test(pd.Series(np.arange(6) * 0.01), pd.Series(np.arange(6) * 0.01 - 0.02 - np.arange(6) * 1e-3),
                    "wilcoxon")
    assert six.test == "Wilcoxon signed-rank over seeds" and six.p == pytest.approx(0.03125)
    assert seed_test(ref.iloc[:1], other.iloc[:1]) is None


def test_per_image_test_pairs_by_id():
    a = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "dsc": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    b = a.iloc[::-1].assign(dsc=lambda d: d["dsc"] - [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    res = per_image_test(a, b)
    d = b.set_index("id")["dsc"].reindex(a["id"]).to_numpy() - a["dsc"].to_numpy()
    assert res.n == 6 and res.p == pytest.approx(sps.wilcoxon(d).pvalue)


def test_pareto_front():
    lat = np.array([10.0, 20.0, 30.0, 15.0])
    dsc = np.array([80.0, 85.0, 84.0, 79.0])
    assert pareto_front(lat, dsc).tolist() == [True, True, False, False]


# ----------------------------------------------------------------------- several seeds (fabricated)

FAB_VARIANTS = ["egeunet", "egeunet_gab_no_mask", "egeunet_gab_dil_1111", "egeunet_no_gab"]


def _fabricate(root: Path, suite: str, variants: list[str], seeds: int = 3, epochs: int = 6) -> pd.DataFrame:
    """A small results table with run records (history.csv, per_image.csv, config.json; no checkpoints)."""
    import json

    rng = np.random.default_rng(7)
    rows = []
    for vi, v in enumerate(variants):
        for seed in range(seeds):
            h = f"fab{vi:02d}{seed:02d}"
            rec = root / "runs" / h
            rec.mkdir(parents=True)
            base = 0.88 - 0.006 * vi + rng.normal(0, 0.002)
            ep = np.arange(1, epochs + 1)
            pd.DataFrame({"epoch": ep, "train_loss": np.exp(-ep / 3) + 0.2, "val_loss": np.exp(-ep / 3) + 0.3,
                          "val_pooled_dsc": base - 0.3 * np.exp(-ep / 2), "lr": 1e-3, "seconds": 1.0}
                         ).to_csv(rec / "history.csv", index=False)
            dsc = np.clip(rng.normal(base, 0.05, 30), 0, 1)
            pd.DataFrame({"dataset": "isic2018", "split": "test", "id": [f"ISIC_{i:07d}" for i in range(30)],
                          "tn": 1, "fp": 1, "fn": 1, "tp": 1, "dsc": dsc, "iou": dsc / (2 - dsc)}
                         ).to_csv(rec / "per_image.csv", index=False)
            (rec / "config.json").write_text(json.dumps({"model": v, "recipe": {"size": 256}}))
            rows.append(dict(suite=suite, variant=v, model=v, dataset="isic2018", protocol="clean", budget="cpu",
                             seed=seed, params=53374 - 1000 * vi, gmacs=0.072096256 - 0.001 * vi,
                             flop_counter_gmacs=np.nan, latency_ms=40.0 + 5 * vi + rng.normal(0, 1),
                             pooled_miou=base / (2 - base), pooled_dsc=base, pooled_acc=0.95 + rng.normal(0, 0.003),
                             pooled_sen=0.89 + rng.normal(0, 0.01), pooled_spe=0.97 + rng.normal(0, 0.002),
                             per_image_dsc_mean=dsc.mean(), per_image_dsc_std=dsc.std(ddof=1),
                             per_image_iou_mean=np.nan, per_image_iou_std=np.nan, isic_tjaccard=np.nan,
                             best_epoch=epochs, epochs=epochs, wall_s=100.0, status="done", reason="",
                             config_hash=h, commit="0123456789abcdef", synthetic=False))
    rows.append(dict(rows[-1], seed=99, status="failed", reason="diverged", config_hash="failedrun",
                     pooled_dsc=np.nan))
    (root / suite).mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(root / suite / "results.csv", index=False)
    return df


@pytest.fixture(scope="module")
def fabricated_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fab")
    df = _fabricate(root / "results", "ablation_gab", FAB_VARIANTS)
    from studies.reporting.build import Options, build_suite_report

    rep = build_suite_report(root / "results", "ablation_gab", root / "reports", Options(qualitative=False))
    return root, df, rep


def test_multi_seed_table_numbers_tests_and_marks(fabricated_report):
    root, df, rep = fabricated_report
    out = root / "reports" / "ablation_gab"
    tex = (out / "tables" / "isic2018-clean-cpu.tex").read_text()
    runs = df[df["status"] == "done"]
    assert_latex_matches_results(tex, runs)
    assert "n = 3 seeds (0, 1, 2)" in tex and "paired t-test over seeds (n = 3 seeds" in tex
    assert "Holm correction across the 3 variants" in tex and "SYNTHETIC" not in tex
    stats = pd.read_csv(out / "stats.csv")
    assert (stats["test"] == "paired t-test over seeds").all() and set(stats["n"]) == {3}
    names, rows = parse_latex_table(tex)
    dsc_pos = [pos for pos, col, *_ in _column_map(names) if col == "pooled_dsc"][0]
    ref = runs[runs["variant"] == "egeunet"].set_index("seed")["pooled_dsc"]
    raw = []
    for v in FAB_VARIANTS[1:]:
        other = runs[runs["variant"] == v].set_index("seed")["pooled_dsc"]
        raw.append(sps.ttest_rel(other.loc[ref.index], ref).pvalue)
    adjusted = holm(raw)
    for v, p_adj in zip(FAB_VARIANTS[1:], adjusted):
        expected = "**" if p_adj < 0.01 else "*" if p_adj < 0.05 else ""
        assert rows[v][dsc_pos][2]["mark"] == expected, (v, p_adj)
    # the failed run is listed, not tabulated
    md = (out / "report.md").read_text()
    assert "failedrun" in md and "diverged" in md


def test_multi_seed_figures(fabricated_report):
    root, _df, rep = fabricated_report
    made = {f.key for f in rep.figures["isic2018-clean-cpu"] if f.made}
    assert made == {"params_dsc", "ablation", "curves", "pareto"}
    for f in rep.figures["isic2018-clean-cpu"]:
        for p in f.files:
            assert p.stat().st_size > 2000


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed")
def test_multi_seed_tables_compile(fabricated_report, tmp_path: Path):
    root, _df, _rep = fabricated_report
    work = tmp_path / "tex"
    shutil.copytree(root / "reports" / "ablation_gab", work)
    assert_compiles(work)


def test_one_variant_skips_comparison_figures_with_a_note(tmp_path: Path):
    _fabricate(tmp_path / "results", "one", ["egeunet_no_gab"], seeds=2)
    from studies.report import main

    assert main(["--suite", "one", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o"),
                 "--no-qualitative"]) == 0
    md = (tmp_path / "o" / "one" / "report.md").read_text()
    assert md.count("_Skipped:") == 4  # bubble, ablation, Pareto, qualitative; the curves are made
    assert "No egeunet run in this table: no significance tests." in md
    tex = (tmp_path / "o" / "one" / "tables" / "isic2018-clean-cpu.tex").read_text()
    assert "\\textbf" not in tex.split("\\midrule", 1)[1]  # nothing to rank


def test_unequal_seed_counts_get_an_n_column(tmp_path: Path):
    df = _fabricate(tmp_path / "results", "ablation_ds", FAB_VARIANTS[:3], seeds=3)
    df = df[~((df["variant"] == FAB_VARIANTS[2]) & (df["seed"] == 2))]
    df.to_csv(tmp_path / "results" / "ablation_ds" / "results.csv", index=False)
    from studies.reporting.build import Options, build_suite_report

    build_suite_report(tmp_path / "results", "ablation_ds", tmp_path / "o", Options(qualitative=False))
    tex = (tmp_path / "o" / "ablation_ds" / "tables" / "isic2018-clean-cpu.tex").read_text()
    names, rows = parse_latex_table(tex)
    assert names[0] == "n" and rows[FAB_VARIANTS[2]][0][0] == 2 and rows["egeunet"][0][0] == 3
    assert "n = 2-3 seeds per variant" in tex
    assert_latex_matches_results(tex, df[df["status"] == "done"])
    stats = pd.read_csv(tmp_path / "o" / "ablation_ds" / "stats.csv")
    assert set(stats.loc[stats["variant"] == FAB_VARIANTS[2], "n"]) == {2}  # paired on the shared seeds only
