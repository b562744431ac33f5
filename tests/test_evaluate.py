"""``python -m studies.evaluate`` (issue 20 items 4 and 5): external evaluation of a suite's finished runs.

A module fixture trains the smoke suite for real (``python -m studies.run --suite smoke --budget smoke``) into a
temporary results folder; the external sets are small generated folders (and a generated PH2 layout).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studies import evaluate as ev

REPO = Path(__file__).resolve().parents[1]
N_EXT = 10
SMOKE_HASHES = 3  # the smoke suite: egeunet, egeunet_no_gab, egeunet_no_ds, one seed


def make_external(base: Path, n: int = N_EXT, w: int = 40, h: int = 30) -> Path:
    rng = np.random.default_rng(1)
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    for k in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        m = np.zeros((h, w), np.uint8)
        m[5:5 + k + 5, 8:30] = 255
        img[m > 0] //= 3  # a darker "lesion"
        Image.fromarray(img).save(base / "images" / f"case{k:03d}.jpg", quality=95)
        Image.fromarray(m).save(base / "masks" / f"case{k:03d}.png")
    return base


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("eval_results")
    proc = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--budget", "smoke", "--threads",
                           "1", "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    return make_external(tmp_path_factory.mktemp("ext") / "derm")


@pytest.fixture
def results(smoke_results, tmp_path) -> Path:
    """A private copy of the smoke results (tests damage checkpoints)."""
    dest = tmp_path / "results"
    shutil.copytree(smoke_results, dest)
    return dest


def cli(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run the CLI in-process; (status, stdout, stderr)."""
    code = ev.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manifest_hashes(results: Path) -> list[str]:
    return [json.loads(ln)["config_hash"] for ln in (results / "smoke" / "manifest.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------- the tables


def test_writes_tables_and_skips_on_rerun(results, external, tmp_path, capsys):
    from engine.data import load_split
    from engine.metrics import summarize
    from scipy.stats import spearmanr

    cache = tmp_path / "cache"
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", cache,
                         capsys=capsys)
    assert code == 0, out + err
    assert f"{SMOKE_HASHES} to evaluate" in out
    d = results / "smoke"
    rows = read_csv(d / "external_folder_derm.csv")
    assert sorted(r["config_hash"] for r in rows) == sorted(manifest_hashes(results))
    per_image = read_csv(d / "external_folder_derm_per_image.csv")
    assert len(per_image) == SMOKE_HASHES * N_EXT
    ids = sorted(f"case{k:03d}" for k in range(N_EXT))
    in_domain = {r["config_hash"]: float(r["pooled_dsc"]) for r in read_csv(d / "results.csv")}
    for r in rows:
        assert r["n_images"] == str(N_EXT) and r["eval_size"] == "64" and r["external"] == "folder_derm"
        assert r["checkpoint_verified"] == "True" and len(r["checkpoint_sha256"]) == 64
        for col in ev.METRIC_COLUMNS:
            assert math.isfinite(float(r[col])), col
        assert float(r["in_domain_pooled_dsc"]) == pytest.approx(in_domain[r["config_hash"]])
        mine = [p for p in per_image if p["config_hash"] == r["config_hash"]]
        assert [p["id"] for p in mine] == ids
        counts = np.array([[int(p[k]) for k in ("tn", "fp", "fn", "tp")] for p in mine])
        assert (counts.sum(axis=1) == 64 * 64).all()
        summary = summarize(counts)
        for col in ev.METRIC_COLUMNS:  # every convention recomputes from the per-image counts
            assert float(r[col]) == pytest.approx(summary[col], abs=1e-12), col

    # one run recomputed independently: its best.pt, plain torch, the folder at 64 x 64
    from engine.data import normalise
    from zoo.contract import as_seg_output
    from zoo.registry import create_model

    first = rows[0]
    state = torch.load(results / "runs" / first["config_hash"] / "checkpoints" / "best.pt", weights_only=True)
    model = create_model(first["model"]).eval()
    model.load_state_dict(state["model"])
    data = load_split(f"folder:{external}", "all", size=64, cache_dir=cache)
    order = np.argsort(data.ids)
    with torch.inference_mode():
        logits = as_seg_output(model(normalise(np.asarray(data.images)[order]))).logits
    pred = (torch.sigmoid(logits.float())[:, 0] >= 0.5).numpy()
    gt = np.asarray(data.masks)[order].astype(bool)
    tp = [int(x) for x in (pred & gt).reshape(N_EXT, -1).sum(axis=1)]
    assert tp == [int(p["tp"]) for p in per_image if p["config_hash"] == first["config_hash"]]

    tex = (d / "external_folder_derm.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert "External evaluation of the smoke suite" in tex and "Spearman" in tex and "SYNTHETIC" in tex
    rho = spearmanr([float(r["in_domain_pooled_dsc"]) for r in rows], [float(r["pooled_dsc"]) for r in rows])[0]
    if math.isfinite(rho):
        assert f"$\\rho$ = {rho:.2f}" in tex
    else:
        assert "not defined" in tex
    for label in ("EGE-UNet", "w/o GAB"):
        assert label in tex

    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in [*d.glob("external_folder_derm*.*"),
                                                                    *(d / "external_folder_derm").glob("*.json")]}
    assert len(written) == 3 + SMOKE_HASHES
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", cache,
                         capsys=capsys)
    assert code == 0 and f"{SMOKE_HASHES} evaluated before, 0 to evaluate" in out, out + err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in written} == written, "a rerun rewrote a file"


def test_resumes_an_interrupted_evaluation(results, external, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", cache)
    assert cli(*args, capsys=capsys)[0] == 0
    d = results / "smoke"
    before = {r["config_hash"]: r for r in read_csv(d / "external_folder_derm.csv")}
    gone = manifest_hashes(results)[1]
    (d / "external_folder_derm" / f"{gone}.json").unlink()  # as if killed before this run's file was written
    (d / "external_folder_derm" / f".{gone}.json.x.tmp").write_text("{torn")
    code, out, _ = cli(*args, capsys=capsys)
    assert code == 0 and f"{SMOKE_HASHES - 1} evaluated before, 1 to evaluate" in out, out
    assert not list((d / "external_folder_derm").glob(".*.tmp"))
    after = {r["config_hash"]: r for r in read_csv(d / "external_folder_derm.csv")}
    for h, r in before.items():
        assert {k: after[h][k] for k in ev.METRIC_COLUMNS} == {k: r[k] for k in ev.METRIC_COLUMNS}


def test_limit_and_json_format(results, external, tmp_path, capsys):
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--limit", "4",
                         "--format", "json", "--cache-dir", tmp_path / "c", capsys=capsys)
    assert code == 0, err
    data = json.loads(out)  # stdout carries only the data
    assert len(data) == SMOKE_HASHES and set(data[0]) == set(ev.PRINT_COLUMNS)
    assert {r["n_images"] for r in data} == {4}
    per_image = read_csv(results / "smoke" / "external_folder_derm_per_image.csv")
    assert sorted({p["id"] for p in per_image}) == [f"case{k:03d}" for k in range(4)]
    # all images now: another data key, so every run is evaluated again
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--format", "csv",
                         "--cache-dir", tmp_path / "c", capsys=capsys)
    assert code == 0 and f"{SMOKE_HASHES} to evaluate" in err
    assert out.splitlines()[0] == ",".join(ev.PRINT_COLUMNS) and len(out.splitlines()) == 1 + SMOKE_HASHES


def test_ph2_every_image(results, fake_ph2, tmp_path, capsys):
    root, _ = fake_ph2(n=7)
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", "ph2", "--data-root", root,
                         "--cache-dir", tmp_path / "c", capsys=capsys)
    assert code == 0, out + err
    rows = read_csv(results / "smoke" / "external_ph2.csv")
    assert len(rows) == SMOKE_HASHES and {r["n_images"] for r in rows} == {"7"}
    assert (results / "smoke" / "external_ph2.tex").read_text().count("on PH2 (7 images") == 1


# ----------------------------------------------------------------------------------------- checkpoints


def test_missing_and_mismatched_checkpoints_are_listed_with_the_recreate_command(results, external, tmp_path,
                                                                                 capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the scratch folder of the recreate command
    h_missing, h_other, h_ok = manifest_hashes(results)
    runs = results / "runs"
    (runs / h_missing / "checkpoints" / "best.pt").unlink()
    shutil.copy(runs / h_ok / "checkpoints" / "best.pt", runs / h_other / "checkpoints" / "best.pt")
    args = ("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", tmp_path / "c")
    code, out, err = cli(*args, capsys=capsys)
    assert code == 1, out + err
    assert "cannot evaluate 2 run(s)" in err
    assert f"{h_missing}: {runs / h_missing / 'checkpoints' / 'best.pt'} is missing" in err
    assert f"{h_other}: " in err and "the record stores" in err and "--allow-mismatch" in err
    commands = [ln.split("recreate its checkpoint: ", 1)[1] for ln in err.splitlines() if "recreate its" in ln]
    assert len(commands) == 2
    rows = read_csv(results / "smoke" / "external_folder_derm.csv")
    assert [r["config_hash"] for r in rows] == [h_ok]

    # the printed command recreates the missing checkpoint bit for bit; the next evaluation takes it
    cmd = next(c for c in commands if h_missing in c)
    assert cmd.startswith("python -m studies.run --suite smoke --variants egeunet") and "--seed-list 0" in cmd
    proc = subprocess.run(cmd.replace("python -m", f"{shlex_quote(sys.executable)} -m", 1), shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    code, out, err = cli(*args, capsys=capsys)
    assert code == 1 and "cannot evaluate 1 run(s)" in err and h_missing not in err
    assert sorted(r["config_hash"] for r in read_csv(results / "smoke" / "external_folder_derm.csv")) == \
        sorted([h_ok, h_missing])
    code, out, err = cli(*args, "--allow-mismatch", capsys=capsys)
    assert code == 1 and "it is the checkpoint of run" in err  # copied from another run: never evaluated


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_evaluated_run_stays_evaluated_without_its_checkpoint(results, external, tmp_path, capsys):
    args = ("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", tmp_path / "c")
    assert cli(*args, capsys=capsys)[0] == 0
    for h in manifest_hashes(results):  # a clone without the checkpoints (over 2 MB they are not committed)
        (results / "runs" / h / "checkpoints" / "best.pt").unlink()
    code, out, err = cli(*args, capsys=capsys)
    assert code == 0 and f"{SMOKE_HASHES} evaluated before" in out, out + err
    assert len(read_csv(results / "smoke" / "external_folder_derm.csv")) == SMOKE_HASHES


def test_large_checkpoint_message(results):
    from engine.record import load_record
    from studies import store

    entry = store.read_manifest(results, "smoke")[0]
    rec = load_record(store.run_dir(results, entry.config_hash))
    rec.metrics["best_checkpoint"]["bytes"] = 31_000_000
    rec.best_checkpoint.unlink()
    sha, verified, problem = ev.check_checkpoint(ev.Run(entry, rec, entry.model))
    assert sha is None and "31.0 MB, over the 2 MB committed with a run" in problem


def test_a_checkpoint_over_2_mb_is_named_with_the_command_that_recreates_it(results, external, tmp_path, capsys,
                                                                            monkeypatch):
    """A clone holds no best.pt over 2 MB, only its recorded size and SHA-256: the CLI says it cannot evaluate that
    run, why, and prints the exact command that trains it again and puts its best.pt back."""
    import tempfile

    from engine.record import atomic_write_json, load_record

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big, *rest = manifest_hashes(results)
    rec = load_record(results / "runs" / big)
    sha = rec.best_checkpoint_sha256
    assert sha is not None and rec.best_checkpoint_bytes == rec.best_checkpoint.stat().st_size
    atomic_write_json(rec.record_dir / "metrics.json",
                      {**rec.metrics, "best_checkpoint": {"bytes": 31_000_000, "sha256": sha}})
    rec.best_checkpoint.unlink()  # what a clone has: .gitignore keeps best.pt files over 2 MB out of git
    args = ("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir", tmp_path / "c")
    code, out, err = cli(*args, capsys=capsys)
    assert code == 1, out + err
    assert "cannot evaluate 1 run(s):" in err
    assert f"{big}: {rec.best_checkpoint} is missing (31.0 MB, over the 2 MB committed with a run)" in err
    command = next(ln for ln in err.splitlines() if "recreate its checkpoint: " in ln).split(": ", 1)[1]
    model = load_record(results / "runs" / big).model
    assert command.startswith(f"python -m studies.run --suite smoke --variants {model} --seed-list 0 --budget smoke")
    assert command.endswith(f"&& cp {tmp_path / 'egeunet-recreate' / 'runs' / big / 'checkpoints' / 'best.pt'} "
                            f"{rec.best_checkpoint}")
    assert sorted(r["config_hash"] for r in read_csv(results / "smoke" / "external_folder_derm.csv")) == sorted(rest)


def test_gitignore_keeps_small_best_checkpoints():
    """best.pt of a run is committed (not ignored), every other .pt is; every committed one (results/runs/ and the
    archives) is at most 2 MB, and the larger ones of the archive are ignored."""
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert not ignored("results/runs/0123456789ab/checkpoints/best.pt")
    assert ignored("results/runs/0123456789ab/checkpoints/latest.pt")
    assert ignored("results/other/model.pt")
    for big in ("4c09f151d32e", "3039f04d8b4e"):  # UNet-32 (31 MB) and UNeXt (5.9 MB) of the archive
        assert ignored(f"results/archive/2026-12-03-confounded/runs/{big}/checkpoints/best.pt")
    listed = subprocess.run(["git", "ls-files", "-s", "--", "results/*/checkpoints/best.pt"], cwd=REPO,
                            capture_output=True, text=True).stdout.split("\n")
    assert sum(1 for line in listed if "/archive/" in line) >= 12  # the archive's small ones stay committed
    for line in filter(None, listed):
        blob, path = line.split()[1], line.split("\t")[1]
        size = int(subprocess.run(["git", "cat-file", "-s", blob], cwd=REPO, capture_output=True, text=True).stdout)
        assert size <= ev.COMMIT_LIMIT_BYTES, f"{path}: {size} bytes committed"


# ----------------------------------------------------------------------------------------- refusals


def test_overlap_guard_refuses_a_run_trained_on_the_external_images(tmp_path, capsys, smoke_config):
    """A run trained on a folder, evaluated on that same folder, is refused (its training ids are in it)."""
    from engine.train import run_training
    from studies import store

    ext = make_external(tmp_path / "own", n=12)
    results = tmp_path / "r"
    res = run_training(smoke_config(dataset=f"folder:{ext}"), results, threads=1, cache_dir=tmp_path / "c")
    assert res.status == "done", res.reason
    store.add_to_manifest(results, "smoke", [store.ManifestEntry(res.config_hash, "egeunet", f"folder:{ext}",
                                                                 "clean", "smoke", 0)])
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{ext}", "--cache-dir",
                         tmp_path / "c", capsys=capsys)
    assert code == 1, out + err
    assert "evaluation refused" in err and "were training images" in err and "recreate" not in err
    assert not read_csv(results / "smoke" / "external_folder_own.csv")


def _damage_image_without_mask(b: Path) -> str:
    (b / "masks" / "case003.png").unlink()
    return "case003.jpg: image without mask"


def _damage_unreadable(b: Path) -> str:
    p = b / "images" / "case004.jpg"
    p.write_bytes(p.read_bytes()[:200])
    return "case004.jpg: cannot decode image"


def _damage_empty(b: Path) -> str:
    for p in [*(b / "images").iterdir(), *(b / "masks").iterdir()]:
        p.unlink()
    return "images folder holds no images (empty)"


def _damage_size(b: Path) -> str:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(b / "masks" / "case005.png")
    return "case005.png: mask is 8x8 but its image case005.jpg is 40x30"


@pytest.mark.parametrize("damage", [_damage_image_without_mask, _damage_unreadable, _damage_empty, _damage_size],
                         ids=["image-without-mask", "unreadable", "empty", "size-mismatch"])
def test_bad_folder_data_is_one_line_exit_2(damage, results, tmp_path, capsys):
    ext = make_external(tmp_path / "bad")
    fragment = damage(ext)
    code, out, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{ext}", "--cache-dir",
                         tmp_path / "c", capsys=capsys)
    assert code == 2 and out == "", out
    assert len(err.splitlines()) == 1 and err.startswith("python -m studies.evaluate: error: ") and fragment in err, err
    assert not list((results / "smoke").glob("external_folder_bad*"))


@pytest.mark.parametrize("args, fragment", [
    (["--on", "isic2017"], "unknown external dataset"),
    (["--on", "folder:"], "give the folder"),
    (["--on", "ph2", "--data-root", "/nonexistent"], "PH2 not found"),
    (["--limit", "0"], "--limit must be >= 1"),
])
def test_bad_arguments(results, args, fragment, capsys, external):
    full = ["--suite", "smoke", "--results", str(results), "--on", f"folder:{external}", *args]
    code, out, err = cli(*full, capsys=capsys)
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_unknown_suite_and_results(results, external, tmp_path, capsys):
    code, _, err = cli("--suite", "compare", "--results", results, "--on", f"folder:{external}", capsys=capsys)
    assert code == 2 and "no runs under" in err and "python -m studies.run --suite compare" in err
    code, _, err = cli("--suite", "smoke", "--results", tmp_path / "none", "--on", f"folder:{external}",
                       capsys=capsys)
    assert code == 2 and "no such folder" in err


def test_a_second_evaluation_waits_for_none(results, external, capsys):
    from studies import store

    lock = store.file_lock(results / "smoke" / ".external_folder_derm.lock")
    lock.acquire()
    try:
        code, _, err = cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", capsys=capsys)
    finally:
        lock.release()
    assert code == 2 and "another evaluation of suite smoke" in err


def test_cli_subprocess_exit_status_and_help(results, external, tmp_path):
    env = {**os.environ, "COLUMNS": "80", "EGEUNET_CACHE": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "studies.evaluate", "--help"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "folder:PATH" in proc.stdout
    assert max(len(ln) for ln in proc.stdout.splitlines()) <= 80
    proc = subprocess.run([sys.executable, "-m", "studies.evaluate", "--suite", "smoke", "--results", str(results),
                           "--on", f"folder:{external}"], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (results / "smoke" / "external_folder_derm.tex").is_file()


def test_report_picks_up_the_external_tables(results, external, tmp_path, capsys):
    from studies.reporting.build import Options, build_suite_report

    out = tmp_path / "reports"
    build_suite_report(results, "smoke", out, Options(n_boot=200, html=False, qualitative=False))
    assert "External evaluation" not in (out / "smoke" / "report.md").read_text()
    assert cli("--suite", "smoke", "--results", results, "--on", f"folder:{external}", "--cache-dir",
               tmp_path / "c", capsys=capsys)[0] == 0
    rep = build_suite_report(results, "smoke", out, Options(n_boot=200, html=False, qualitative=False))
    md = (out / "smoke" / "report.md").read_text()
    assert "## External evaluation" in md and "### folder_derm" in md
    rows = read_csv(results / "smoke" / "external_folder_derm.csv")
    egeunet = next(r for r in rows if r["model"] == "egeunet")
    assert f"| {100 * float(egeunet['pooled_dsc']):.2f} " in md.split("### folder_derm")[1]
    assert (out / "smoke" / "tables" / "external_folder_derm.tex").read_text() == \
        (results / "smoke" / "external_folder_derm.tex").read_text()
    assert out / "smoke" / "external_folder_derm.csv" in rep.files


def test_a_bad_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m studies.evaluate: error: "), err
