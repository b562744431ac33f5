"""Every model on its fastest correct path: the channels-last view is the model, and the registry's ``fast``
declarations are what ``python -m studies.bench --cases paths`` measured (results/bench/paths_cpu.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from engine.fastview import fast_views, uses_fast_path
from zoo.contract import as_seg_output
from zoo.registry import create_model, get_entry
from zoo.views import ChannelsLast, channels_last

PATHS_CSV = Path(__file__).resolve().parents[1] / "results" / "bench" / "paths_cpu.csv"
CHANNELS_LAST = "zoo.views:channels_last"


@pytest.mark.parametrize("name", ["unet32", "unext_s", "unext", "malunet", "transfuse_lite"])
def test_channels_last_view_is_the_model(name):
    torch.manual_seed(0)
    model = create_model(name).eval()  # eval: no dropout, so the two forwards are comparable
    plain = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = as_seg_output(model(x)).logits
    view = channels_last(model, "train")
    assert isinstance(view, ChannelsLast)
    # the same Parameter objects, the same state_dict values, in NHWC order
    assert [id(p) for p in view.parameters()] == [id(p) for p in model.parameters()]
    assert all(torch.equal(plain[k], v) for k, v in model.state_dict().items())
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = as_seg_output(view(x)).logits
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-4
    assert view.loss_weights == model.loss_weights  # attributes the trainer reads pass through
    # one optimizer step through the view moves the model's own weights
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    as_seg_output(view(x)).logits.mean().backward()
    opt.step()
    assert not torch.equal(plain[next(iter(plain))], model.state_dict()[next(iter(plain))])


def test_channels_last_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be"):
        channels_last(create_model("unext_s"), "eval")


def _measured() -> dict[str, dict[str, str]]:
    with open(PATHS_CSV, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["case"] == "path" and r["candidate"] == "channels_last"]
    return {r["model"]: r for r in rows}


def test_registry_declares_channels_last_where_the_bench_measured_a_gain():
    measured = _measured()
    assert measured, f"{PATHS_CSV} holds no channels_last rows"
    for name, row in measured.items():
        pays = float(row["ratio_ci_low"]) > 1.0  # the whole 95% interval above 1
        declared = get_entry(name).fast == CHANNELS_LAST
        assert declared == pays, (f"{name}: channels_last measured {row['ratio_vs_reference']}x "
                                  f"(95% CI {row['ratio_ci_low']}-{row['ratio_ci_high']}); the registry "
                                  f"{'declares' if declared else 'does not declare'} it")


def test_trainer_takes_the_declared_view():
    declared = [n for n in _measured() if get_entry(n).fast == CHANNELS_LAST]
    for name in declared:
        assert uses_fast_path(name, "cpu") and not uses_fast_path(name, "cuda")
        model = create_model(name)
        train, infer = fast_views(name, model, True)
        assert isinstance(train, ChannelsLast) and isinstance(infer, ChannelsLast)
        assert train.model is model and infer.model is model
