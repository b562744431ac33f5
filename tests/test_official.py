"""Loading checkpoints written by the official EGE-UNet code (docs/models.md §1.8).

The authority for official names, shapes and order is ``tests/data/official_egeunet_state_dict.tsv``
(314 keys, committed with the tests; provenance in docs/models.md §1.8), so these tests never skip.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from egeunet import EGEUNet, EGEUNetConfig, OfficialCheckpointError, load_official_state_dict
from egeunet.official import export_official_state_dict

TSV_PATH = Path(__file__).resolve().parent / "data" / "official_egeunet_state_dict.tsv"


@pytest.fixture(scope="module")
def tsv() -> list[tuple[str, tuple[int, ...], int]]:
    path = TSV_PATH
    assert path.is_file(), f"{path} is missing: it is part of the repository (docs/models.md §1.8)"
    rows = []
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "numel"]
    for line in lines[1:]:
        if not line.strip():
            continue
        key, shape, numel = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")), int(numel)))
    return rows


@pytest.fixture()
def official_sd(tsv) -> "OrderedDict[str, torch.Tensor]":
    """A state dict as the official code would save it, filled with distinct random values."""
    g = torch.Generator().manual_seed(7)
    return OrderedDict((k, torch.randn(shape, generator=g)) for k, shape, _ in tsv)


def test_tsv_is_the_reference(tsv) -> None:
    assert len(tsv) == 314
    assert sum(n for _, _, n in tsv) == 53_374
    assert all(math.prod(shape) == n for _, shape, n in tsv)
    assert len({k for k, _, _ in tsv}) == 314


def test_model_state_dict_keys_shapes_and_order_equal_the_tsv(tsv) -> None:
    own = EGEUNet().state_dict()
    assert list(own) == [k for k, _, _ in tsv]  # same keys, same order
    assert [tuple(v.shape) for v in own.values()] == [s for _, s, _ in tsv]
    # the parameters are the whole state dict (no buffers), in the same order
    assert [n for n, _ in EGEUNet().named_parameters()] == [k for k, _, _ in tsv]


def _assert_loaded(model: EGEUNet, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k], v), k
    # spot checks through the module tree (not through state_dict names)
    assert torch.equal(model.GAB3.g2[1].weight, sd["GAB3.g2.1.weight"])
    assert torch.equal(model.encoder5[0].params_zx, sd["encoder5.0.params_zx"])
    assert torch.equal(model.dbn4.bias, sd["dbn4.bias"])
    assert torch.equal(model.encoder4[0].conv_zy[2].weight, sd["encoder4.0.conv_zy.2.weight"])
    assert torch.equal(model.decoder1[0].ldw[0].weight, sd["decoder1.0.ldw.0.weight"])
    assert torch.equal(model.GAB5.tail_conv[0].bias, sd["GAB5.tail_conv.0.bias"])
    assert torch.equal(model.gt_conv1[0].weight, sd["gt_conv1.0.weight"])
    assert torch.equal(model.final.weight, sd["final.weight"])


def test_plain_state_dict_loads_strictly_and_exports_back(official_sd) -> None:
    model = EGEUNet.from_official_state_dict(official_sd)
    _assert_loaded(model, official_sd)
    exported = export_official_state_dict(model)
    assert list(exported) == list(official_sd)
    for k in official_sd:
        assert torch.equal(exported[k], official_sd[k]), k
    out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.logits).all()


def test_latest_pth_wrapper_and_module_prefix(official_sd) -> None:
    latest = {
        "epoch": 300, "min_loss": 0.1, "min_epoch": 250, "loss": 0.12,
        "model_state_dict": official_sd,
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "scheduler_state_dict": {"last_epoch": 300},
    }
    _assert_loaded(EGEUNet.from_official_state_dict(latest), official_sd)
    prefixed = OrderedDict((f"module.{k}", v) for k, v in official_sd.items())
    _assert_loaded(EGEUNet.from_official_state_dict(prefixed), official_sd)
    _assert_loaded(EGEUNet.from_official_state_dict({"model_state_dict": prefixed}), official_sd)
    # through torch.save / torch.load, as a real best.pth
    buf = io.BytesIO()
    torch.save(official_sd, buf)
    buf.seek(0)
    _assert_loaded(EGEUNet.from_official_state_dict(torch.load(buf, weights_only=True)), official_sd)


def test_load_into_existing_model_keeps_parameter_objects(official_sd) -> None:
    model = EGEUNet()
    before = {n: p for n, p in model.named_parameters()}
    rep = load_official_state_dict(model, official_sd)
    assert rep.skipped == [] and rep.loaded == list(official_sd)
    assert all(p is before[n] for n, p in model.named_parameters())  # copied in place
    _assert_loaded(model, official_sd)


def _snapshot(model: EGEUNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", ["missing", "unexpected", "misshaped"])
def test_strict_load_fails_loudly_naming_the_key(official_sd, case: str) -> None:
    sd = OrderedDict(official_sd)
    if case == "missing":
        key = "GAB2.g1.0.bias"
        del sd[key]
    elif case == "unexpected":
        key = "GAB6.pre_project.weight"
        sd[key] = torch.zeros(3)
    else:
        key = "encoder6.0.params_xy"
        sd[key] = torch.zeros(1, 12, 8, 9)
    model = EGEUNet()
    before = _snapshot(model)
    with pytest.raises(OfficialCheckpointError, match=key.replace(".", r"\.")) as err:
        load_official_state_dict(model, sd)
    assert {"missing": "missing", "unexpected": "unexpected", "misshaped": "wrong shape"}[case] in str(err.value)
    if case == "misshaped":
        assert "1x12x8x9" in str(err.value) and "1x12x8x8" in str(err.value)
    assert isinstance(err.value, ValueError)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing copied on failure
    with pytest.raises(OfficialCheckpointError, match=key.replace(".", r"\.")):
        EGEUNet.from_official_state_dict(sd)


def test_non_tensor_entries_and_non_mappings_are_rejected(official_sd) -> None:
    sd = OrderedDict(official_sd)
    sd["final.bias"] = [0.0]
    with pytest.raises(OfficialCheckpointError, match="final.bias"):
        EGEUNet.from_official_state_dict(sd)
    with pytest.raises(OfficialCheckpointError):
        load_official_state_dict(EGEUNet(), [1, 2, 3])  # type: ignore[arg-type]


def test_variant_without_mask_loads_partially_and_reports_what_was_skipped(official_sd) -> None:
    cfg = EGEUNetConfig(gab_mask=False)
    with pytest.raises(OfficialCheckpointError, match="GAB"):
        EGEUNet.from_official_state_dict(official_sd, cfg)
    model = EGEUNet(cfg)
    init = _snapshot(model)
    rep = load_official_state_dict(model, official_sd, strict=False)
    mism = {m.split(":")[0] for m in rep.mismatched}
    # without the mask channel every GAB group LayerNorm/conv and both tail tensors change shape
    want = {f"GAB{k}.g{j}.{i}.{t}" for k in range(1, 6) for j in range(4) for i in (0, 1) for t in ("weight", "bias")}
    want |= {f"GAB{k}.tail_conv.{i}.{t}" for k in range(1, 6) for i in (0, 1) for t in ("weight", "bias")}
    want -= {f"GAB{k}.tail_conv.1.bias" for k in range(1, 6)}  # dim_xl entries: shape unchanged
    assert mism == want
    assert rep.missing == [] and rep.unexpected == []
    assert set(rep.skipped) == set(rep.mismatched)
    assert len(rep.loaded) + len(rep.mismatched) == 314
    own = model.state_dict()
    for k in rep.loaded:
        assert torch.equal(own[k], official_sd[k]), k
    for k in mism:
        assert torch.equal(own[k], init[k]), k  # skipped tensors keep their initialisation
    assert "GAB1.g0.1.weight: checkpoint 5x1x3x3 vs model 4x1x3x3" in rep.mismatched
    model(torch.randn(1, 3, 64, 64))


def test_variant_without_deep_supervision_reports_unexpected_heads(official_sd) -> None:
    model = EGEUNet.from_official_state_dict(official_sd, EGEUNetConfig(deep_supervision=False), strict=False)
    rep = load_official_state_dict(EGEUNet(deep_supervision=False), official_sd, strict=False)
    assert {f"gt_conv{k}.0.{t}" for k in range(1, 6) for t in ("weight", "bias")} <= set(rep.unexpected)
    assert rep.missing == []
    assert torch.equal(model.encoder1[0].weight, official_sd["encoder1.0.weight"])


def test_variant_with_extra_tensors_reports_missing(official_sd) -> None:
    model = EGEUNet(ghpa_branches=("xy", "zx", "zy", "dw") * 2)
    rep = load_official_state_dict(model, official_sd, strict=False)
    assert rep.missing and all(k in model.state_dict() for k in rep.missing)
    assert any(k.startswith("encoder4.0.params_xy") for k in rep.unexpected + rep.missing)
