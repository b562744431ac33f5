"""``python -m studies.bench``: one real (tiny) run end to end; the numbers are measured, so only their
form and the accuracy columns are asserted (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_run_writes_a_traceable_csv(tmp_path):
    csv = tmp_path / "bench.csv"
    proc = subprocess.run([sys.executable, "-m", "studies.bench", "--quick", "--cases", "infer1,train8",
                           "--rounds", "1", "--csv", str(csv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = pd.read_csv(csv)
    assert set(df["case"]) == {"infer", "train_step"}
    assert set(df["candidate"]) == {"reference", "fast"}
    assert (df["img_per_s"] > 0).all()
    ref = df[df["candidate"] == "reference"]
    assert (ref["ratio_vs_reference"] == 1.0).all()
    fast = df[df["candidate"] == "fast"]
    # the fast path computes the reference's numbers: within 1e-4 of the logit scale (float32 round-off)
    assert (fast["max_abs_diff"] <= 1e-4 * fast["max_abs_logit"]).all()
    assert (fast["max_rel_grad_diff"] < 1e-3).all()
    for col in ("git_commit", "torch", "threads", "fast_workers", "device"):
        assert col in df.columns and df[col].notna().all(), col
