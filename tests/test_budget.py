"""``python -m studies.budget``: the parameter-budget gate and its "50KB" arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from egeunet import EGEUNet, GHPA, LayerNormCF
from studies import budget

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "studies.budget", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_default_gate_passes() -> None:
    res = run_cli()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "egeunet" in res.stdout and "== 53,374" in res.stdout and "== 72,096,256" in res.stdout
    assert "pass" in res.stdout


def test_max_params_50000_fails_naming_the_model() -> None:
    res = run_cli("--max-params", "50000")
    assert res.returncode == 1
    assert "egeunet" in res.stdout and "FAIL" in res.stdout and "53,374 > 50,000" in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "egeunet" in err[0]


def test_gate_rules_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    rows = budget.gate(["egeunet"])
    assert rows[0]["ok"] and rows[0]["params"] == 53_374 and rows[0]["thop_macs"] == 72_096_256
    assert rows[0]["budget"] == budget.KNOWN_BUDGETS["egeunet"]
    # explicit models without a ceiling: the registry's recorded size, exactly
    rows = budget.gate(["egeunet_no_ds", "egeunet_x2"])
    assert all(r["ok"] for r in rows) and [r["params"] for r in rows] == [52_449, 180_734]
    # with a ceiling: params <= N (the spec's variant budget "< 60,000" = --max-params 59999)
    rows = {r["model"]: r for r in budget.gate(["egeunet_no_xy", "egeunet_plain_conv"], max_params=59_999)}
    assert rows["egeunet_no_xy"]["ok"] and not rows["egeunet_plain_conv"]["ok"]
    assert budget.main(["--models", "egeunet_no_gab", "--max-params", "34406"]) == 0
    with pytest.raises(SystemExit) as exc:
        budget.main(["--models", "egeunet_no_gab", "--max-params", "34405"])
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        budget.main(["--max-macs", "72096255"])
    assert exc.value.code == 1
    assert "egeunet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        budget.main(["--models", "nope"])
    assert exc.value.code == 2
    assert "valid names" in capsys.readouterr().err


def test_exact_reference_budget_catches_any_change() -> None:
    b = budget.KNOWN_BUDGETS["egeunet"]
    assert b.check(53_374, 72_096_256) == []
    assert b.check(53_375, 72_096_256) and b.check(53_373, 72_096_256) and b.check(53_374, 72_096_257)
    assert b.check(53_374, None)  # MACs that cannot be counted do not pass


def test_fifty_kb_arithmetic_in_the_docstring() -> None:
    """The numbers quoted in studies.budget's docstring are those of the model."""
    m = EGEUNet()
    params = sum(p.numel() for p in m.parameters())
    gn = sum(p.numel() for mod in m.modules() if isinstance(mod, nn.GroupNorm) for p in mod.parameters())
    ln = sum(p.numel() for mod in m.modules() if isinstance(mod, LayerNormCF) for p in mod.parameters())
    masks = sum(p.numel() for mod in m.modules() if isinstance(mod, GHPA)
                for n, p in mod.named_parameters(recurse=False) if n.startswith("params_"))
    from engine.profile import count_thop

    _, thop_params = count_thop(m, torch.randn(1, 3, 256, 256))
    assert (params, thop_params, gn, ln, masks) == (53_374, 45_806, 512, 2_096, 4_960)
    assert gn + ln + masks == 7_568 == params - thop_params
    assert round(params * 4 / 1024, 1) == 208.5 and round(params * 2 / 1024, 1) == 104.2
    doc = budget.__doc__
    for s in ("53,374", "45,806", "(512)", "(2,096)", "(4,960)", "7,568", "208.5 KiB", "104.2 KiB", "50 K"):
        assert s in doc, s
