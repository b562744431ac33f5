"""The golden numerics fingerprint: training numerics change only together with NUMERICS_VERSION."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.train as train
from engine.numerics import NUMERICS_VERSION, compare_fingerprints, golden_fingerprint, precision_mode

GOLDEN = Path(__file__).parent / "data" / "numerics_fingerprint.json"


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_committed_fingerprint_is_for_the_current_version():
    data = _golden()
    assert data["numerics_version"] == NUMERICS_VERSION, (
        "NUMERICS_VERSION was bumped: rewrite the golden file with "
        "`python -m engine.numerics --write tests/data/numerics_fingerprint.json`")
    assert set(data["paths"]) == {"plain", "fast"}


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_training_numerics_match_the_golden_fingerprint(path):
    got = golden_fingerprint(fast=path == "fast")
    diffs = compare_fingerprints(_golden()["paths"][path], got)
    assert not diffs, ("training numerics changed without a NUMERICS_VERSION bump (engine/numerics.py): "
                       + "; ".join(diffs))


def test_a_numerics_change_without_a_bump_is_caught(monkeypatch):
    original = train.model_loss

    def reweighted(out, y, weights, **kw):  # a "harmless" 1 % change of the side outputs' weights
        # (not of all weights alike: AdamW is nearly invariant to a uniform scale of the loss, so the weights
        # could come out the same to the fingerprint's precision)
        return original(out, y, (weights[0], *(w * 1.01 for w in weights[1:])), **kw)

    monkeypatch.setattr(train, "model_loss", reweighted)
    diffs = compare_fingerprints(_golden()["paths"]["plain"], golden_fingerprint(fast=False))
    assert any(d.startswith("train_loss") for d in diffs)
    assert any(d.startswith("weights") for d in diffs)


def test_plain_and_fast_paths_agree_to_round_off_only():
    data = _golden()["paths"]
    diffs = compare_fingerprints(data["plain"], data["fast"])
    assert all("sha256" in d for d in diffs)  # only the exact hash may differ between the two paths


def test_precision_modes():
    assert precision_mode("cpu", amp=True) == "fp32"
    assert precision_mode("cpu", amp=False) == "fp32"
    assert precision_mode("cuda", amp=True) == "amp-fp16"
