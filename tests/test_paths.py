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
from zoo.views import ChannelsLast, channels_last, compiled

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


# ------------------------------------------------------------------ torch.compile where it pays (zoo.paths)
from engine.fastview import choose_view  # noqa: E402
from zoo import paths as zpaths  # noqa: E402

_HEADER = ["case", "batch", "candidate", "img_per_s", "ratio_vs_reference", "ratio_ci_low", "ratio_ci_high",
           "setup_s", "model", "size"]


def _paths_csv(path: Path, models: dict[str, tuple]) -> Path:
    """A paths table: per model (plain img/s, (view ratio, lo, hi), (compiled ratio, lo, hi), compile s, size)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_HEADER)
        for name, (rate, view, comp, setup, size) in models.items():
            w.writerow(["path", 8, "reference", rate, 1.0, 1.0, 1.0, 0.4, name, size])
            w.writerow(["path", 8, "channels_last", rate * view[0], *view, 0.3, name, size])
            w.writerow(["path", 8, "compiled", rate * comp[0], *comp, setup, name, size])
    return path


def test_compile_is_chosen_only_past_its_break_even(tmp_path):
    table = _paths_csv(tmp_path / "paths.csv", {
        # 0.5 s per plain image; the compiled step saves 0.5 * (1/1.30 - 1/1.39) = 0.0249 s per image, so
        # 3 x 24 s of compiling is won back after 2,891 images at 224 px (4 x as many at 112 px)
        "wins": (2.0, (1.30, 1.22, 1.32), (1.39, 1.345, 1.459), 24.0, 224),
        # faster, but its interval overlaps the view's: never
        "overlaps": (2.0, (1.30, 1.22, 1.32), (1.39, 1.30, 1.46), 24.0, 224),
        "slower": (50.0, (1.43, 1.40, 1.45), (1.17, 1.14, 1.19), 100.0, 224),
    })
    m = zpaths.measurements(table)["wins"]
    assert m.saved_s(1000, 224) == pytest.approx(1000 * 0.5 * (1 / 1.30 - 1 / 1.39))
    assert zpaths.choose_path("wins", 2800, 224, table) == "declared"
    assert zpaths.choose_path("wins", 3000, 224, table) == "compiled"
    assert zpaths.choose_path("wins", 11_000, 112, table) == "declared"
    assert zpaths.choose_path("wins", 12_000, 112, table) == "compiled"
    assert zpaths.choose_path("overlaps", 10**9, 224, table) == "declared"
    assert zpaths.choose_path("slower", 10**9, 224, table) == "declared"
    assert zpaths.choose_path("unmeasured", 10**9, 224, table) == "declared"
    assert zpaths.choose_path("wins", 10**9, 224, tmp_path / "absent.csv") == "declared"


def test_a_malformed_paths_table_names_the_file_and_the_fix(tmp_path):
    table = _paths_csv(tmp_path / "paths.csv", {"wins": (2.0, (1.3, 1.2, 1.3), (1.4, 1.35, 1.45), 24.0, 224)})
    table.write_text(table.read_text().replace("24.0", "soon"))
    with pytest.raises(ValueError, match=r"paths\.csv.*'wins'.*studies\.bench --cases paths"):
        zpaths.measurements(table)


def test_the_trainer_choice_is_what_the_committed_bench_measured():
    measured = zpaths.measurements(PATHS_CSV)
    assert set(measured) == set(_measured()), "every measured model needs its compiled row"
    for name, m in measured.items():
        smoke = 2 * 16  # the smoke budget: 2 epochs of 16 images
        full = 50 * 2594  # cpu budget, every ISIC 2018 image (an upper bound on a run's images)
        assert choose_view(name, "cpu", True, smoke, 64) == "declared", name  # never worth a compile
        want = "compiled" if zpaths.compile_pays(m, full, 224) else "declared"
        assert choose_view(name, "cpu", True, full, 224) == want, name
        assert choose_view(name, "cuda", True, full, 224) == "declared"
        assert choose_view(name, "cpu", False, full, 224) == "declared"
    # a resumed run keeps the path it started on, whatever the table says now
    assert choose_view("unet32", "cpu", True, 1, 64, started_path="compiled") == "compiled"
    assert choose_view("unet32", "cpu", True, 10**9, 224, started_path="fast") == "declared"


def test_a_run_where_compiling_pays_trains_compiled_and_records_the_path(tmp_path, monkeypatch):
    from engine.record import load_record
    from engine.train import RunConfig, run_training

    # a table under which compiling pays even for a smoke run
    table = _paths_csv(tmp_path / "paths.csv", {"unext_s": (0.01, (1.1, 1.0, 1.2), (2.0, 1.9, 2.1), 0.001, 64)})
    monkeypatch.setattr(zpaths, "PATHS_CSV", table)
    cfg = RunConfig(model="unext_s", dataset="synthetic", budget="smoke", seed=0, recipe={"epochs": 1})
    res = run_training(cfg, tmp_path / "results", threads=1, progress=False, profile=False)
    assert res.status == "done", res.reason
    rec = load_record(res.record_dir)
    assert rec.env["sessions"][0]["path"] == "compiled"
    assert 0.0 <= rec.metrics["test"]["pooled_dsc"] <= 1.0
    # the compiled view shares the model's parameters and state_dict keys
    model = create_model("unext_s")
    view = compiled(model, "train")
    assert [id(p) for p in view.parameters()] == [id(p) for p in model.parameters()]
    assert view.state_dict().keys() == {f"model.{k}" for k in model.state_dict()}
