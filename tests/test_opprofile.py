"""studies.opprofile: a real profiled training step, its CSV, and its section of docs/performance.md."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from studies.opprofile import UNTRACKED, family_of, families, profile_step, render_docs_section


def test_operators_fall_into_their_families():
    assert family_of("aten::convolution_backward") == "dense conv (oneDNN)"
    assert family_of("aten::mm") == family_of("aten::addmm") == "GEMM (1x1 convs, resizes)"
    assert family_of("_LayerNormMultiBackward") == "LayerNorm"
    assert family_of("_DepthwiseConv") == "depth-wise conv"
    assert family_of("aten::softplus") == family_of("_BceDiceFused") == "loss"
    assert family_of("aten::gelu_backward") == "activation"
    assert family_of("aten::view") == "views" and family_of("aten::sum") == "small elementwise / sums"
    assert family_of(UNTRACKED).startswith("Python") and family_of("aten::frobnicate") == "other"


@pytest.mark.parametrize("fast", [True, False])
def test_a_profiled_step_accounts_for_its_wall_time(fast):
    prof, path = profile_step("egeunet", batch=2, size=32, steps=1, warmup=1, fast=fast)
    assert path == ("fast" if fast else "plain")
    rows = prof.rows()
    names = {r["op"] for r in rows}
    assert UNTRACKED in names and (("_LayerNormMulti" in names) == fast)
    assert any(r["family"] == "dense conv (oneDNN)" for r in rows)
    total = sum(r["self_ms_per_step"] for r in rows)
    assert total >= 0.99 * prof.step_ms  # the untracked row closes the gap to the wall time
    assert [r["self_ms_per_step"] for r in rows] == sorted((r["self_ms_per_step"] for r in rows), reverse=True)
    fams = families(rows)
    assert abs(sum(ms for _, ms, _ in fams) - total) < 1e-6


def test_cli_writes_the_csv_and_the_docs_show_it(tmp_path):
    out = tmp_path / "bench" / "ops_cpu.csv"
    p = subprocess.run([sys.executable, "-m", "studies.opprofile", "--batch", "2", "--size", "32", "--steps", "1",
                        "--csv", str(out), "--format", "json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(out)))
    assert rows and {r["model"] for r in rows} == {"egeunet"} and rows[0]["threads"] == "1"
    section = render_docs_section("results/bench/ops_cpu.csv", rows)
    assert section[0].startswith("## `results/bench/ops_cpu.csv`") and any("| LayerNorm |" in ln for ln in section)
    from studies.bench import render_docs

    assert "where the training step spends its time" in render_docs(out.parent)


def test_cli_refuses_an_unknown_model_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "studies.opprofile", "--model", "nosuchnet", "--csv",
                        str(tmp_path / "o.csv")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nosuchnet" in p.stderr
    assert not (tmp_path / "o.csv").exists()
