"""External evaluation: the best checkpoint of every finished run of a suite, on a dataset it never saw.

    python -m studies.evaluate --suite compare --on ph2
    python -m studies.evaluate --suite smoke --on folder:/data/my_lesions --results /tmp/egeunet-smoke

For each ``done`` run of the suite's manifest (``<results>/<suite>/manifest.jsonl``) the model is rebuilt from
its record (:class:`engine.record.RunRecord`: model and model overrides, :func:`zoo.registry.create_model`),
``checkpoints/best.pt`` is loaded and evaluated on **every** image of the external dataset (``--limit N``: the
first N ids in id order) at the run's training size, threshold 0.5, every metric convention of
:mod:`engine.metrics`. The overlap guard (:func:`engine.data.check_eval_allowed`) is applied per run with the
run's training ids: a run that trained on some of the external images is refused and listed.

Datasets (``--on``):

* ``ph2``: every PH2 pair (200 in the official archive), under ``--data-root`` / ``$EGEUNET_DATA``;
* ``folder:PATH``: a folder of image/mask pairs, the layout and mask rules of :mod:`engine.data.folder`
  (``PATH/images/<id>.jpg|png|...`` + ``PATH/masks/<id>.png``); its data is checked before anything is
  evaluated (bad data: one line on stderr, exit 2). It is named ``folder_<name of PATH>`` in file names.

Written under ``<results>/<suite>/`` (``<dataset>`` = ``ph2`` or ``folder_<name>``):

* ``external_<dataset>/<config_hash>.json``: one file per evaluated run, written atomically as soon as the run
  is evaluated. The tables are rebuilt from these files, so an interrupted evaluation resumes where it stopped and
  a rerun skips every run whose file matches the data (pair fingerprint and ``--limit``), the evaluation size and
  the checkpoint (its SHA-256, or the record's when the checkpoint file is absent);
* ``external_<dataset>.csv``: one row per run: variant, model, seed, config hash, training dataset, protocol,
  budget, every metric convention (``pooled_*``, ``per_image_*``, ``isic_tjaccard``), the in-domain pooled DSC
  (the record's test split) and the checkpoint's SHA-256 / verification;
* ``external_<dataset>_per_image.csv``: ``config_hash, variant, seed, id, tn, fp, fn, tp, dsc, iou``;
* ``external_<dataset>.tex``: a LaTeX table per variant (mean and sample std over seeds, booktabs), with the
  Spearman rank correlation between the in-domain and the external ranking of the variants in the caption.

Checkpoints: ``best.pt`` files up to 2 MB are committed with their runs; a larger one is not, and its record keeps
its SHA-256 and size (``metrics.json`` ``best_checkpoint``). A checkpoint that is missing, unreadable, of another
run or different from the SHA-256 the record stores is listed as "cannot evaluate" with the exact command that
recreates it: the run is trained again into a scratch results folder by ``python -m studies.run`` (a finished
record is never retrained in place) and its ``best.pt`` copied into the record, where the next evaluation checks
it against the stored SHA-256 (``--allow-mismatch`` evaluates a differing one anyway, marked unverified).

Exit status: 0 every finished run is evaluated (now or before); 1 some run cannot be evaluated (listed on stderr
with the command that recreates its checkpoint); 2 bad arguments, suite, results folder or data (one line).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from studies import _cli
from studies._cli import CLIError

PROG = "python -m studies.evaluate"
RESULT_FORMAT = 1  # version of the per-run JSON; a file of another version is evaluated again
COMMIT_LIMIT_BYTES = 2 * 1000 * 1000  # best.pt files up to 2 MB are committed with their runs
RECREATE_SCRATCH = "egeunet-recreate"
METRIC_COLUMNS = (
    "pooled_miou", "pooled_dsc", "pooled_acc", "pooled_sen", "pooled_spe",
    "per_image_dsc_mean", "per_image_dsc_std", "per_image_iou_mean", "per_image_iou_std", "isic_tjaccard",
)
ROW_COLUMNS = (
    "suite", "variant", "model", "seed", "config_hash", "dataset", "protocol", "budget", "external", "n_images",
    "eval_size", *METRIC_COLUMNS, "in_domain_pooled_dsc", "checkpoint_sha256", "checkpoint_verified",
    "data_key", "seconds", "evaluated_utc",
)
BUDGET_ORDER = {"smoke": 0, "cpu": 1, "paper": 2}
PER_IMAGE_COLUMNS = ("config_hash", "variant", "seed", "id", "tn", "fp", "fn", "tp", "dsc", "iou")
PRINT_COLUMNS = ("variant", "seed", "dataset", "config_hash", "n_images", "pooled_dsc", "pooled_miou",
                 "per_image_dsc_mean", "in_domain_pooled_dsc")

EPILOG = """\
examples:
  python -m studies.evaluate --suite compare --on ph2
  python -m studies.evaluate --suite compare --on ph2 --limit 20   # a look
  python -m studies.evaluate --suite smoke --results /tmp/egeunet-smoke \\
      --on folder:/data/lesions         # images/<id>.jpg + masks/<id>.png

folder layout: PATH/images/<id>.jpg|png|bmp|tif, PATH/masks/<id>.png (or
<id>_segmentation.png), same size as its image (engine/data/folder.py).
writes <results>/<suite>/external_<dataset>.csv, _per_image.csv, .tex and
one JSON per run under external_<dataset>/ (reruns skip what is done).
exit status: 0 every finished run evaluated; 1 some run cannot be evaluated
(listed on stderr, with the command that recreates its checkpoint);
2 bad argument, suite, results folder or data (one line on stderr)"""


# ------------------------------------------------------------------------------------------ targets

@dataclass
class Target:
    """The external dataset. ``dataset``: the engine's name (``ph2``, ``folder:<abs path>``); ``name``: its tag
    in file names and tables (``ph2``, ``folder_<name>``)."""

    dataset: str
    name: str
    label: str
    data_root: str | None = None
    cache_dir: str | None = None
    limit: int | None = None
    _key: str | None = None
    _arrays: dict[int, Any] = field(default_factory=dict)

    @property
    def is_folder(self) -> bool:
        return self.dataset.startswith("folder:")

    def key(self) -> str:
        """The identity of the images evaluated on (fingerprint of every pair, and ``--limit``)."""
        if self._key is None:
            from engine.data import pairs_fingerprint

            fp = pairs_fingerprint(self.dataset, self.data_root, self.cache_dir).id
            self._key = f"{self.name}:{fp}:{'all' if self.limit is None else f'first{self.limit}'}"
        return self._key

    def load(self, size: int) -> Any:
        """Every pair (or the first ``limit`` ids in id order) at ``size`` x ``size``, as ``SegArrays``."""
        if size not in self._arrays:
            from engine.data import SegArrays, load_split

            data = load_split(self.dataset, "all", size=size, root=self.data_root, cache_dir=self.cache_dir)
            order = sorted(range(len(data.ids)), key=data.ids.__getitem__)[:self.limit]
            self._arrays[size] = SegArrays(np.asarray(data.images)[order], np.asarray(data.masks)[order],
                                           tuple(data.ids[i] for i in order), self.dataset, "all", "clean", False,
                                           {**data.info, "limit": self.limit})
        return self._arrays[size]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "data"


def parse_target(text: str, data_root: str | None = None, cache_dir: str | None = None,
                 limit: int | None = None) -> Target:
    """``ph2`` or ``folder:PATH``; the data is listed and checked now (a problem raises one line)."""
    from engine.data import dataset_available
    from engine.data.folder import discover_folder, folder_path, is_folder_name, raise_folder_errors

    raw = str(text).strip()
    if raw.lower() == "ph2":
        if not dataset_available("ph2", data_root):
            where = data_root or "the data root ($EGEUNET_DATA or ../shared/data)"
            raise CLIError(f"--on ph2: PH2 not found under {where} (expected PH2Dataset/'PH2 Dataset images'); "
                           f"pass --data-root PATH, or evaluate a folder with --on folder:PATH")
        target = Target("ph2", "ph2", "PH2", data_root=data_root, cache_dir=cache_dir, limit=limit)
        target.key()  # lists and fingerprints now: a bad folder fails before anything is evaluated
        return target
    if raw.lower().startswith("folder:"):
        if not is_folder_name(raw):
            raise CLIError("--on folder:PATH: give the folder, e.g. --on folder:/data/lesions")
        base = folder_path(raw)
        raise_folder_errors(discover_folder(base))
        return Target("folder:" + str(base), f"folder_{_slug(base.name)}", f"folder {base}", data_root=data_root,
                      cache_dir=cache_dir, limit=limit)
    raise CLIError(f"--on {raw}: unknown external dataset; use ph2 or folder:PATH "
                   f"(PATH/images/<id>.jpg|png and PATH/masks/<id>.png)")


# --------------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One finished run of the suite: its manifest entry, its record and its label in the suite."""

    entry: Any  # studies.store.ManifestEntry
    record: Any  # engine.record.RunRecord
    variant: str
    position: int = 0  # the variant's place in the suite's table order

    @property
    def chash(self) -> str:
        return self.entry.config_hash

    @property
    def size(self) -> int:
        return int(self.record.recipe_size or 256)

    @property
    def overrides(self) -> dict[str, Any]:
        return self.record.model_overrides

    @property
    def model(self) -> str:
        return self.record.model or self.entry.model

    @property
    def key(self) -> str:
        """The variant key in the suite (the model name, with its keyword arguments when it has some)."""
        return str(getattr(self.entry, "key", self.entry.model))

    @property
    def checkpoint_bytes(self) -> int | None:
        return self.record.best_checkpoint_bytes


@dataclass
class Problem:
    """A run that cannot be evaluated, why, and the command that recreates its checkpoint (if that helps)."""

    run: Run
    reason: str
    command: str | None = None


def suite_info(suite_arg: str) -> tuple[str, dict[str, str], list[str]]:
    """(results folder name, variant key -> label, key order) of a built-in suite or suite file; for a name
    the registry does not know (a suite file that has gone) the name itself and no labels."""
    try:
        from studies.suites import get_suite

        s = get_suite(suite_arg)
    except Exception:  # noqa: BLE001 - its runs still have their manifest
        return (Path(suite_arg).stem if suite_arg.lower().endswith(".toml") else suite_arg), {}, []
    order = list(s.all_variants())
    return s.name, {k: s.label(k) for k in order}, order


def finished_runs(results: Path, suite: str, suite_arg: str | None = None) -> tuple[list[Run], dict[str, int]]:
    """The ``done`` runs of the suite's manifest, and how many of the others are in each state."""
    from engine.record import load_record
    from studies import store

    _, labels, order = suite_info(suite_arg or suite)
    rank = {k: i for i, k in enumerate(order)}
    runs: list[Run] = []
    other: dict[str, int] = {}
    for e in store.read_manifest(results, suite):
        rdir = store.run_dir(results, e.config_hash)
        if not rdir.is_dir():
            state = "running" if store.is_locked(results, e.config_hash) else "not started"
        else:
            rec = load_record(rdir)  # a corrupt file: RecordError, one line, exit 2
            if rec.done:
                key = str(getattr(e, "key", e.model))
                runs.append(Run(e, rec, labels.get(key, key), rank.get(key, len(rank))))
                continue
            state = ("failed" if rec.finished else
                     "running" if store.is_locked(results, e.config_hash) else "unfinished")
        other[state] = other.get(state, 0) + 1
    return runs, other


def check_checkpoint(run: Run, allow_mismatch: bool = False) -> tuple[str | None, bool | None, str | None]:
    """(SHA-256 of best.pt or None, verified against the record, problem). ``verified`` is None when the record
    stores no SHA-256 (records before schema 2); ``problem`` is set when the run cannot be evaluated."""
    path = run.record.best_checkpoint
    want = run.record.best_checkpoint_sha256
    if not path.is_file():
        size = run.checkpoint_bytes
        why = (f"{size / 1e6:.1f} MB, over the {COMMIT_LIMIT_BYTES / 1e6:.0f} MB committed with a run"
               if size is not None and size > COMMIT_LIMIT_BYTES else "not in this results folder")
        return None, None, f"{path} is missing ({why})"
    from engine.checkpoint import file_sha256

    try:
        sha = file_sha256(path)
    except OSError as e:
        return None, None, f"{path} cannot be read ({e.strerror or e})"
    if want is None:
        return sha, None, None
    if sha == want:
        return sha, True, None
    if allow_mismatch:
        return sha, False, None
    return sha, False, (f"{path} has SHA-256 {sha[:12]}..., the record stores {want[:12]}... (another checkpoint; "
                        f"--allow-mismatch evaluates it anyway)")


def recreate_command(suite_arg: str, run: Run, data_root: str | None) -> str:
    """The shell line that trains ``run`` again into a scratch results folder and copies its ``best.pt`` into
    the record (``studies.run`` never retrains a finished record in place)."""
    e = run.entry
    scratch = Path(tempfile.gettempdir()) / RECREATE_SCRATCH
    cmd = ["python", "-m", "studies.run", "--suite", suite_arg, "--variants", run.key, "--seed-list", str(e.seed),
           "--budget", e.budget, "--dataset", e.dataset, "--protocol", e.protocol]
    if e.dataset != "synthetic":
        cmd.append("--strict-data")  # never a synthetic stand-in: that would be another run
    if data_root:
        cmd += ["--data-root", str(data_root)]
    first = run.record.first_session
    if first is not None and first.device_type == "cuda":
        cmd += ["--device", "cuda"]
    cmd += ["--results", str(scratch)]
    src = scratch / "runs" / run.chash / "checkpoints" / "best.pt"
    dest = run.record.best_checkpoint
    return (" ".join(shlex.quote(c) for c in cmd) + f" && mkdir -p {shlex.quote(str(dest.parent))}"
            f" && cp {shlex.quote(str(src))} {shlex.quote(str(dest))}")


def load_run_model(run: Run) -> Any:
    """The run's model with its ``best.pt`` weights, in eval mode (raises on an unusable checkpoint)."""
    import torch

    from zoo.registry import create_model

    state = torch.load(run.record.best_checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError("not a best.pt of this project (no 'model' state)")
    if state.get("config_hash") not in (None, run.chash):
        raise ValueError(f"it is the checkpoint of run {state['config_hash']}")
    model = create_model(run.model, **run.overrides)
    model.load_state_dict(state["model"])
    return model.eval()


def training_ids(run: Run, data_root: str | None) -> set[str] | None:
    """The ids the run trained on, for the overlap guard; None when unknown (its data is not here)."""
    from engine.data import DataError, split_id_lists

    try:
        lists = split_id_lists(run.entry.dataset, run.entry.protocol, root=data_root)
    except (DataError, ValueError):
        return None
    return set(lists["train"]) if "train" in lists else None


# ------------------------------------------------------------------------------------------ results

def external_dir(results: Path, suite: str, target: Target) -> Path:
    return Path(results) / suite / f"external_{target.name}"


def result_path(results: Path, suite: str, target: Target, chash: str) -> Path:
    return external_dir(results, suite, target) / f"{chash}.json"


def read_result(path: Path) -> dict[str, Any] | None:
    """A stored per-run result, or None when absent, torn or of another format."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT or not isinstance(data.get("summary"), dict):
        return None
    return data


def is_current(stored: dict[str, Any] | None, run: Run, target: Target, sha: str | None) -> bool:
    """Whether a stored result is of this data, size and checkpoint (no checkpoint file: the record's SHA-256)."""
    if stored is None or stored.get("data_key") != target.key() or stored.get("eval_size") != run.size:
        return False
    want = sha or run.record.best_checkpoint_sha256
    return want is None or stored.get("checkpoint_sha256") == want


def evaluate_run(run: Run, target: Target, *, device: str, batch_size: int, sha: str | None,
                 verified: bool | None, data_root: str | None) -> dict[str, Any]:
    """Evaluate one run on the target; returns the per-run result (written by the caller)."""
    from engine.data import check_eval_allowed
    from engine.evaluate import evaluate

    t0 = time.perf_counter()
    data = target.load(run.size)
    check_eval_allowed(run.entry.dataset, target.dataset, "all", train_protocol=run.entry.protocol,
                       train_ids=training_ids(run, data_root), eval_ids=data.ids)
    model = load_run_model(run).to(device)
    res = evaluate(model, data, device=device, batch_size=batch_size, loss_weights=False)
    rows = res.per_image_rows()
    return {
        "format": RESULT_FORMAT, "config_hash": run.chash, "external": target.name, "dataset": target.dataset,
        "data_key": target.key(), "eval_size": run.size, "n_images": res.n_images, "threshold": 0.5,
        "checkpoint_sha256": sha, "checkpoint_verified": verified,
        "summary": {k: float(res.summary.get(k, math.nan)) for k in METRIC_COLUMNS},
        "per_image": [{k: r[k] for k in ("id", "tn", "fp", "fn", "tp", "dsc", "iou")} for r in rows],
        "seconds": round(time.perf_counter() - t0, 3), "device": str(device),
        "evaluated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def build_rows(results: Path, suite: str, target: Target, runs: Sequence[Run]) -> tuple[list[dict], list[dict]]:
    """The run rows and the per-image rows, from the stored per-run results (suite order, then seed)."""
    rows, per_image = [], []
    for run in sorted(runs, key=lambda r: (BUDGET_ORDER.get(r.entry.budget, 9), r.entry.protocol, r.entry.dataset,
                                           r.position, r.key, r.entry.seed)):
        stored = read_result(result_path(results, suite, target, run.chash))
        if stored is None or stored.get("data_key") != target.key() or stored.get("eval_size") != run.size:
            continue
        e = run.entry
        row = dict(suite=suite, variant=run.variant, model=e.model, seed=e.seed, config_hash=e.config_hash,
                   dataset=e.dataset, protocol=e.protocol, budget=e.budget, external=target.name,
                   n_images=stored.get("n_images"), eval_size=stored.get("eval_size"),
                   in_domain_pooled_dsc=_finite(run.record.test_metrics.get("pooled_dsc")),
                   checkpoint_sha256=stored.get("checkpoint_sha256"),
                   checkpoint_verified=stored.get("checkpoint_verified"), data_key=stored.get("data_key"),
                   seconds=stored.get("seconds"), evaluated_utc=stored.get("evaluated_utc"))
        row.update({k: _finite(stored["summary"].get(k)) for k in METRIC_COLUMNS})
        rows.append(row)
        per_image += [{"config_hash": e.config_hash, "variant": run.variant, "seed": e.seed, **p}
                      for p in stored.get("per_image") or []]
    return rows, per_image


# ---------------------------------------------------------------------------------------------- LaTeX

def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its p-value over the finite pairs; NaN below 3 pairs or for a constant ranking."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan, math.nan
    res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return float(res.statistic), float(res.pvalue)


def rank_correlations(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Per training (dataset, protocol, budget): Spearman rho between the variants' in-domain and external
    pooled DSC (each the mean over seeds)."""
    groups: dict[tuple[str, str, str], dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        g = groups.setdefault((r["dataset"], r["protocol"], r["budget"]), {})
        g.setdefault(r["variant"], []).append((r["in_domain_pooled_dsc"], r["pooled_dsc"]))
    out = []
    for (ds, protocol, budget), variants in groups.items():
        dom = [float(np.nanmean([a for a, _ in v])) if any(math.isfinite(a) for a, _ in v) else math.nan
               for v in variants.values()]
        ext = [float(np.mean([b for _, b in v])) for v in variants.values()]
        rho, p = spearman(dom, ext)
        out.append(dict(dataset=ds, protocol=protocol, budget=budget, n_variants=len(variants), rho=rho, p=p))
    return out


TEX_COLUMNS = (  # (header, row key)
    ("In-domain DSC", "in_domain_pooled_dsc"), ("DSC", "pooled_dsc"), ("mIoU", "pooled_miou"),
    ("Sen", "pooled_sen"), ("Spe", "pooled_spe"), ("Img. DSC", "per_image_dsc_mean"),
    ("ISIC tJ", "isic_tjaccard"),
)


def _cell(values: Sequence[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "--"
    if len(v) == 1:
        return f"{100 * v[0]:.2f}"
    return f"{100 * float(np.mean(v)):.2f} ± {100 * float(np.std(v, ddof=1)):.2f}"


def _trained_on(dataset: str) -> str:
    return f"folder {Path(dataset[len('folder:'):]).name}" if dataset.startswith("folder:") else dataset


def caption_text(suite: str, target: Target, rows: Sequence[dict]) -> str:
    """The caption: what was evaluated, how, and the rank correlation of each training group."""
    n_img = sorted({int(r["n_images"]) for r in rows})
    sizes = sorted({int(r["eval_size"]) for r in rows})
    what = "PH2" if target.dataset == "ph2" else f"the folder dataset {Path(target.dataset[7:]).name}"
    limit = "" if target.limit is None else f", the first {target.limit} ids"
    parts = [f"External evaluation of the {suite} suite on {what} ({'/'.join(map(str, n_img)) or 0} images{limit}, "
             f"at {'/'.join(f'{s}×{s}' for s in sizes) or '--'} pixels, threshold 0.5): the best checkpoint of every "
             f"finished run; mean ± sample std over seeds, in %."]
    for c in rank_correlations(rows):
        where = f"trained on {_trained_on(c['dataset'])} ({c['protocol']} protocol, {c['budget']} budget)"
        if math.isfinite(c["rho"]):
            parts.append(f"Spearman rank correlation of the in-domain ranking (pooled DSC on the training dataset's "
                         f"test split) and the external ranking (pooled DSC) of the {c['n_variants']} variants "
                         f"{where}: ρ = {c['rho']:.2f} (p = {c['p']:.2g}).")
        else:
            parts.append(f"Spearman rank correlation of the in-domain and external rankings of the variants {where}: "
                         f"not defined ({c['n_variants']} variant(s) or a constant ranking; it needs 3 or more).")
    if any(r["dataset"] == "synthetic" for r in rows):
        parts.append("Models trained on SYNTHETIC data: a pipeline check, not a lesion result.")
    if any(r.get("checkpoint_verified") is False for r in rows):
        parts.append("Some checkpoints differ from the SHA-256 their record stores (unverified).")
    parts.append("DSC, mIoU (foreground IoU), Sen, Spe: pooled over all pixels; Img. DSC: mean over images; "
                 "ISIC tJ: thresholded Jaccard (0.65).")
    return " ".join(parts)


def to_latex(suite: str, target: Target, rows: Sequence[dict]) -> str:
    """The table float (pandas Styler, booktabs rules) with the rank correlation in the caption."""
    import pandas as pd

    from studies.reporting.names import display_name
    from studies.reporting.tables import latex_escape

    def esc(text: Any) -> str:
        return latex_escape(str(text)).replace("ρ", r"$\rho$")

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["dataset"]), []).append(r)
    heads = ["Variant", "Trained on", "n", *[h for h, _ in TEX_COLUMNS]]
    body = []
    for (variant, ds), g in groups.items():
        cells = [esc(display_name(variant, g[0]["model"])), esc(_trained_on(ds)), str(len(g))]
        cells += [esc(_cell([r[key] for r in g])) for _, key in TEX_COLUMNS]
        body.append(cells)
    frame = pd.DataFrame(body, columns=[esc(h) for h in heads])
    latex = frame.style.hide(axis="index").to_latex(
        hrules=True, caption=esc(caption_text(suite, target, rows)),
        label=f"tab:{suite}-external-{target.name}".replace("_", "-"), position="htbp",
        position_float="centering", column_format="llr" + "r" * len(TEX_COLUMNS))
    return latex.replace("\\centering\n", "\\centering\n\\small\n", 1)


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None or (isinstance(r.get(c), float) and not math.isfinite(r[c]))
                        else repr(r[c]) if isinstance(r.get(c), float) else r[c]) for c in columns})
    return buf.getvalue()


def _write_if_changed(path: Path, text: str) -> bool:
    from engine.record import atomic_write_text

    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    atomic_write_text(path, text)
    return True


def write_tables(results: Path, suite: str, target: Target, runs: Sequence[Run]) -> tuple[list[dict], list[Path]]:
    """Rebuild ``external_<dataset>.csv`` / ``_per_image.csv`` / ``.tex`` from the per-run results (a file whose
    content would not change is left untouched)."""
    d = Path(results) / suite
    base = f"external_{target.name}"
    paths = [d / f"{base}.csv", d / f"{base}_per_image.csv", d / f"{base}.tex"]
    rows, per_image = build_rows(results, suite, target, runs)
    _write_if_changed(paths[0], _csv_text(rows, ROW_COLUMNS))
    _write_if_changed(paths[1], _csv_text(per_image, PER_IMAGE_COLUMNS))
    _write_if_changed(paths[2], to_latex(suite, target, rows) + "\n")
    return rows, paths


# ------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser(
        PROG,
        "Evaluate the best checkpoint of every finished run of a suite on an external dataset (all of its "
        "images by default) and write one row per run, the per-image counts and a LaTeX table with the rank "
        "correlation to the in-domain ranking. Resumable: a rerun skips the runs already evaluated.",
        EPILOG,
    )
    p.add_argument("--suite", required=True, metavar="NAME", help="the suite whose runs are evaluated")
    p.add_argument("--on", required=True, metavar="DATASET", help="ph2, or folder:PATH (images/ + masks/)")
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--data-root", metavar="PATH",
                   help="data folder for ph2 and the training data (default: $EGEUNET_DATA or ../shared/data)")
    p.add_argument("--cache-dir", metavar="PATH", help="preprocessing cache (default: $EGEUNET_CACHE or "
                                                       "~/.cache/egeunet)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate on the first N ids only (default: all)")
    p.add_argument("--device", default="cpu", metavar="DEVICE", help="torch device (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="evaluation batch (default: 16; the counts do not depend on it)")
    p.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="evaluate a best.pt whose SHA-256 differs from the record's (marked unverified)")
    _cli.add_format(p, "the table of evaluated runs")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if str(args.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available here; use --device cpu")


def _clean_own_temps(folder: Path) -> None:
    """Remove temporaries of killed evaluations in the per-run folder (call with the evaluation lock held)."""
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        try:
            tmp.unlink()
        except OSError:
            pass


def _render(rows: Sequence[dict], title: str) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    t.add_column("variant", no_wrap=True)
    t.add_column("seed", justify="right")
    t.add_column("trained on", overflow="fold")
    t.add_column("run id", no_wrap=True, min_width=12)
    t.add_column("DSC", justify="right", no_wrap=True)
    t.add_column("in-domain", justify="right", no_wrap=True)
    for r in rows:
        t.add_row(str(r["variant"]), str(r["seed"]), _trained_on(str(r["dataset"])), str(r["config_hash"]),
                  *[f"{r[k]:.4f}" if math.isfinite(r[k]) else "--" for k in ("pooled_dsc", "in_domain_pooled_dsc")])
    return t


def _run(args: argparse.Namespace) -> int:
    from filelock import Timeout

    from studies import store

    _check_args(args)
    results = Path(args.results).expanduser()
    if not results.is_dir():
        raise CLIError(f"--results {results}: no such folder (run the suite first: python -m studies.run "
                       f"--suite {args.suite} --results {results})")
    suite = suite_info(args.suite)[0]
    if not (results / suite / "manifest.jsonl").is_file():
        raise CLIError(f"--suite {args.suite}: no runs under {results} ({results / suite / 'manifest.jsonl'} "
                       f"missing); run it first: python -m studies.run --suite {args.suite} --results {results}")
    _cli.check_output_dir(results / suite, "--results")
    target = parse_target(args.on, args.data_root, args.cache_dir, args.limit)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    con = _cli.console(stderr=args.format != "table")  # json / csv: stdout carries only the data

    lock = store.file_lock(results / suite / f".external_{target.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CLIError(f"another evaluation of suite {suite} on {target.label} is running (lock "
                       f"{lock.lock_file}); wait for it to finish") from None
    try:
        return _evaluate_all(args, results, suite, target, con)
    finally:
        lock.release()


def _evaluate_all(args: argparse.Namespace, results: Path, suite: str, target: Target, con: Any) -> int:
    runs, other = finished_runs(results, suite, args.suite)
    out_dir = external_dir(results, suite, target)
    _clean_own_temps(out_dir)
    todo: list[tuple[Run, str | None, bool | None]] = []
    problems: list[Problem] = []
    already = 0
    for run in runs:
        sha, verified, problem = check_checkpoint(run, args.allow_mismatch)
        if is_current(read_result(result_path(results, suite, target, run.chash)), run, target, sha):
            already += 1  # evaluated before (also when its checkpoint file has gone since)
        elif problem is not None:
            problems.append(Problem(run, problem, recreate_command(args.suite, run, args.data_root)))
        else:
            todo.append((run, sha, verified))
    for size in sorted({run.size for run, _, _ in todo}):
        target.load(size)  # decode (and check) every image before anything is printed: bad data exits 2 here
    con.print(f"suite {suite} on {target.label}: {len(runs)} finished run(s): {already} evaluated before, "
              f"{len(todo)} to evaluate, {len(problems)} cannot be evaluated; results in {out_dir}/")
    if other:
        con.print("not evaluated (not done): " + ", ".join(f"{n} {s}" for s, n in sorted(other.items())))
    if todo:
        _evaluate_todo(args, results, suite, target, todo, problems, con)

    rows, paths = write_tables(results, suite, target, runs)
    _cli.emit(rows, PRINT_COLUMNS, args.format, con, lambda: _render(rows, f"{suite} on {target.label}"))
    for c in rank_correlations(rows):
        rho = f"{c['rho']:.2f}" if math.isfinite(c["rho"]) else "not defined (< 3 variants or a constant ranking)"
        con.print(f"rank correlation (Spearman, in-domain vs external pooled DSC) of the {c['n_variants']} variant(s) "
                  f"trained on {_trained_on(c['dataset'])}: {rho}")
    con.print(f"tables: {paths[0]} ({len(rows)} rows), {paths[1].name}, {paths[2].name}")
    if problems:
        err = sys.stderr
        print(f"cannot evaluate {len(problems)} run(s):", file=err)
        for pr in problems:
            e = pr.run.entry
            print(f"  {pr.run.variant} seed {e.seed} ({e.dataset}, {e.protocol}, {e.budget}) {e.config_hash}: "
                  f"{pr.reason}", file=err)
            if pr.command:
                print(f"    recreate its checkpoint: {pr.command}", file=err)
        err.flush()
        return _cli.CHECK_FAILED
    return 0


def _evaluate_todo(args: argparse.Namespace, results: Path, suite: str, target: Target,
                   todo: list[tuple[Run, str | None, bool | None]], problems: list[Problem], con: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.data import DataError
    from engine.record import atomic_write_json

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[current]}"), console=con, transient=False) as progress:
        bar = progress.add_task(f"{suite} on {target.name}", total=len(todo), current="")
        for run, sha, verified in todo:
            progress.update(bar, current=f"{run.variant} seed {run.entry.seed}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # torch.load / model construction chatter
                    result = evaluate_run(run, target, device=args.device, batch_size=args.batch_size, sha=sha,
                                          verified=verified, data_root=args.data_root)
            except DataError as e:
                if "evaluation refused" not in str(e):
                    raise  # bad or missing external data: one line, exit 2
                problems.append(Problem(run, str(e)))
            except (RuntimeError, KeyError, ValueError, TypeError, OSError, EOFError) as e:
                problems.append(Problem(run, f"{run.record.best_checkpoint} cannot be loaded ({type(e).__name__}: "
                                             f"{_cli.one_line(e)[:200]})",
                                        recreate_command(args.suite, run, args.data_root)))
            else:
                atomic_write_json(result_path(results, suite, target, run.chash), result)
                s = result["summary"]
                progress.console.print(f"  done {run.variant} seed {run.entry.seed} {run.chash}: DSC "
                                       f"{s['pooled_dsc']:.4f} on {result['n_images']} images "
                                       f"({result['seconds']:.1f} s)")
            progress.advance(bar)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.record import RecordError

    return _cli.guard(PROG, lambda: _run(args), RecordError)


if __name__ == "__main__":
    sys.exit(main())
