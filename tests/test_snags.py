"""The snags a new user hit trying the README from a fresh clone (issue 20 item 7), one test (or more) each."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studies import _cli
from studies import fastcheck as fastcheckcli
from studies import profile as profilecli
from studies import run as runcli

ROOT = Path(__file__).resolve().parents[1]
IMG = "ISIC2018_Task1-2_Training_Input"
GT = "ISIC2018_Task1_Training_GroundTruth"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def custom_isic(root: Path, n: int = 20, first: int = 9_000_000) -> Path:
    """A small folder of one's own in the ISIC 2018 layout (ids that no committed split list holds)."""
    base = root / "ISIC2018"
    (base / IMG).mkdir(parents=True)
    (base / GT).mkdir(parents=True)
    for k in range(n):
        iid = f"ISIC_{first + k:07d}"
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(base / IMG / f"{iid}.jpg")
        m = np.zeros((24, 32), np.uint8)
        m[6:18, 8:24] = 255
        Image.fromarray(m).save(base / GT / f"{iid}_segmentation.png")
    return base


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ --results / --out paths

def _bad_results(tmp_path: Path) -> dict[str, Path]:
    f = tmp_path / "a_file"
    f.write_text("x")
    return {"existing file": f, "under a file": f / "sub" / "results"}


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("case", ["existing file", "under a file"])
def test_results_at_a_file_is_one_line_exit_2_and_creates_nothing(case, dry, tmp_path, capsys):
    path = _bad_results(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    rc = runcli.main(["--results", str(path), *(["--dry-run"] if dry else [])])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "python -m studies.run")
    assert str(path) in line
    assert sorted(tmp_path.rglob("*")) == before


def test_results_in_an_immutable_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("chattr +i not available here")
    try:
        for dry in ([], ["--dry-run"]):
            assert runcli.main(["--results", str(ro / "results"), *dry]) == 2
            line = _one_error_line(capsys.readouterr().err, "python -m studies.run")
            assert str(ro / "results") in line and "not writable" in line
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)


def test_results_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(_cli.os, "access", lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))
    assert runcli.main(["--results", str(ro), "--dry-run"]) == 2  # what a non-root user meets on chmod 555
    assert str(ro) in _one_error_line(capsys.readouterr().err, "python -m studies.run")
    assert list(ro.iterdir()) == []


def test_profile_csv_and_fastcheck_results_paths(tmp_path, capsys):
    paths = _bad_results(tmp_path)
    for bad in (paths["under a file"], tmp_path):  # under a file; a folder given as the CSV
        with pytest.raises(SystemExit) as e:
            profilecli.main(["--no-latency", "--csv", str(bad)])
        assert e.value.code == 2
        assert str(bad) in _one_error_line(capsys.readouterr().err, "python -m studies.profile")
    with pytest.raises(SystemExit) as e:
        fastcheckcli.main(["--results", str(paths["existing file"])])
    assert e.value.code == 2
    assert str(paths["existing file"]) in _one_error_line(capsys.readouterr().err, "python -m studies.fastcheck")


# ------------------------------------------------------------------------------ the first, silent build

def test_a_kernel_build_says_so_on_stderr(tmp_path, monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp

    from kernels import fastops as _fastops

    built = []
    monkeypatch.setattr(cpp, "load", lambda **kw: built.append(kw["name"]) or object())  # no real compile
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext1"))
    _fastops._load_or_build()
    assert built and "building fast kernels once (a minute or two, the first time only)" in capsys.readouterr().err
    monkeypatch.setattr(_fastops, "NOTICE", None)  # the hook: replace or silence the message
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext2"))
    _fastops._load_or_build()
    assert len(built) == 2 and capsys.readouterr().err == ""


# ------------------------------------------------------------------------------ README and git hygiene

def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if "python -m studies." in ln]


def test_readme_says_the_default_is_synthetic_and_how_to_use_real_data():
    text = (ROOT / "README.md").read_text()
    data = text[text.index("## Data"):text.index("## Studies")]
    assert "**What the default does:**" in data and "synthetic" in data.lower()
    assert "--data-root" in data and "EGEUNET_DATA" in data and "--strict-data" in data


def test_readme_smoke_examples_do_not_write_committed_folders():
    cmds = _readme_commands()
    smoke = [c for c in cmds if "studies.run" in c and ("--budget smoke" in c or c.endswith("studies.run")
                                                        or "--suite smoke" in c)]
    assert smoke
    for c in smoke:
        m = re.search(r"--results (\S+)", c)
        assert m is None or not m.group(1).startswith("results"), c  # default at smoke: the scratch folder
    reports = [c for c in cmds if "studies.report" in c]
    for c in reports:
        assert re.search(r"--out (?!reports)\S+", c) and re.search(r"--results (?!results)\S+", c), c


def test_smoke_budget_defaults_to_a_scratch_results_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("EGEUNET_SCRATCH", raising=False)
    assert runcli.default_results("smoke") == str(Path(tempfile.gettempdir()) / "egeunet-smoke")
    assert runcli.default_results("cpu") == runcli.default_results("paper") == "results"
    monkeypatch.setenv("EGEUNET_SCRATCH", str(tmp_path / "scratch"))
    assert runcli.main(["--dry-run"]) == 0  # the default command's folder
    assert f"under{tmp_path / 'scratch'}/runs" in re.sub(r"\s", "", capsys.readouterr().out)


def test_profile_csv_default_is_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert profilecli.DEFAULT_CSV == "results/profile/profile.csv"
    proc = subprocess.run(["git", "check-ignore", "-q", profilecli.DEFAULT_CSV], cwd=ROOT)
    assert proc.returncode == 0


def test_tox_runs_what_ci_runs():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tox.ini")
    assert ".ci/run" in cfg["testenv"]["commands"]
    assert cfg["testenv"].get("skip_install") == "true"  # .ci/run installs, with the same extras as CI
    ci = (ROOT / ".ci" / "run").read_text()
    assert '".[dev,ray,deploy]"' in ci and "python -m pytest -q" in ci
    assert "[dev,ray,deploy]" in cfg["testenv"]["description"]


# ------------------------------------------------------------------------------ seeds in the run summary

def test_seeds_are_shown_as_a_list_or_a_count():
    assert runcli.seeds_text([0]) == "seed 0"
    assert runcli.seeds_text(range(5)) == "seeds 0-4 (5)"
    assert runcli.seeds_text([7, 0, 3]) == "seeds 0,3,7 (3)"


# ------------------------------------------------------------------------------ a custom folder trains; 80 columns

@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """One smoke run of EGE-UNet on a small custom ISIC-layout folder, from the command line at 80 columns,
    on a results folder holding temporaries of killed writers."""
    tmp = tmp_path_factory.mktemp("custom")
    root = tmp / "data"
    custom_isic(root)
    results = tmp / "results"
    (results / "smoke").mkdir(parents=True)
    stale = [results / "smoke" / ".results.csv.k1ll3d.tmp", results / "runs" / "0123456789ab" / ".latest.pt.x.tmp"]
    stale[1].parent.mkdir(parents=True)
    for f in stale:
        f.write_bytes(b"")
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    cache = tmp / "cache"
    env = dict(COLUMNS="80", EGEUNET_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-m", "studies.run", "--suite", "smoke", "--variants", "egeunet",
                           "--dataset", "isic2018", "--data-root", str(root), "--results", str(results),
                           "--threads", "1"], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=600)
    return proc, results, stale, root, env


def test_a_small_custom_isic_folder_trains(custom_run):
    proc, results, _, _, _ = custom_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 done, 0 skipped" in proc.stdout
    assert (results / "smoke" / "results.csv").is_file()


def test_run_output_fits_80_columns_and_names_the_seed(custom_run):
    proc, _, _, _, _ = custom_run
    out = proc.stdout
    long = [ln for ln in out.splitlines() if len(ln.rstrip()) > 80]
    assert not long, long
    assert "seed 0" in out and "summary (seed 0)" in out
    assert not re.search(r"seeds\s*\|\s*0\b", out)
    assert re.search(r"\b[0-9a-f]{12}\b", out.split("summary")[1])  # the run id, whole


def test_stale_temporaries_of_killed_writers_are_removed_on_start(custom_run):
    proc, _, stale, _, _ = custom_run
    assert proc.returncode == 0
    for f in stale:
        assert not f.exists(), f
    assert "removed 2 temporary file(s) left by killed writers" in proc.stdout.replace("\n", " ")


def test_clean_stale_temps_keeps_what_live_writers_own(tmp_path):
    from engine.data import cache as dcache

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    results = tmp_path / "r"
    (results / "smoke").mkdir(parents=True)
    young = results / "smoke" / ".results.csv.young.tmp"
    young.write_bytes(b"")  # a table write in progress right now
    data = tmp_path / "cache" / "data"
    data.mkdir(parents=True)
    gone = data / f".tmp-isic2018_64x64_0123456789abcdef-{dead.pid}-deadbeef"
    alive = data / f".tmp-isic2018_64x64_0123456789abcdef-{os.getpid()}-cafef00d"
    for d in (gone, alive):
        d.mkdir()
        (d / "images.npy").write_bytes(b"\0" * 100)
        os.utime(d, (time.time() - 3600, time.time() - 3600))
    top_old, top_young = results / ".manifest.json.a.tmp", results / ".manifest.json.b.tmp"
    for f in (top_old, top_young):
        f.write_bytes(b"")
    os.utime(top_old, (time.time() - 3600, time.time() - 3600))
    assert _cli.clean_stale_temps(results) == [top_old]
    assert young.exists() and top_young.exists()
    assert dcache.clean_stale(tmp_path / "cache") == [gone]
    assert alive.exists() and not gone.exists()


# ------------------------------------------------------------------------------ bad data inside a suite: exit 2

def _break(base: Path, how: str) -> str:
    if how == "truncated jpeg":
        f = base / IMG / "ISIC_9000003.jpg"
        f.write_bytes(f.read_bytes()[:60])
        return "ISIC_9000003.jpg"
    if how == "missing mask":
        (base / GT / "ISIC_9000004_segmentation.png").unlink()
        return "ISIC_9000004.jpg"
    if how == "empty folder":
        for f in (base / IMG).iterdir():
            f.unlink()
        return IMG
    if how == "duplicate id":
        shutil.copy(base / IMG / "ISIC_9000005.jpg", base / IMG / "ISIC_9000005.png")
        return "ISIC_9000005"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated jpeg", "missing mask", "empty folder", "duplicate id"])
def test_bad_data_met_by_a_suite_exits_2(how, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EGEUNET_CACHE", str(tmp_path / "cache"))
    base = custom_isic(tmp_path / "data")
    name = _break(base, how)
    rc = runcli.main(["--suite", "smoke", "--variants", "egeunet", "--dataset", "isic2018", "--data-root",
                      str(tmp_path / "data"), "--results", str(tmp_path / "r"), "--threads", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("python -m studies.run: error: ")]
    assert len(line) == 1 and name in line[0] and "Traceback" not in err, err


# ------------------------------------------------------------------------------ a dangling symbolic link

def test_dangling_symlink_is_a_listed_problem(tmp_path, capsys):
    from studies.data import main

    base = custom_isic(tmp_path / "data")
    link = base / IMG / "ISIC_9000099.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    (base / GT / "ISIC_9000099_segmentation.png").symlink_to(base / GT / "ISIC_9000000_segmentation.png")
    assert main(["check", str(base)]) == 2
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"{link}: broken symbolic link" in out and "1 error(s)" in out
    assert main(["check", str(base), "--quick"]) == 2


def test_dangling_symlink_in_ph2(fake_ph2, tmp_path, capsys):
    from studies.data import main

    root, base = fake_ph2()
    img = base / "PH2 Dataset images" / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.bmp"
    img.unlink()
    img.symlink_to(tmp_path / "gone.bmp")
    assert main(["check", str(base), "--quick"]) == 2
    assert "broken symbolic link" in capsys.readouterr().out


# ------------------------------------------------------------------------------ split lists: advice the CLI can follow

def test_split_list_rule_for_custom_and_damaged_folders(monkeypatch):
    from engine.data import DataError, splits

    listed = [f"ISIC_{k:07d}" for k in range(10)]
    monkeypatch.setattr(splits, "committed", lambda d, p: {"train": listed[:7], "val": listed[7:8],
                                                           "test": listed[8:]})
    own = {"train": [f"ISIC_{k:07d}" for k in range(100, 120)]}  # none listed: a dataset of its own
    lists, source, notes = splits.split_ids("isic2018", "clean", own, 0, Path("/d/ISIC2018"))
    assert sorted(i for v in lists.values() for _, i in v) == own["train"]
    assert "drawn at load time" in source and notes
    damaged = {"train": listed[:9]}  # most listed ids present, one missing: a damaged copy
    with pytest.raises(DataError) as e:
        splits.split_ids("isic2018", "clean", damaged, 0, Path("/d/ISIC2018"))
    msg = str(e.value)
    assert "ISIC_0000009" in msg and "python -m studies.data check /d/ISIC2018" in msg and "seed=1" not in msg


def test_custom_folder_has_a_data_fingerprint(custom_run):
    from engine.data import data_fingerprint, load_split

    _, _, _, root, env = custom_run
    fp = data_fingerprint("isic2018", "clean", root, cache_dir=env["EGEUNET_CACHE"])
    assert fp.pairs == 20
    sizes = [len(load_split("isic2018", s, size=16, root=root, cache_dir=env["EGEUNET_CACHE"]))
             for s in ("train", "val", "test")]
    assert sizes == [14, 2, 4]
