"""The static HTML report (issue 19), checked in headless Chromium (Debian's ``chromium`` driven by Playwright).

The report is built from constructed run records on the synthetic dataset (two variants with untrained
checkpoints, one without, so its missing checkpoint must be stated and nothing may crash). The browser test
skips when ``/usr/bin/chromium`` or Playwright is absent; the static checks always run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from studies.reporting.fake import FakeSuite, FakeVariant, fake_suite

CHROMIUM = os.environ.get("EGEUNET_CHROMIUM", "/usr/bin/chromium")
SUITE = "ablation_html"
SLUG = "synthetic-clean-cpu"


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    spec = FakeSuite(SUITE, [FakeVariant("egeunet", checkpoint=True),
                             FakeVariant("egeunet_no_xy", shift=-0.03, params=48016, checkpoint=True),
                             FakeVariant("egeunet_x2", shift=0.01, params=200000)],  # no checkpoint
                     seeds=(0, 1), dataset="synthetic", size=64)
    df = fake_suite(root / "results", spec)
    from studies.report import main

    assert main(["--suite", SUITE, "--results", str(root / "results"), "--out", str(root / "reports"),
                 "--n-boot", "300"]) == 0
    return root / "reports", df


def test_static_html_has_everything_and_no_network(html_report):
    out, _df = html_report
    page = (out / SUITE / "index.html").read_text()
    assert (out / "index.html").is_file() and f'href="{SUITE}/index.html"' in (out / "index.html").read_text()
    for needed in ("Run provenance", "Per-image browser", "EGE-UNet", "w/o H-W branch", "checkpoint missing",
                   "hierarchical bootstrap", "Numerics version"):
        assert needed in page, needed
    assert not re.search(r'(src|href)="(https?:)?//', page), "network asset"
    for h in _df["config_hash"]:
        assert h in page
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
        if ref.startswith("data:"):
            continue
        assert (out / SUITE / unquote(ref)).exists(), ref
    for kind in ("params_dsc", "ablation", "curves", "pareto", "qualitative"):
        for ext in ("png", "pdf"):
            assert (out / SUITE / "figures" / f"{kind}__{SLUG}.{ext}").stat().st_size > 2000, (kind, ext)


def test_browser_images_0_renders_an_overlay_for_every_row(html_report, tmp_path):
    """--browser-images 0: every row of the per-image browser opens its image with the overlays."""
    from studies.report import main

    out, _df = html_report
    results = out.parent / "results"
    assert main(["--suite", SUITE, "--results", str(results), "--out", str(tmp_path), "--n-boot", "300",
                 "--browser-images", "0"]) == 0
    page = (tmp_path / SUITE / "index.html").read_text()
    keys = re.findall(r'<tr[^>]*data-group="[^"]*"[^>]*data-key="([^"]+)"', page)
    assert len(keys) >= 8
    details = set(re.findall(rf'id="detail-{SLUG}-([^"]+)"', page))
    assert set(keys) <= details
    default_page = (out / SUITE / "index.html").read_text()
    assert len(set(re.findall(rf'id="detail-{SLUG}-([^"]+)"', default_page))) < len(keys)
    assert main(["--suite", SUITE, "--results", str(results), "--out", str(tmp_path), "--browser-images", "-1"]) == 2


def _unavailable(why: str) -> None:
    """Skip without a browser; fail instead where the environment requires it (CI installs Chromium)."""
    if os.environ.get("EGEUNET_REQUIRE_BROWSER"):
        pytest.fail(f"EGEUNET_REQUIRE_BROWSER is set but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        _unavailable(f"chromium not installed at {CHROMIUM}")
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as exc:  # a broken install
            _unavailable(f"chromium does not start: {exc}")
        yield b
        b.close()


def test_report_in_headless_chromium(html_report, browser, tmp_path_factory):
    out, df = html_report
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto((out / SUITE / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert not errors, errors
    assert not failed, failed
    # every visible image decoded; every image (hidden ones too) and link points to an existing file
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).map(i => i.src)""")
    assert not broken, broken
    refs = page.evaluate("""() => Array.from(document.querySelectorAll('img[src], a[href]'))
        .map(e => e.src || e.href)""")
    assert refs
    for url in refs:
        u = urlparse(url)
        if u.scheme == "file":
            assert Path(unquote(u.path)).exists(), url
        else:
            assert u.scheme in ("data", ""), url
    # the results table equals the CSV: every score cell's mean, and the displayed text
    cells = page.evaluate("""() => Array.from(document.querySelectorAll('table.results td[data-col]'))
        .map(td => [td.closest('tr').dataset.variant, td.dataset.col, td.dataset.mean, td.textContent])""")
    assert len(cells) == 2 * df["variant"].nunique()
    for variant, col, mean, text in cells:
        vals = df.loc[df["variant"] == variant, col].astype(float)
        assert float(mean) == pytest.approx(vals.mean(), rel=1e-9)
        shown_mean, shown_sd = (float(x.replace("−", "-")) for x in text.split("±"))
        assert shown_mean == pytest.approx(vals.mean() * 100, abs=0.005 + 1e-9)
        assert shown_sd == pytest.approx(vals.std(ddof=1) * 100, abs=0.005 + 1e-9)
    # sorting the per-image browser by the EGE-UNet column, both ways
    table = f"#browser-{SLUG}"
    head = page.locator(f"{table} thead th", has_text="EGE-UNet")
    head.click()
    asc = page.evaluate(f"""() => Array.from(document.querySelectorAll('{table} tbody tr'))
        .map(r => parseFloat(r.cells[1].dataset.value))""")
    assert asc == sorted(asc) and len(asc) == 32
    head.click()
    desc = page.evaluate(f"""() => Array.from(document.querySelectorAll('{table} tbody tr'))
        .map(r => parseFloat(r.cells[1].dataset.value))""")
    assert desc == sorted(asc, reverse=True)
    per = pd.read_csv(next((out.parent / "results" / "runs").glob("abla000000")) / "per_image.csv")
    assert np.allclose(sorted(asc), np.sort(per["dsc"].to_numpy() * 100), atol=1e-4)  # the browser equals the CSV
    # clicking a rendered row opens its overlays, with images that load
    row = page.locator(f"{table} tbody tr", has_text="◆").first
    row.click()
    opened = page.locator(".detail.open")
    assert opened.count() == 1
    assert opened.locator("img").count() == 3  # image + ground truth, and the two variants with a checkpoint
    assert "checkpoint missing" in opened.inner_text()
    ok = page.evaluate("""() => Array.from(document.querySelectorAll('.detail.open img'))
        .every(i => i.complete && i.naturalWidth > 0)""")
    assert ok
    assert not errors, errors
    shot = Path(os.environ.get("EGEUNET_SCREENSHOT_DIR", tmp_path_factory.mktemp("shots"))) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    opened.scroll_into_view_if_needed()
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10000
    page.close()


def test_index_links_every_suite(html_report, browser):
    out, _df = html_report
    shutil.copytree(out / SUITE, out / "second", dirs_exist_ok=True)
    from studies.reporting.html import index_page

    index_page(out)
    page = browser.new_page()
    page.goto((out / "index.html").as_uri())
    links = page.evaluate("() => Array.from(document.links).map(a => a.href)")
    assert len(links) == 2 and all(Path(unquote(urlparse(u).path)).is_file() for u in links)
    page.close()


COMMITTED = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/index.html"))


@pytest.mark.parametrize("index", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_report_loads_in_chromium(index, browser):
    """What the repository shows: each committed report opens with no console error, every image decodes, every
    local link resolves, and its results table shows the committed summary.csv (mean over seeds, in %)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    assert not errors and not failed, (errors, failed)
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).map(i => i.src)""")
    assert not broken, broken
    for url in page.evaluate("() => Array.from(document.querySelectorAll('img[src], a[href]')).map(e => e.src || e.href)"):
        u = urlparse(url)
        assert u.scheme in ("data", "") or (u.scheme == "file" and Path(unquote(u.path)).exists()), url
    cells = page.evaluate("""() => Array.from(document.querySelectorAll('table.results td[data-col]'))
        .map(td => [td.closest('tr').dataset.variant, td.dataset.col, parseFloat(td.dataset.mean)])""")
    assert cells, "no results table"
    summary = pd.read_csv(index.parent / "summary.csv")
    for variant, col, mean in cells:  # one row per dataset of the variant: the cell is one of them
        assert np.isclose(summary.loc[summary["variant"] == variant, f"{col}_mean"], mean, rtol=1e-9).any(), \
            (variant, col, mean)
    page.close()
