"""The CLI convention of the ``python -m studies.*`` commands (issue 22 item 6).

One helper (``studies/_cli.py``): prog names, ``--help`` with examples and the exit-status line, argument errors as
one line ``<prog>: error: <message>`` with exit 2, output laid out for the terminal width (80 columns when unknown,
never a forced 200), a compact ``studies.run --list`` (one line per suite, ``--list NAME`` for its variants) and
``--format json|csv`` wherever a table is printed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studies import _cli
from studies import audit as auditcli
from studies import bench as benchcli
from studies import budget as budgetcli
from studies import data as datacli
from studies import evaluate as evaluatecli
from studies import export as exportcli
from studies import fastcheck as fastcheckcli
from studies import opprofile as opprofilecli
from studies import profile as profilecli
from studies import report as reportcli
from studies import run as runcli
from studies.suites import SUITES

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 80
CLIS = {"run": runcli, "profile": profilecli, "budget": budgetcli, "data": datacli, "fastcheck": fastcheckcli,
        "audit": auditcli, "bench": benchcli, "evaluate": evaluatecli, "export": exportcli, "report": reportcli,
        "opprofile": opprofilecli}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def _cli_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=300)


def _fits(text: str, width: int = WIDTH) -> None:
    long = [ln for ln in text.splitlines() if len(ln.rstrip()) > width]
    assert not long, f"{len(long)} line(s) wider than {width}: {long[:3]}"


@pytest.fixture
def cols80(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


# ------------------------------------------------------------------------------------------ width


def test_console_is_80_columns_when_the_width_is_unknown():
    code = "from studies._cli import console; print(console().width, console(stderr=True).width)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["80", "80"]  # piped: not a terminal, no forced 200 columns
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(COLUMNS="123"), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == ["123", "123"]  # $COLUMNS (the terminal's width) wins


def test_run_list_is_one_line_per_suite_within_80_columns():
    proc = _cli_run("studies.run", "--list", COLUMNS="80")
    assert proc.returncode == 0, proc.stderr
    _fits(proc.stdout)
    lines = proc.stdout.strip().splitlines()
    for name in SUITES:
        assert sum(1 for ln in lines if ln.split()[0] == name) == 1, name
    assert len(lines) <= len(SUITES) + 3  # a header, one line per suite, a hint


def test_run_list_suite_prints_its_variants(cols80, capsys):
    assert runcli.main(["--list", "ablation_ghpa"]) == 0
    out = capsys.readouterr().out
    _fits(out)
    for v in SUITES["ablation_ghpa"].all_variants():
        assert v in out
    assert "w/o H-W branch" in out and "EGE-UNet" in out  # the label the tables print, not the key again
    head = out.splitlines()[0]
    assert head.startswith("ablation_ghpa: ") and SUITES["ablation_ghpa"].description in head  # one line at 80
    assert runcli.main(["--list", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m studies.run: error: unknown suite 'nope'")


def test_dry_run_fits_80_columns_without_cutting_run_ids(cols80, capsys, tmp_path):
    args = ["--suite", "ablation_macro", "--budget", "smoke", "--seeds", "2", "--data-root", str(tmp_path),
            "--results", str(tmp_path / "r"), "--dry-run"]
    assert runcli.main([*args, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"todo"}
    assert runcli.main(args) == 0
    out = capsys.readouterr().out
    _fits(out)
    for r in rows:
        assert re.search(rf"\b{r['config_hash']}\b", out), r["config_hash"]  # whole, on one line
    assert not (tmp_path / "r").exists()


def test_format_csv_and_json_of_list_and_dry_run(capsys, tmp_path):
    assert runcli.main(["--list", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["suite"] for r in rows] == list(SUITES)
    assert runcli.main(["--list", "smoke", "--format", "json"]) == 0
    assert [r["variant"] for r in json.loads(capsys.readouterr().out)] == list(SUITES["smoke"].variants)
    assert runcli.main(["--dry-run", "--results", str(tmp_path / "r"), "--format", "csv"]) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(cap.out)))  # stdout: only the rows ...
    assert len(rows) == 3 and rows[0]["dataset"] == "synthetic" and len(rows[0]["config_hash"]) == 12
    assert "SYNTHETIC DATA" in cap.err and "dry run:" in cap.err  # ... the rest on stderr


def test_help_of_every_command_fits_80_columns_and_states_exit_status(cols80, capsys):
    for name, mod in CLIS.items():
        main = mod.main
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        _fits(out)
        assert f"usage: python -m studies.{name}" in out, name
        assert "exit status" in out and "examples" in out, name
    for sub in ("summary", "check", "prepare"):
        with pytest.raises(SystemExit):
            datacli.main([sub, "--help"])
        _fits(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(CLIS))
def test_a_bad_argument_is_one_line_exit_2(name, capsys):
    with pytest.raises(SystemExit) as e:
        CLIS[name].main(["--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m studies.{name}: error: "), err


def test_budget_formats_and_80_columns(cols80, capsys):
    assert budgetcli.main(["--format", "json"]) == 0
    cap = capsys.readouterr()
    rows = json.loads(cap.out)
    assert rows == [{"model": "egeunet", "params": 53374, "params_budget": "== 53,374", "thop_macs": 72096256,
                     "macs_budget": "== 72,096,256", "budget_source": rows[0]["budget_source"], "ok": True,
                     "gated": True, "why": ""}]
    assert budgetcli.main(["--models", "egeunet", "egeunet_no_ds", "--format", "csv"]) == 0
    assert [r["model"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["egeunet", "egeunet_no_ds"]
    assert budgetcli.main(["--models", "egeunet*"]) == 0
    _fits(capsys.readouterr().out)


def test_profile_formats_and_80_columns(cols80, capsys, tmp_path):
    out = tmp_path / "p.csv"
    assert profilecli.main(["--models", "egeunet", "egeunet_plain_unet", "--no-latency", "--csv", str(out),
                            "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["egeunet", "egeunet_plain_unet"] and rows[0]["params"] == 53374
    assert profilecli.main(["--models", "egeunet", "egeunet_plain_unet", "--no-latency", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    _fits(text)
    assert "53,374" in text and "72.096" in text


def test_data_summary_formats_and_80_columns(cols80, capsys):
    assert datacli.main(["summary", "--dataset", "synthetic", "--size", "16", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["split"] for r in rows] == ["train", "val", "test"] and all(r["synthetic"] for r in rows)
    assert datacli.main(["summary", "--dataset", "synthetic", "--size", "16", "--timing"]) == 0
    _fits(capsys.readouterr().out)


def test_data_console_takes_the_width_when_it_prints_not_at_import(monkeypatch, capsys):
    widths = []
    for cols in (60, 100):  # studies.data was imported above, before either width was set
        monkeypatch.setenv("COLUMNS", str(cols))
        assert datacli.main(["summary", "--dataset", "synthetic", "--size", "16"]) == 0
        widths.append(max(len(ln.rstrip()) for ln in capsys.readouterr().out.splitlines()))
    assert widths[0] <= 60 < widths[1] <= 100


def test_helper_api():
    p = _cli.parser("python -m studies.x", "A description that is long enough to be wrapped. " * 4,
                    epilog=_cli.EXIT_LINE)
    _cli.add_format(p)
    assert p.parse_args([]).format == "table"
    assert p.parse_args(["--format", "csv"]).format == "csv"
    assert _cli.error_line("prog", "two\nlines") == "prog: error: two lines"
    assert _cli.guard("prog", lambda: 0) == 0
    assert _cli.guard("prog", lambda: (_ for _ in ()).throw(_cli.CLIError("bad", code=2))) == 2
