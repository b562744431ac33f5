"""engine.profile and ``python -m studies.profile`` (exact counts; latency only checked for presence)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egeunet import EGEUNet
from engine.profile import LEGACY_THOP_VERSION, PROFILE_KEYS, profile_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def row() -> dict:
    return profile_model("egeunet", latency=False)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_egeunet_exact_numbers(row: dict) -> None:
    assert tuple(row) == PROFILE_KEYS
    assert row["model"] == "egeunet" and row["family"] == "egeunet"
    assert row["input"] == "1x3x256x256" and row["count_batch"] == 1
    assert row["params"] == row["trainable_params"] == 53_374
    assert row["buffer_numel"] == 0
    assert row["flopcounter_flops"] == 144_192_512
    assert row["macs"] == 72_096_256 and row["gmacs"] == pytest.approx(0.072096256)
    assert row["thop_macs"] == 72_096_256 == row["macs"]  # docs/protocol.md §6: equal for EGE-UNet
    assert row["thop_params"] == 45_806
    assert row["fvcore_flops"] == 80_524_800
    assert row["fvcore_by_operator"] == {"conv": 72_096_256, "group_norm": 4_951_040, "upsample_bilinear2d": 3_477_504}
    assert row["size_fp32_kib"] == pytest.approx(208.49, abs=0.01)
    assert row["size_fp16_kib"] == pytest.approx(104.25, abs=0.01)
    assert row["counter_errors"] == ""
    assert row["latency_ms_median"] is None and row["throughput_img_s"] is None


def test_counter_names_and_versions_are_recorded(row: dict) -> None:
    assert "FlopCounterMode" in row["macs_counter"] and row["macs_counter_version"] == f"torch {torch.__version__}"
    assert "thop" in row["thop_counter"] and row["thop_version"] == LEGACY_THOP_VERSION
    assert "fvcore" in row["fvcore_counter"] and row["fvcore_version"] == "0.1.5.post20221221"
    assert row["torch_version"] == torch.__version__ and row["device"] == "cpu"


def test_profiling_a_module_leaves_it_untouched() -> None:
    model = EGEUNet()
    model.train()
    keys = list(model.state_dict())
    r = profile_model(model, size=64, latency=True, warmup=1, min_run_time=0.01, batch_throughput=2,
                      counters=("thop",), name="mine")
    assert r["model"] == "mine" and r["family"] is None and r["input"] == "1x3x64x64"
    assert model.training
    assert list(model.state_dict()) == keys  # no thop total_ops/total_params buffers
    assert r["macs"] is None and r["fvcore_flops"] is None and r["thop_macs"] > 0
    # latency fields present (never asserted against a value)
    assert r["latency_batch"] == 1 and r["latency_ms_median"] > 0 and r["latency_ms_iqr"] >= 0
    assert r["latency_ms_p25"] <= r["latency_ms_median"] <= r["latency_ms_p75"] and r["latency_runs"] >= 1
    assert r["throughput_batch"] == 2 and r["throughput_img_s"] > 0
    assert r["threads"] >= 1 and "benchmark" in r["timer"] and r["warmup"] == 1


def test_threads_are_applied_and_restored() -> None:
    before = torch.get_num_threads()
    r = profile_model("egeunet_x0_5", size=64, threads=1, warmup=1, min_run_time=0.01, batch_throughput=0,
                      counters=())
    assert r["threads"] == 1 and r["throughput_img_s"] is None
    assert torch.get_num_threads() == before


def test_failing_counter_is_reported_not_raised() -> None:
    class NotTraceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)

        def forward(self, x):
            return {"logits": self.conv(x), "n": int(x.sum() > 0)}  # jit trace rejects this output

    r = profile_model(NotTraceable(), size=32, latency=False)
    assert r["params"] == 4 and r["thop_macs"] == 3 * 32 * 32
    assert r["fvcore_flops"] is None and "fvcore" in r["counter_errors"]


def test_unknown_counter_and_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown counter"):
        profile_model("egeunet", counters=("ptflops",), latency=False)
    with pytest.raises(KeyError, match="valid names"):
        profile_model("no_such_model", latency=False)


def test_cli_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "profile.csv"
    res = run_cli("studies.profile", "--models", "egeunet", "egeunet_no_ds", "--no-latency", "--csv", str(out))
    assert res.returncode == 0, res.stderr
    assert "egeunet" in res.stdout and "53,374" in res.stdout and "72.096" in res.stdout
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == ["egeunet", "egeunet_no_ds"]
    ref = rows[0]
    assert int(ref["params"]) == 53_374 and int(ref["thop_macs"]) == 72_096_256
    assert int(ref["macs"]) == 72_096_256 and int(ref["fvcore_flops"]) == 80_524_800
    assert ref["thop_version"] == LEGACY_THOP_VERSION and ref["latency_ms_median"] == ""
    assert int(rows[1]["params"]) == 52_449
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temp file


def test_cli_unknown_model_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from studies import profile as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--models", "egeunet", "nope", "--csv", str(tmp_path / "p.csv")])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "valid names" in lines[0] and "egeunet" in lines[0]
    assert not (tmp_path / "p.csv").exists()


def test_resolve_models_all_and_globs() -> None:
    from zoo.registry import list_models
    from studies._cli import UnknownModels, resolve_models

    assert resolve_models(None) == ["egeunet"]
    assert resolve_models(["all"]) == list_models()
    assert resolve_models(["egeunet_no_*", "egeunet_no_xy"]) == list_models("egeunet_no_*")
    with pytest.raises(UnknownModels, match="valid names"):
        resolve_models(["egeunet_*_zz"])
