"""Static HTML report: ``<out>/<suite>/index.html`` per suite and ``<out>/index.html`` linking them.

One self-contained page per suite (inline CSS and JS, no network assets, no server): the tables with their
captions and footnotes, the differences to EGE-UNet, the figures (PNG, linked PDF), the run provenance, and a
per-image browser: every test image with its DSC per variant, sortable by any column; clicking a row opens the
image with the ground truth (yellow contour) and each variant's prediction (blue fill), pre-rendered as small
PNGs for a spread of images (worst to best of the reference); other rows say that no overlay was rendered.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:0 18px 60px;color:#222}
h1{font-size:24px;margin:22px 0 6px}h2{font-size:19px;margin:30px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #444;background:#fafafa}
table.results tr.reported td{color:#666;font-style:italic}
table.results tr.reported:first-of-type td, tr.first-reported td{border-top:2px solid #888}
.caption{max-width:1000px;margin:4px 0}.foot{font-size:12px;color:#555;max-width:1000px}
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:8px 12px;margin:10px 0}
figure{margin:14px 0;display:inline-block;vertical-align:top;max-width:560px}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#444}
.skipped{color:#8a5a00;font-size:13px}
table.sortable th{cursor:pointer;user-select:none}table.sortable th.asc:after{content:" \\25B2"}
table.sortable th.desc:after{content:" \\25BC"}
#browser tbody tr{cursor:pointer}#browser tbody tr:hover{background:#f0f6ff}#browser tbody tr.sel{background:#dbe9ff}
.scroll{max-height:420px;overflow:auto;display:inline-block;border:1px solid #ddd}
.detail{display:none;margin:10px 0;padding:8px;border:1px solid #ccd;background:#fafcff}
.detail.open{display:block}.detail .tile{display:inline-block;margin:4px;text-align:center;font-size:12px}
.detail img{display:block;width:176px;height:auto}.none{color:#777;font-style:italic}
code{font-size:12px}
"""

JS = """
function sortTable(th){
  var table=th.closest('table'), tbody=table.tBodies[0], idx=Array.prototype.indexOf.call(th.parentNode.children, th);
  var asc=!th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children, function(h){h.classList.remove('asc','desc');});
  th.classList.add(asc?'asc':'desc');
  var rows=Array.prototype.slice.call(tbody.rows);
  rows.sort(function(a,b){
    var x=a.cells[idx].getAttribute('data-value'), y=b.cells[idx].getAttribute('data-value');
    var nx=parseFloat(x), ny=parseFloat(y);
    var c=(!isNaN(nx)&&!isNaN(ny))? nx-ny : String(x).localeCompare(String(y));
    if(isNaN(nx)&&!isNaN(ny)) c=1; if(!isNaN(nx)&&isNaN(ny)) c=-1;
    return asc? c : -c;
  });
  rows.forEach(function(r){tbody.appendChild(r);});
}
function showImage(tr){
  var slug=tr.getAttribute('data-group'), id=tr.getAttribute('data-id');
  document.querySelectorAll('#browser-'+slug+' tbody tr.sel').forEach(function(r){r.classList.remove('sel');});
  tr.classList.add('sel');
  document.querySelectorAll('.detail[data-group="'+slug+'"]').forEach(function(d){d.classList.remove('open');});
  var d=document.getElementById('detail-'+slug+'-'+tr.getAttribute('data-key'));
  var none=document.getElementById('none-'+slug);
  if(d){d.classList.add('open'); none.style.display='none';}
  else{none.textContent='No overlay was rendered for '+id+' (only a spread of images from worst to best is pre-rendered; the highlighted rows have one; --browser-images 0 renders all).'; none.style.display='block';}
}
document.addEventListener('DOMContentLoaded', function(){
  document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click', function(){sortTable(th);});});
  document.querySelectorAll('table.browser tbody tr').forEach(function(tr){tr.addEventListener('click', function(){showImage(tr);});});
});
"""

PAGE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>{{ css }}</style><script>{{ js }}</script></head>
<body>
{{ body }}
</body></html>
""")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(text))


def _results_table(table, frame: pd.DataFrame, bold: set[tuple[int, str]]) -> str:
    """The results table; score cells carry data-variant / data-col / data-mean for checks."""
    from studies.reporting.tables import SCORE_COLUMNS

    col_of = {h: c for c, h, *_ in SCORE_COLUMNS}
    variants = list(table.summary.index)
    out = ['<table class="results"><thead><tr><th>Variant</th>'
           + "".join(f"<th>{_e(c)}</th>" for c in frame.columns) + "</tr></thead><tbody>"]
    for r, (name, row) in enumerate(frame.iterrows()):
        reported = r >= len(variants)
        cls = ' class="reported first-reported"' if reported and r == len(variants) else (
            ' class="reported"' if reported else "")
        attrs = f' data-variant="{_e(variants[r])}"' if not reported else ' data-variant=""'
        cells = [f"<td>{_e(name)}</td>"]
        for h, val in row.items():
            extra = ""
            if h in col_of and not reported:
                mean = table.summary.at[variants[r], f"{col_of[h]}_mean"]
                extra = f' data-col="{col_of[h]}" data-mean="{mean:.10g}"'
            text = _e(val)
            if (r, h) in bold:
                text = f"<strong>{text}</strong>"
            cells.append(f"<td{extra}>{text}</td>")
        out.append(f"<tr{cls}{attrs}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _frame_html(frame: pd.DataFrame, cls: str = "") -> str:
    if frame is None or frame.empty:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        rows.append("<tr>" + "".join(f'<td data-value="{_e(v)}">{_e(v)}</td>' for v in r.to_numpy()) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>' + "".join(rows) + "</tbody></table>"


def provenance_frame(runs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("variant", "seed", "config_hash", "commit", "device", "precision", "numerics_version",
                        "data", "best_epoch", "epochs", "wall_s") if c in runs.columns]
    frame = runs[cols].copy()
    for c in ("seed", "best_epoch", "epochs", "numerics_version"):
        if c in frame:
            frame[c] = frame[c].map(lambda v: f"{int(v)}" if pd.notna(v) and str(v) != "" else "")
    if "wall_s" in frame:
        frame["wall_s"] = frame["wall_s"].map(lambda v: f"{v:.0f}" if pd.notna(v) else "")
    if "commit" in frame:
        frame["commit"] = frame["commit"].map(lambda v: str(v)[:12] + ("+dirty" if "dirty" in str(v) else ""))
    return frame.fillna("").astype(str)


def browser_frame(group, per_image: dict[tuple[str, int], pd.DataFrame], seed: int,
                  names: dict[str, str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per test image: DSC (%) of each variant's run of ``seed`` (else its first seed); and the seed used."""
    cols, used = {}, {}
    for v in group.variants:
        seeds = sorted(s for (vv, s) in per_image if vv == v)
        if not seeds:
            continue
        s = seed if seed in seeds else seeds[0]
        used[v] = s
        cols[names.get(v, v)] = per_image[(v, s)].set_index("id")["dsc"].astype(float) * 100
    if not cols:
        return pd.DataFrame(), used
    frame = pd.DataFrame(cols)
    frame.index = frame.index.astype(str)
    return frame.sort_index(), used


def _browser(slug: str, frame: pd.DataFrame, rendered: dict[str, dict], names: dict[str, str],
             notes: dict[str, str]) -> str:
    head = "<th>image id</th>" + "".join(f"<th>DSC % · {_e(c)}</th>" for c in frame.columns)
    body = []
    for img_id, row in frame.iterrows():
        key = _key(img_id)
        mark = " ◆" if img_id in rendered else ""
        cells = [f'<td data-value="{_e(img_id)}">{_e(img_id)}{mark}</td>']
        for v in row.to_numpy():
            cells.append(f'<td data-value="{v:.6f}">{v:.2f}</td>' if np.isfinite(v) else '<td data-value="">--</td>')
        style = ' style="font-weight:600"' if img_id in rendered else ""
        body.append(f'<tr data-group="{slug}" data-id="{_e(img_id)}" data-key="{key}"{style}>' + "".join(cells)
                    + "</tr>")
    details = []
    for img_id, tiles in rendered.items():
        parts = [f'<div class="detail" data-group="{slug}" id="detail-{slug}-{_key(img_id)}"><b>{_e(img_id)}</b><br>']
        for label, (src, dsc) in tiles.items():
            cap = _e(label) + (f" · DSC {dsc:.1f} %" if dsc is not None and np.isfinite(dsc) else "")
            if src is None:
                parts.append(f'<div class="tile"><div class="none" style="width:176px">{_e(notes.get(label, ""))}'
                             f"</div>{cap}</div>")
            else:
                parts.append(f'<div class="tile"><img src="{_e(src)}" alt="{cap}">{cap}</div>')
        parts.append("</div>")
        details.append("".join(parts))
    return (f'<div class="scroll"><table class="sortable browser" id="browser-{slug}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            f'<p class="none" id="none-{slug}" style="display:none"></p>' + "".join(details))


def render_overlays(preds, out: Path, slug: str, names: dict[str, str]) -> tuple[dict[str, dict], dict[str, str]]:
    """PNG overlays of :class:`qualitative.Predictions`; returns id -> {label: (relative src or None, DSC %)}."""
    from studies.reporting.qualitative import overlay_png

    rendered: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for k, img_id in enumerate(preds.ids):
        tiles = {}
        folder = out / "browser" / slug / _key(img_id)
        overlay_png(preds.images[k], preds.masks[k], None, folder / "ground_truth.png")
        tiles["image + ground truth"] = (f"browser/{slug}/{_key(img_id)}/ground_truth.png", None)
        for v, pred in preds.preds.items():
            label = names.get(v, v)
            if pred is None:
                tiles[label] = (None, None)
                notes[label] = preds.notes.get(v, "no prediction")
                continue
            overlay_png(preds.images[k], preds.masks[k], pred[k], folder / f"{_key(v)}.png")
            tiles[label] = (f"browser/{slug}/{_key(img_id)}/{_key(v)}.png", float(preds.dsc[v][k]) * 100)
        rendered[img_id] = tiles
    return rendered, notes


def suite_page(suite: str, sections: list[dict], provenance: pd.DataFrame, failed: pd.DataFrame | None,
               synthetic: bool) -> str:
    """The suite's page; ``sections`` as made by :func:`section`."""
    body = [f"<h1>Report: {_e(suite)} suite</h1>", '<p><a href="../index.html">All suites</a> · '
            '<a href="report.md">report.md</a> · <a href="tables.tex">tables.tex</a> · '
            '<a href="summary.csv">summary.csv</a> · <a href="stats.csv">stats.csv</a></p>']
    if synthetic:
        body.append('<div class="warn"><b>Synthetic data.</b> Some tables below come from synthetic images; '
                    "they check the pipeline and are not results.</div>")
    for s in sections:
        body.append(s["html"])
    body.append("<h2>Run provenance</h2>")
    body.append(_frame_html(provenance, "sortable provenance"))
    if failed is not None and not failed.empty:
        body.append("<h3>Runs left out</h3>" + _frame_html(failed.fillna("").astype(str)))
    return PAGE.render(title=f"{suite} report", css=CSS, js=JS, body="\n".join(body))


def section(table, figures: list, out: Path, browser: str, tests: pd.DataFrame) -> dict:
    from studies.reporting.tables import _bold_positions, caption, cell_frame, footnote

    g = table.group
    parts = [f'<h2 id="{g.slug}">{_e(g.dataset)} · {_e(g.protocol)} protocol · {_e(g.budget)} budget'
             + (" · SYNTHETIC" if g.synthetic else "") + "</h2>"]
    if g.synthetic:
        parts.append('<div class="warn"><b>SYNTHETIC DATA</b>: a pipeline check, not a result.</div>')
    parts.append(f'<p class="caption"><b>Table.</b> {_e(caption(table))}</p>')
    parts.append(_results_table(table, cell_frame(table), _bold_positions(table)))
    parts.append(f'<p class="foot">{_e(footnote(table))}</p>')
    parts.append(f'<p>LaTeX: <a href="tables/{g.slug}.tex">tables/{g.slug}.tex</a></p>')
    if tests is not None and not tests.empty:
        parts.append("<h3>Differences to the reference</h3>" + _frame_html(tests, "sortable tests"))
    parts.append("<h3>Figures</h3>")
    for f in figures:
        if f.made:
            png = next(p for p in f.files if p.suffix == ".png").relative_to(out).as_posix()
            pdf = next((p for p in f.files if p.suffix == ".pdf"), None)
            link = f' (<a href="{_e(pdf.relative_to(out).as_posix())}">PDF</a>)' if pdf else ""
            parts.append(f'<figure><img src="{_e(png)}" alt="{_e(f.title)}"><figcaption><b>{_e(f.title)}.</b> '
                         f"{_e(f.caption)}{link}</figcaption></figure>")
        else:
            parts.append(f'<p class="skipped">{_e(f.title)}: skipped ({_e(f.note)}).</p>')
    parts.append("<h3>Per-image browser</h3>")
    parts.append(browser or '<p class="none">No per-image records.</p>')
    return {"html": "\n".join(parts)}


def index_page(out_root: Path) -> Path:
    """``<out_root>/index.html`` linking every suite folder that has an index.html."""
    suites = sorted(p.parent.name for p in Path(out_root).glob("*/index.html"))
    items = "".join(f'<li><a href="{_e(s)}/index.html">{_e(s)}</a></li>' for s in suites)
    body = f"<h1>Reports</h1><ul>{items or '<li>none</li>'}</ul>"
    path = Path(out_root) / "index.html"
    path.write_text(PAGE.render(title="Reports", css=CSS, js="", body=body))
    return path
