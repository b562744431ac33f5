"""Tests of ``python -m studies.report`` (issue 7).

Issue 19 changed the tables (mean ± std with n, Δ to EGE-UNet with hierarchical-bootstrap CIs, display names);
the statistics and the HTML report have their own modules (test_report_stats.py, test_report_html.py).

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

from studies.reporting.fake import FakeSuite, FakeVariant, fake_suite
from studies.reporting.figures import bubble_areas, pareto_front
from studies.reporting.stats import holm
from studies.reporting.tables import SCORE_COLUMNS

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


def _num(text: str) -> float:
    text = text.replace("$-$", "-").strip()
    return float("nan") if text == "--" else float(text)


def parse_latex_table(tex: str) -> tuple[list[str], dict[str, list[tuple]]]:
    """Column names and, per row label, the cells (mean, std or None, bold) in column order (run rows only)."""
    header = [line for line in tex.splitlines() if line.startswith("Variant &")][0]
    names = [c.strip() for c in header.rstrip("\\ ").split("&")][1:]
    body = tex.split(header, 1)[1].split("\\midrule\n", 1)[1]
    body = body.split("\\midrule", 1)[0].split("\\bottomrule", 1)[0]  # reported rows follow a second rule
    rows: dict[str, list[tuple]] = {}
    for line in body.strip().splitlines():
        cells = [c.strip() for c in line.rstrip().removesuffix("\\\\").split(" & ")]
        assert len(cells) == len(names) + 1, line
        parsed = []
        for raw in cells[1:]:
            bold = "\\textbf{" in raw
            text = re.sub(r"\\textbf\{(.*)\}", r"\1", raw)
            if "$\\pm$" in text:
                mean, std = (_num(x) for x in text.split("$\\pm$"))
            else:
                try:
                    mean, std = _num(text), None
                except ValueError:
                    mean, std = text, None
            parsed.append((mean, std, {"bold": bold}))
        rows[cells[0]] = parsed
    return names, rows


def assert_latex_matches_results(tex: str, runs: pd.DataFrame) -> None:
    """Every mIoU / DSC cell equals mean / sample std (ddof=1) computed here from the results, and n the count."""
    from studies.reporting.names import display_name

    names, rows = parse_latex_table(tex)
    labels = {display_name(v, m): v for v, m in zip(runs["variant"], runs["model"])}
    assert set(rows) == {k.replace("_", "\\_") for k in labels}
    for label, variant in labels.items():
        cells = rows[label.replace("_", "\\_")]
        sub = runs[runs["variant"] == variant]
        assert cells[names.index("n")][0] == len(sub)
        for col, head, _hib, scale, dec in SCORE_COLUMNS:
            mean, std, _ = cells[names.index(head.replace("%", "\\%"))]
            vals = sub[col].astype(float) * scale
            tol = 0.5 * 10 ** -dec + 1e-9
            assert abs(mean - vals.mean()) <= tol, (variant, col, mean, vals.mean())
            if len(vals) >= 2:
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
    for name in ("report.md", "tables.tex", "summary.csv", "stats.csv", "index.html"):
        assert (smoke_report / name).stat().st_size > 0, name
    assert (smoke_report.parent / "index.html").is_file()
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
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (smoke_report / link).stat().st_size > 0, link
    assert "_Skipped: needs at least 2 variants with a recorded latency" in md


def test_latex_numbers_equal_the_results_table(smoke_results: Path, smoke_report: Path):
    tex = (smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text()
    assert_latex_matches_results(tex, _results_table(smoke_results, "smoke"))


def _caption(tex: str) -> str:
    return tex.split("\\caption{", 1)[1].split("}\n\\label", 1)[0]


def test_latex_caption_two_sentences_and_footnote(smoke_report: Path):
    tex = (smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text()
    cap = _caption(tex)
    assert len(re.findall(r"[.!?](\s|$)", cap)) <= 2, cap
    assert "One seed: no inference" in cap
    foot = tex.split("\\begin{minipage}", 1)[1]
    for needed in ("SYNTHETIC DATA", "Budget smoke:", "Protocol clean:", "Device class:", "Numerics version:"):
        assert needed in foot, needed
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "w/o GAB" in tex and "egeunet\\_no\\_gab" not in tex.split("\\midrule", 1)[1]
    assert "$\\uparrow$" not in tex and "$\\downarrow$" not in tex  # one seed: no marks


def test_one_seed_has_no_bold_scores(smoke_report: Path):
    names, rows = parse_latex_table((smoke_report / "tables" / "synthetic-clean-smoke.tex").read_text())
    for head in ("mIoU (\\%)", "DSC (\\%)"):
        assert not any(cells[names.index(head)][2]["bold"] for cells in rows.values())
    stats = pd.read_csv(smoke_report / "stats.csv")
    assert set(stats["verdict"]) == {"one seed: no inference"}


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed")
def test_tables_tex_compiles(smoke_report: Path, tmp_path: Path):
    work = tmp_path / "tex"
    shutil.copytree(smoke_report, work)
    assert_compiles(work)


COMMITTED_REPORTS = sorted(p.parent.name for p in (REPO / "reports").glob("*/tables.tex"))


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed")
@pytest.mark.parametrize("suite", COMMITTED_REPORTS)
def test_committed_tables_tex_compiles(suite: str, tmp_path: Path):
    """What a researcher pastes into a paper: every committed ``reports/<suite>/tables.tex`` compiles."""
    src = REPO / "reports" / suite
    work = tmp_path / suite
    work.mkdir()
    shutil.copy(src / "tables.tex", work)
    shutil.copytree(src / "tables", work / "tables")
    assert_compiles(work)


@pytest.mark.slow
@pytest.mark.parametrize("suite", COMMITTED_REPORTS)
def test_committed_report_is_rebuilt_from_committed_results(suite: str, tmp_path: Path):
    """A committed report is what ``studies.report`` makes of the committed results today: summary, statistics
    and LaTeX tables are equal to a rebuild (so a new run committed without rebuilding its report fails here)."""
    from studies.report import main

    if not (REPO / "results" / suite / "results.csv").is_file():
        pytest.fail(f"reports/{suite} has no results/{suite}/results.csv to be built from")
    assert main(["--suite", suite, "--results", str(REPO / "results"), "--out", str(tmp_path),
                 "--no-html", "--no-qualitative"]) == 0
    committed, rebuilt = REPO / "reports" / suite, tmp_path / suite
    for name in ("summary.csv", "stats.csv", "tables.tex"):
        assert (rebuilt / name).read_text() == (committed / name).read_text(), f"reports/{suite}/{name} is stale"
    tex = sorted(p.name for p in (committed / "tables").glob("*.tex"))
    assert tex == sorted(p.name for p in (rebuilt / "tables").glob("*.tex"))
    for name in tex:
        assert (rebuilt / "tables" / name).read_text() == (committed / "tables" / name).read_text(), \
            f"reports/{suite}/tables/{name} is stale: python -m studies.report --suite {suite}"


def test_report_md_states_provenance_and_conventions(smoke_results: Path, smoke_report: Path):
    md = (smoke_report / "report.md").read_text()
    runs = _results_table(smoke_results, "smoke")
    assert "WARNING: SYNTHETIC DATA" in md
    for h in runs["config_hash"]:
        assert f"`{h}`" in md
    for c in set(runs["commit"].dropna()):
        assert str(c)[:12] in md
    provenance = md.split("## Provenance", 1)[1]
    header = next(line for line in provenance.splitlines() if line.startswith("| variant"))
    for col in ("device", "precision", "numerics_version", "data"):  # what a run's numbers depend on
        assert f" {col} " in header, col
    for needed in ("protocol", "budget", "seeds", "Pooled", "legacy-thop", "ddof = 1", "Holm", "hierarchical",
                   "| w/o GAB"):
        assert needed in md, needed
    assert md.count("![") == len(SMOKE_FIGURES)


def test_qualitative_predictions_reproduce_the_records(smoke_report: Path):
    md = (smoke_report / "report.md").read_text()
    qual = md.split("### Qualitative results", 1)[1]
    assert "recomputed DSC differs" not in qual and "prediction failed" not in qual
    assert "worst, median and best test image of EGE-UNet" in qual


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


def test_bubble_area_is_proportional_to_parameters_without_floor():
    area = bubble_areas(pd.Series([53374, 250000, 7763041]))
    assert area.iloc[2] == pytest.approx(900.0)  # the largest capped at 900 pt²
    light = bubble_areas(pd.Series([53374, 126000]))
    assert light.iloc[0] == pytest.approx(53374 * 0.8e-3)  # light models on the fixed scale
    assert light.iloc[1] / light.iloc[0] == pytest.approx(126000 / 53374)
    assert area.iloc[1] / area.iloc[0] == pytest.approx(250000 / 53374)  # 53 K and 250 K differ 4.7x in area
    assert area.iloc[0] < 14.0  # no minimum-size clamp


def test_pareto_front():
    lat = np.array([10.0, 20.0, 30.0, 15.0])
    dsc = np.array([80.0, 85.0, 84.0, 79.0])
    assert pareto_front(lat, dsc).tolist() == [True, True, False, False]


# ----------------------------------------------------------------------- several seeds (constructed)

FAB_VARIANTS = ["egeunet", "egeunet_gab_no_mask", "egeunet_gab_dil_1111", "egeunet_no_gab"]


def _fabricate(root: Path, suite: str, variants: list[str], seeds: int = 3) -> pd.DataFrame:
    spec = FakeSuite(suite, [FakeVariant(v, shift=-0.01 * i, params=53374 - 1000 * i, gmacs=0.0721 - 0.001 * i,
                                         latency_ms=17.0 + i) for i, v in enumerate(variants)],
                     seeds=tuple(range(seeds)))
    df = fake_suite(root, spec)
    df = pd.concat([df, pd.DataFrame([dict(df.iloc[-1], seed=99, status="failed", reason="diverged",
                                           config_hash="failedrun", pooled_dsc=np.nan)])], ignore_index=True)
    df.to_csv(root / suite / "results.csv", index=False)
    return df


@pytest.fixture(scope="module")
def fabricated_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fab")
    df = _fabricate(root / "results", "ablation_gab", FAB_VARIANTS)
    from studies.reporting.build import Options, build_suite_report

    rep = build_suite_report(root / "results", "ablation_gab", root / "reports", Options(qualitative=False,
                                                                                         n_boot=500))
    return root, df, rep


def test_multi_seed_table_numbers_tests_and_marks(fabricated_report):
    root, df, rep = fabricated_report
    out = root / "reports" / "ablation_gab"
    tex = (out / "tables" / "isic2018-clean-cpu.tex").read_text()
    runs = df[df["status"] == "done"]
    assert_latex_matches_results(tex, runs)
    cap = _caption(tex)
    assert "n = 3 per variant" in cap and "hierarchical bootstrap" in cap and "Holm" in cap
    assert len(re.findall(r"[.!?](\s|$)", cap)) <= 2, cap
    stats = pd.read_csv(out / "stats.csv")
    assert set(stats["n_seeds"]) == {3}
    names, rows = parse_latex_table(tex)
    delta = names.index("$\\Delta$DSC (pp) [95\\% CI]")
    for label in ("w/o GAB", "GAB dilations 1-1-1-1"):  # shifted by -3 and -2 pp in every seed
        assert rows[label][delta][0].endswith("$\\downarrow$"), rows[label][delta]
    assert rows["EGE-UNet"][delta][0] == "reference"
    assert rows["EGE-UNet"][names.index("DSC (\\%)")][2]["bold"]  # the best, 1 pp clear of the runner-up
    assert "EGE-UNet (reported)" in tex.split("\\bottomrule")[0].rsplit("\\midrule", 1)[1]
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
    tex = (tmp_path / "o" / "one" / "tables" / "isic2018-clean-cpu.tex").read_text()
    assert "no EGE-UNet run in this table" in tex
    assert "\\textbf" not in tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]  # nothing to rank


def test_unequal_seed_counts(tmp_path: Path):
    df = _fabricate(tmp_path / "results", "ablation_ds", FAB_VARIANTS[:3], seeds=3)
    df = df[~((df["variant"] == FAB_VARIANTS[2]) & (df["seed"] == 2))]
    df.to_csv(tmp_path / "results" / "ablation_ds" / "results.csv", index=False)
    from studies.reporting.build import Options, build_suite_report

    build_suite_report(tmp_path / "results", "ablation_ds", tmp_path / "o", Options(qualitative=False, n_boot=300))
    tex = (tmp_path / "o" / "ablation_ds" / "tables" / "isic2018-clean-cpu.tex").read_text()
    assert "n = 2-3 per variant" in tex
    assert_latex_matches_results(tex, df[df["status"] == "done"])
    stats = pd.read_csv(tmp_path / "o" / "ablation_ds" / "stats.csv")
    assert set(stats.loc[stats["variant"] == FAB_VARIANTS[2], "n_seeds"]) == {2}  # paired on the shared seeds only


def test_report_honours_the_suites_declared_reference(tmp_path: Path, capsys):
    """A suite file's ``reference`` (or ``--reference``) is what every other variant is compared with."""
    from studies.report import main as report_main

    results = tmp_path / "results"
    _fabricate(results, "mine", FAB_VARIANTS, seeds=2)
    suite = tmp_path / "mine.toml"
    suite.write_text('name = "mine"\ndescription = "own reference"\ndatasets = ["isic2018"]\nseeds = 2\n'
                     'budget = "cpu"\nreference = "egeunet_no_gab"\n'
                     f'variants = [{", ".join(repr(v).replace(chr(39), chr(34)) for v in FAB_VARIANTS)}]\n')
    for argv, ref in ((["--suite", str(suite)], "w/o GAB"),  # declared in the file
                      (["--suite", str(suite), "--reference", "egeunet_gab_no_mask"], "GAB w/o mask"),
                      (["--suite", "mine"], "EGE-UNet")):  # a results folder only: EGE-UNet
        out = tmp_path / f"reports_{len(argv)}_{ref[:3]}"
        assert report_main([*argv, "--results", str(results), "--out", str(out), "--no-qualitative",
                            "--no-html", "--n-boot", "200"]) == 0, capsys.readouterr().err
        names, rows = parse_latex_table((out / "mine" / "tables" / "isic2018-clean-cpu.tex").read_text())
        delta = names.index("$\\Delta$DSC (pp) [95\\% CI]")
        assert [label for label, r in rows.items() if r[delta][0] == "reference"] == [ref]
