"""Baseline-specific checks: part-wise parameter counts from docs/models.md, the MALUNet weight tie,
TransFuse heads, and the legacy-thop counts measured on these rebuilds.

Exact numbers quoted by the spec are asserted exactly. Kept light (small inputs, one thread).
"""

from __future__ import annotations

import copy
import io
import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import baselines  # noqa: F401  (registration)
from baselines.malunet import IEA, MALUNet, malunet_part_params
from baselines.transfuse import TransFuse, TransFuseConfig, transfuse_part_params
from baselines.unet import UNet32, unet32_part_params
from baselines.unext import UNeXt, UNeXtConfig, shift_tokens, unext_part_params
from zoo.contract import predict_proba
from zoo.registry import create_model, get_entry


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def thop_macs(model: torch.nn.Module, h: int = 256, w: int = 256) -> int:
    thop = pytest.importorskip("thop")
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = thop.profile(model.eval(), inputs=(torch.rand(1, 3, h, w),), verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    return int(macs)


# -- legacy thop counts ---------------------------------------------------------------------------
# Measured on these rebuilds with thop==0.1.1.post2209072238 at 1x3x256x256; each rounds to the
# spec figure (docs/models.md §0.1 / §5): pinned exactly so that any change of layer types (e.g. a
# functional call replacing a module thop counts) is caught.
MEASURED_THOP = {
    "unet32": 13_745_782_784,  # spec 13.746 G (incl. the x4 ConvTranspose over-count)
    "unext": 573_022_208,  # spec 0.5730 G
    "unext_s": 103_833_600,  # spec 0.1038 G
    "malunet": 82_972_800,  # spec 0.0830 G
    "malunet_single": 82_972_800,
    "transfuse_s": 11_528_203_776,  # spec 11.528 G
    "transfuse_lite": 326_323_200,  # spec 0.326 G
    "transfuse_lite_t": 90_683_776,  # spec 0.091 G
}


@pytest.mark.parametrize("name", sorted(MEASURED_THOP))
def test_thop_counts_pinned(name: str) -> None:
    assert thop_macs(create_model(name)) == MEASURED_THOP[name]


def test_registry_metadata() -> None:
    for name in MEASURED_THOP:
        e = get_entry(name)
        assert e.thop_macs is not None and 0 < e.macs_rel_tol <= 0.01
        assert e.heavy == (name == "transfuse_s")
    assert get_entry("unet32").min_side == 16
    assert {get_entry(n).min_side for n in ("unext", "unext_s", "malunet", "malunet_single")} == {32}
    assert {get_entry(n).min_side for n in ("transfuse_s", "transfuse_lite", "transfuse_lite_t")} == {16}
    assert get_entry("malunet").switches == {"tie": "alias"}
    assert get_entry("malunet_single").switches == {"tie": "single"}
    assert "DEVIATION" in get_entry("malunet_single").description


# -- UNet-32 ----------------------------------------------------------------------------------------
def test_unet32_parts_match_spec() -> None:
    spec = {"inc": 10_208, "down1": 55_552, "down2": 221_696, "down3": 885_760, "down4": 3_540_992,
            "up1": 2_295_040, "up2": 574_080, "up3": 143_680, "up4": 36_000, "outc": 33}
    model = UNet32()
    assert {k: n_params(getattr(model, k)) for k in spec} == spec
    assert unet32_part_params() == spec
    assert sum(spec.values()) == 7_763_041
    # the milesial default width (64) and the bias-free 3x3 convs
    assert sum(unet32_part_params(base=64).values()) == 31_037_633
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))


def test_unet32_transposed_conv_overcount() -> None:
    """thop counts each ConvTranspose2d at stride^2 = 4x its true MACs (docs/models.md §2.3)."""
    thop = pytest.importorskip("thop")
    model = UNet32()
    true_total, thop_total = 0, 0
    for k, side in zip(range(1, 5), (16, 32, 64, 128)):
        up = getattr(model, f"up{k}").up
        # true MACs: every input pixel meets k*k = 4 weights per (in, out) channel pair
        true = up.in_channels * up.out_channels * 4 * side * side
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counted, _ = thop.profile(torch.nn.Sequential(up), inputs=(torch.rand(1, up.in_channels, side, side),),
                                      verbose=False)
        assert int(counted) == 4 * true
        true_total += true
        thop_total += int(counted)
    assert true_total == 4 * 134_217_728
    assert thop_total == 2_147_483_648


# -- UNeXt -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, spec", [
    (UNeXtConfig(), {"encoder_convs": 42_080, "encoder_bn": 352, "patch_embeds": 554_208,
                     "shifted_blocks": 276_096, "token_layernorms": 1_408, "decoder_convs": 597_088,
                     "decoder_bn": 672, "final": 17}),
    (UNeXtConfig.small(), {"encoder_convs": 6_032, "encoder_bn": 112, "patch_embeds": 92_736,
                           "shifted_blocks": 55_232, "token_layernorms": 576, "decoder_convs": 98_624,
                           "decoder_bn": 240, "final": 9}),
])
def test_unext_parts_match_spec(cfg: UNeXtConfig, spec: dict[str, int]) -> None:
    assert unext_part_params(cfg) == spec
    m = UNeXt(cfg)
    measured = {
        "encoder_convs": n_params(m.encoder1) + n_params(m.encoder2) + n_params(m.encoder3),
        "encoder_bn": n_params(m.ebn1) + n_params(m.ebn2) + n_params(m.ebn3),
        "patch_embeds": n_params(m.patch_embed3) + n_params(m.patch_embed4),
        "shifted_blocks": sum(n_params(b) for b in (m.block1, m.block2, m.dblock1, m.dblock2)),
        "token_layernorms": sum(n_params(b) for b in (m.norm3, m.norm4, m.dnorm3, m.dnorm4)),
        "decoder_convs": sum(n_params(getattr(m, f"decoder{i}")) for i in range(1, 6)),
        "decoder_bn": sum(n_params(getattr(m, f"dbn{i}")) for i in range(1, 5)),
        "final": n_params(m.final),
    }
    assert measured == spec


def test_unext_shift_is_zero_filled_chunk_roll() -> None:
    c, h, w = 7, 4, 5  # chunks of 2, 2, 2, 1 channels (torch.chunk): shifts -2, -1, 0, +1
    x = torch.arange(1, c * h * w + 1, dtype=torch.float32).reshape(1, c, h, w)
    tokens = x.flatten(2).transpose(1, 2)
    out = shift_tokens(tokens, h, w, axis=2).transpose(1, 2).reshape(1, c, h, w)
    shifts = [-2, -2, -1, -1, 0, 0, 1]
    for ch, s in enumerate(shifts):
        expected = torch.zeros(h, w)
        for i in range(h):
            if 0 <= i - s < h:
                expected[i] = x[0, ch, i - s]
        assert torch.equal(out[0, ch], expected), ch


# -- MALUNet -----------------------------------------------------------------------------------------
def _tied(model: MALUNet) -> bool:
    """Every 4C -> C weight is exactly the transpose of its C -> 4C weight (trivially so in single mode)."""
    return all(b.is_tied() and (b.tie == "single" or torch.equal(b.reduce.weight, b.expand.weight.permute(1, 0, 2)))
               for b in model.iea_blocks())


def test_malunet_parts_match_spec() -> None:
    m = MALUNet()
    enc = {k: tuple(n_params(s) for s in getattr(m, k)) for k in ("encoder4", "encoder5", "encoder6")}
    dec = {k: tuple(n_params(s) for s in getattr(m, k)) for k in ("decoder1", "decoder2", "decoder3")}
    assert enc == {"encoder4": (5_832, 4_936), "encoder5": (10_336, 8_384), "encoder6": (23_184, 16_400)}
    assert dec == {"decoder1": (22_816, 23_184), "decoder2": (13_264, 10_336), "decoder3": (6_800, 5_832)}
    assert sum(n_params(getattr(m, f"encoder{i}")) for i in (1, 2, 3)) == 4_872
    assert n_params(m.decoder4) + n_params(m.decoder5) == 4_632
    assert n_params(m.ebn) + n_params(m.dbn) == 512
    assert n_params(m.bridge.sab) == 99 and n_params(m.bridge.cab) == 16_515
    assert n_params(m.final) == 9
    assert sum(malunet_part_params().values()) == 177_943
    assert sum(malunet_part_params(tie="single").values()) == 146_711
    # unique values: the duplicated half of the six pairs is 31,232
    unique = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() // 4 for p in m.parameters()}
    assert sum(unique.values()) == 146_711
    assert 177_943 - 146_711 == 4 * (24**2 + 32**2 + 48**2 + 48**2 + 32**2 + 24**2) == 31_232
    # thop misses the GroupNorm parameters (175,031 "params"), a documented counter artefact
    gn = sum(n_params(x) for x in m.modules() if isinstance(x, torch.nn.GroupNorm))
    assert 177_943 - gn == 175_031


def test_malunet_alias_tie_at_init() -> None:
    torch.manual_seed(0)
    m = MALUNet()
    assert _tied(m)
    for b in m.iea_blocks():
        w0, w1 = b.expand.weight, b.reduce.weight
        assert w0 is not w1 and w1.untyped_storage().data_ptr() == w0.untyped_storage().data_ptr()
        # both layers are initialised in place on the shared memory: the later (4C -> C,
        # std sqrt(2/C)) wins over the earlier (std sqrt(2/(4C)), half as large)
        c = b.reduce.out_channels
        assert abs(w0.std().item() / math.sqrt(2.0 / c) - 1.0) < 0.15


def test_malunet_tie_survives_optimiser_step_and_two_updates_per_step() -> None:
    lr = 1e-3
    results = {}
    for tie in ("alias", "single"):
        torch.manual_seed(0)
        m = MALUNet(tie=tie)
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
        before = [b.expand.weight.detach().clone() for b in m.iea_blocks()]
        m(torch.rand(2, 3, 64, 64)).logits.mean().backward()
        opt.step()
        assert _tied(m)
        # Adam's first step moves each parameter by ~lr; the alias pair gets two such updates
        results[tie] = max((b.expand.weight.detach() - w).abs().max().item()
                           for b, w in zip(m.iea_blocks(), before))
    assert results["alias"] == pytest.approx(2 * lr, rel=0.01)
    assert results["single"] == pytest.approx(lr, rel=0.01)


def test_malunet_tie_survives_load_state_dict_copy_and_moves() -> None:
    torch.manual_seed(0)
    src = MALUNet()
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    src(torch.rand(1, 3, 64, 64)).logits.mean().backward()
    opt.step()
    state = src.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded_state = torch.load(buf)
    for kwargs in ({}, {"assign": True}):
        torch.manual_seed(1)
        dst = MALUNet()
        dst.load_state_dict(copy.deepcopy(loaded_state), **kwargs)
        assert _tied(dst), kwargs
        assert n_params(dst) == 177_943
        for a, b in zip(src.iea_blocks(), dst.iea_blocks()):
            assert torch.equal(a.expand.weight, b.expand.weight)
        # and the tie keeps holding through training after the load
        opt2 = torch.optim.AdamW(dst.parameters(), lr=1e-3)
        dst(torch.rand(1, 3, 64, 64)).logits.mean().backward()
        opt2.step()
        assert _tied(dst), kwargs
    assert _tied(copy.deepcopy(src))
    params_before = [id(p) for p in src.parameters()]
    src.double()  # a dtype move converts each parameter separately; the blocks re-tie
    assert _tied(src) and src.iea_blocks()[0].reduce.weight.dtype == torch.float64
    assert [id(p) for p in src.parameters()] == params_before  # optimisers keep valid references


def test_malunet_single_mode_is_the_same_function() -> None:
    torch.manual_seed(0)
    alias = MALUNet().eval()
    single = MALUNet(tie="single").eval()
    assert n_params(single) == 146_711
    single.load_state_dict(alias.state_dict(), strict=True)  # the redundant 4C -> C entries are dropped
    assert len(single.state_dict()) == len(alias.state_dict()) - 6
    back = MALUNet()
    back.load_state_dict(single.state_dict(), strict=True)  # alias mode derives them again
    assert _tied(back)
    assert all(torch.equal(a.reduce.weight, b.reduce.weight) for a, b in zip(alias.iea_blocks(), back.iea_blocks()))
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(alias(x).logits, single(x).logits, atol=1e-5)
    # one parameter receives the summed gradient of both uses
    single.train()
    single(x).logits.mean().backward()
    assert all(b.expand.weight.grad is not None for b in single.iea_blocks())
    assert all(not hasattr(b.reduce, "weight") for b in single.iea_blocks())
    copy.deepcopy(single)  # no graph-holding tensor left on the module


def test_malunet_returns_logits() -> None:
    torch.manual_seed(0)
    m = MALUNet().eval()
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        out = m(x)
    assert m.loss_weights == (1.0,) and out.aux == ()
    assert torch.equal(predict_proba(m, x), torch.sigmoid(out.logits))


def test_iea_rejects_unknown_tie() -> None:
    with pytest.raises(ValueError):
        IEA(8, tie="shared")


# -- TransFuse -----------------------------------------------------------------------------------------
def _transfuse_measured(m: TransFuse) -> dict[str, int]:
    return {
        "cnn": n_params(m.cnn),
        "vit": n_params(m.transformer),
        "token_up": n_params(m.up1) + n_params(m.up2),
        "bifusion": n_params(m.fuse0) + n_params(m.fuse1) + n_params(m.fuse2),
        "decoder": n_params(m.dec1) + n_params(m.dec2),
        "heads": n_params(m.head_x) + n_params(m.head_t) + n_params(m.head_f),
    }


@pytest.mark.parametrize("cfg, spec, fusions", [
    (TransFuseConfig.lite(), {"cnn": 77_392, "vit": 132_672, "token_up": 37_552, "bifusion": 104_396,
                              "decoder": 54_534, "heads": 8_563}, (78_260, 20_500, 5_636)),
    (TransFuseConfig.lite_t(), {"cnn": 19_624, "vit": 49_952, "token_up": 9_496, "bifusion": 26_924,
                                "decoder": 13_830, "heads": 2_299}, (19_980, 5_372, 1_572)),
])
def test_transfuse_lite_parts_match_spec(cfg: TransFuseConfig, spec: dict[str, int],
                                         fusions: tuple[int, int, int]) -> None:
    m = TransFuse(cfg)
    assert _transfuse_measured(m) == spec
    assert transfuse_part_params(cfg) == spec
    assert (n_params(m.fuse0), n_params(m.fuse1), n_params(m.fuse2)) == fusions


def test_transfuse_lite_vit_breakdown() -> None:
    vit = TransFuse(TransFuseConfig.lite()).transformer
    assert (n_params(vit.patch_embed), vit.pos_embed.numel(), n_params(vit.blocks), n_params(vit.norm)) == (
        49_216, 16_384, 66_944, 128)
    assert vit.norm.eps == 1e-6 and vit.cls_token is None


def test_transfuse_heads_and_weights() -> None:
    torch.manual_seed(0)
    m = create_model("transfuse_lite_t").eval()
    assert m.loss_weights == (0.5, 0.3, 0.2)
    x = torch.rand(2, 3, 64, 96) * 255
    with torch.no_grad():
        out = m(x)
        # logits = fused-1/4 head, aux = (transformer head, fused-1/16 head)
        feats = m.transformer(x)
        t2 = m.up2(m.up1(feats))
        head_t = F.interpolate(m.head_t(t2), size=(64, 96), mode="bilinear", align_corners=True)
    assert len(out.aux) == 2
    assert torch.allclose(out.aux[0], head_t, atol=1e-5)
    assert not torch.allclose(out.logits, out.aux[0]) and not torch.allclose(out.logits, out.aux[1])


def test_transfuse_position_embedding_resize() -> None:
    vit = TransFuse(TransFuseConfig.lite_t()).transformer
    assert vit.position_embedding(16, 16) is vit.pos_embed  # 256 x 256: stored 16 x 16 grid, no resize
    pe = vit.position_embedding(4, 6)
    assert tuple(pe.shape) == (1, 24, 32)
    grid = vit.pos_embed.detach().transpose(1, 2).reshape(1, 32, 16, 16)
    assert torch.equal(pe[0, 0], grid[0, :, 0, 0]) and torch.equal(pe[0, -1], grid[0, :, -1, -1])  # corners kept


def test_transfuse_s_facts() -> None:
    cfg = TransFuseConfig.small()
    spec_total = 26_273_301
    parts = transfuse_part_params(cfg)
    assert sum(parts.values()) == spec_total
    # the original's native 192 x 256 input (12 x 16 grid) gives 26,248,725 (docs/models.md §5.1)
    assert sum(transfuse_part_params(cfg.replace(grid=(12, 16))).values()) == 26_248_725
    m = create_model("transfuse_s")
    assert _transfuse_measured(m) == parts
    assert m.transformer.pos_embed.shape == (1, 256, 384) and len(m.transformer.blocks) == 8
    assert [len(getattr(m.cnn, f"layer{i}")) for i in (1, 2, 3)] == [3, 4, 6]  # ResNet-34 trunk
    assert m.unused_parameters == ("transformer.cls_token",)
    assert (m.fuse0.fc1.out_channels, m.fuse1.fc1.out_channels, m.fuse2.fc1.out_channels) == (96, 64, 64)
