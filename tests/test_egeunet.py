"""EGE-UNet: exact size facts (docs/models.md §1.7), ablation switches (§1.9), output contract, wiring (§1.3)."""

from __future__ import annotations

import copy
import random
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from egeunet import EGEUNet, EGEUNetConfig, SegOutput, expected_params, predict_proba, scaled_widths
from egeunet.layers import BRANCH_TYPES, GAB, GHPA, LayerNormCF, gab_params, ghpa_params
from zoo.registry import create_model, get_entry, list_models

REF_PARAMS = 53_374
REF_THOP_MACS = {224: 55_200_852, 256: 72_096_256, 512: 288_345_600}
REF_FLOPCOUNTER = 144_192_512
GAB_PARAMS = {1: 584, 2: 1_496, 3: 2_792, 4: 4_728, 5: 9_368}

# docs/models.md §1.7: module -> (params, legacy-thop MACs at 1x3x256x256)
MODULE_TABLE = {
    "encoder1": (224, 14_155_776), "encoder2": (1_168, 18_874_368), "encoder3": (3_480, 14_155_776),
    "encoder4": (1_952, 1_195_392), "encoder5": (3_184, 539_392), "encoder6": (5_728, 259_392),
    "decoder1": (6_832, 289_536), "decoder2": (4_160, 161_088), "decoder3": (2_392, 342_784),
    "decoder4": (3_472, 3_538_944), "decoder5": (1_160, 4_718_592),
    "GAB5": (9_368, 561_408), "GAB4": (4_728, 812_032), "GAB3": (2_792, 1_953_792),
    "GAB2": (1_496, 4_079_616), "GAB1": (584, 6_094_848),
    "gt_conv1": (49, 3_072), "gt_conv2": (33, 8_192), "gt_conv3": (25, 24_576), "gt_conv4": (17, 65_536),
    "gt_conv5": (9, 131_072), "final": (9, 131_072),
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def thop_profile(model: nn.Module, side: int, layer_info: bool = False) -> Any:
    x = torch.randn(1, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # thop's own use of distutils
        import thop

        return thop.profile(copy.deepcopy(model).eval(), inputs=(x,), verbose=False, ret_layer_info=layer_info)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref() -> EGEUNet:
    torch.manual_seed(0)
    return EGEUNet().eval()


# -- exact size facts ------------------------------------------------------------------------------
def test_reference_param_count(ref: EGEUNet) -> None:
    assert n_params(ref) == REF_PARAMS
    assert sum(p.numel() for p in ref.parameters() if p.requires_grad) == REF_PARAMS
    assert expected_params(EGEUNetConfig()) == REF_PARAMS
    assert list(ref.buffers()) == []


@pytest.mark.parametrize("side", sorted(REF_THOP_MACS))
def test_reference_legacy_thop_macs(ref: EGEUNet, side: int) -> None:
    macs, thop_params = thop_profile(ref, side)
    assert int(macs) == REF_THOP_MACS[side]
    assert int(thop_params) == 45_806  # thop's own (incomplete) parameter count, docs/protocol.md §6


def test_thop_does_not_touch_the_profiled_original(ref: EGEUNet) -> None:
    thop_profile(ref, 64)
    assert not any(n.endswith(("total_ops", "total_params")) for n, _ in ref.named_buffers())


def test_reference_flopcounter_total(ref: EGEUNet) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        ref(torch.randn(1, 3, 256, 256))
    assert counter.get_total_flops() == REF_FLOPCOUNTER == 2 * REF_THOP_MACS[256]


def test_per_module_params_and_thop_macs(ref: EGEUNet) -> None:
    _, _, info = thop_profile(ref, 256, layer_info=True)
    for name, (params, macs) in MODULE_TABLE.items():
        assert n_params(getattr(ref, name)) == params, name
        assert int(info[name][0]) == macs, name
    gn = [getattr(ref, f"{p}bn{k}") for p in "ed" for k in range(1, 6)]
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in gn)
    assert sum(n_params(m) for m in gn) == 512
    assert sum(params for params, _ in MODULE_TABLE.values()) + 512 == REF_PARAMS


def test_block_formulas() -> None:
    for (di, do), want in {(24, 32): 1_952, (32, 48): 3_184, (48, 64): 5_728, (64, 48): 6_832,
                           (48, 32): 4_160, (32, 24): 2_392}.items():
        assert ghpa_params(di, do) == n_params(GHPA(di, do)) == want
    for k, (dh, dl) in {1: (16, 8), 2: (24, 16), 3: (32, 24), 4: (48, 32), 5: (64, 48)}.items():
        assert gab_params(dh, dl) == n_params(GAB(dh, dl)) == GAB_PARAMS[k]
        # spec formula GAB(dh, dl) = dh*dl + 2*dl + (dl + 14) * (2*dl + n*m)
        assert gab_params(dh, dl, 4, False) == dh * dl + 2 * dl + (dl + 14) * (2 * dl)
    for branches in [("xy", "dw"), ("zx",) * 8, ("id", "zy", "xy", "dw"), ("dw",)]:
        assert ghpa_params(64, 48, branches) == n_params(GHPA(64, 48, branches)), branches


# -- ablation switches -----------------------------------------------------------------------------
def _loss(out: SegOutput, gen: torch.Generator) -> torch.Tensor:
    maps = (out.logits, *out.aux)
    return sum(((m * torch.randn(m.shape, generator=gen)).mean() for m in maps), torch.zeros(()))


def check_fwd_bwd(model: EGEUNet, shape: tuple[int, int, int, int]) -> SegOutput:
    """Forward + backward; every parameter gets a gradient; output follows the contract."""
    model.train()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    out = model(x)
    assert isinstance(out, SegOutput)
    b, _, h, w = shape
    assert out.logits.shape == (b, model.config.num_classes, h, w)
    n_aux = 5 if model.config.deep_supervision else 0
    assert len(out.aux) == n_aux
    assert all(a.shape == (b, 1, h, w) for a in out.aux)
    assert len(model.loss_weights) == 1 + n_aux
    _loss(out, gen).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"parameters without gradient: {dead}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    return out


CONV3 = lambda a, b: 9 * a * b + b  # noqa: E731

# (switches, exact parameter count) - docs/models.md §1.9
SWITCHES: dict[str, tuple[dict[str, Any], int]] = {
    "official": ({}, REF_PARAMS),
    "no_xy": ({"ghpa_branches": ("id", "zx", "zy", "dw")}, 48_016),
    "no_zx": ({"ghpa_branches": ("xy", "id", "zy", "dw")}, 51_860),
    "no_zy": ({"ghpa_branches": ("xy", "zx", "id", "dw")}, 51_860),
    "no_dw": ({"ghpa_branches": ("xy", "zx", "zy", "id")}, 51_984),
    "plain_conv": ({"use_ghpa": False}, 126_142),
    "bridge_off": ({"bridge": False}, 34_406),
    **{f"gab{k}_off": ({"gab_stages": tuple(j != k for j in range(1, 6))}, REF_PARAMS - GAB_PARAMS[k])
       for k in range(1, 6)},
    "gab_no_mask": ({"gab_mask": False}, 52_582),
    "no_ds": ({"deep_supervision": False}, 52_449),
    "unsupervised_heads": ({"deep_supervision": False, "unsupervised_heads": True}, REF_PARAMS),
    "dil_1111": ({"gab_dilations": (1, 1, 1, 1)}, REF_PARAMS),
    "dil_2468": ({"gab_dilations": (2, 4, 6, 8)}, REF_PARAMS),
    "dil_3579": ({"gab_dilations": (3, 5, 7, 9)}, REF_PARAMS),
    "ds_weights": ({"ds_weights": (1.0, 1.0, 1.0, 1.0, 1.0), "final_weight": 2.0}, REF_PARAMS),
    # derived with the spec's formulas (§1.4 per-branch counts, §1.5 GAB formula)
    "ghpa_g2": ({"ghpa_branches": ("xy", "dw")}, None),
    "ghpa_g8": ({"ghpa_branches": ("xy", "zx", "zy", "dw") * 2}, None),
    "ghpa_g1": ({"ghpa_branches": ("zy",)}, None),
    "ghpa_all_id": ({"ghpa_branches": ("id",) * 4}, None),
    "gab_g1": ({"gab_dilations": (1,)}, None),
    "gab_g2": ({"gab_dilations": (1, 3)}, None),
    "gab_g8": ({"gab_dilations": (1, 2, 3, 4, 5, 6, 7, 8)}, None),
    "widths_x0_5": ({"widths": scaled_widths(0.5)}, 17_546),
    "widths_x2": ({"widths": scaled_widths(2.0)}, 180_734),
    "one_channel_in": ({"in_channels": 1}, REF_PARAMS - 2 * 9 * 8),
    "two_classes": ({"num_classes": 2}, REF_PARAMS + 9),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_builds_runs_and_has_exact_size(name: str) -> None:
    switches, want = SWITCHES[name]
    torch.manual_seed(0)
    cfg = EGEUNetConfig(**switches)
    model = EGEUNet(cfg)
    if want is not None:
        assert n_params(model) == want
    assert n_params(model) == expected_params(cfg)
    check_fwd_bwd(model, (2, cfg.in_channels, 64, 64))
    check_fwd_bwd(model, (1, cfg.in_channels, 64, 96))  # non-square


def test_switch_deltas_are_exactly_the_part_sizes() -> None:
    ref = EGEUNet()
    ghpas = [m for m in ref.modules() if isinstance(m, GHPA)]
    assert len(ghpas) == 6
    per_branch = {"xy": lambda c: c * c + 75 * c, "zx": lambda c: c * c + 13 * c,
                  "zy": lambda c: c * c + 13 * c, "dw": lambda c: c * c + 11 * c}
    for i, branch in enumerate(("xy", "zx", "zy", "dw")):
        branches = tuple("id" if j == i else b for j, b in enumerate(("xy", "zx", "zy", "dw")))
        part = sum(per_branch[branch](g.chunk) for g in ghpas)
        assert REF_PARAMS - n_params(EGEUNet(ghpa_branches=branches)) == part
        # the removed part is exactly the parameters of that branch's modules/tensors in the tree
        in_tree = sum(p.numel() for g in ghpas for n, p in g.named_parameters()
                      if n.startswith((f"params_{branch}", f"conv_{branch}.", f"{branch}.")))
        assert in_tree == part
    for k in range(1, 6):
        off = EGEUNet(gab_stages=tuple(j != k for j in range(1, 6)))
        assert REF_PARAMS - n_params(off) == n_params(getattr(ref, f"GAB{k}")) == GAB_PARAMS[k]
        assert not hasattr(off, f"GAB{k}")
    assert REF_PARAMS - n_params(EGEUNet(bridge=False)) == sum(GAB_PARAMS.values())
    heads = sum(n_params(getattr(ref, f"gt_conv{k}")) for k in range(1, 6))
    assert heads == 49 + 33 + 25 + 17 + 9
    dl = (8, 16, 24, 32, 48)
    assert REF_PARAMS - n_params(EGEUNet(gab_mask=False)) == sum(4 * d + 56 for d in dl)
    assert REF_PARAMS - n_params(EGEUNet(deep_supervision=False)) == heads + sum(4 * d + 56 for d in dl)
    plain = EGEUNet(use_ghpa=False)
    pairs = ((24, 32), (32, 48), (48, 64), (64, 48), (48, 32), (32, 24))
    assert n_params(plain) - REF_PARAMS == sum(CONV3(a, b) - ghpa_params(a, b) for a, b in pairs)


def _random_config(rng: random.Random) -> EGEUNetConfig:
    widths = rng.choice([(8, 16, 24, 32, 48, 64), scaled_widths(0.5), scaled_widths(0.75)])
    n_options = [1, 2, 4, 8] if widths == (8, 16, 24, 32, 48, 64) else [1, 2, 4]
    branches = tuple(rng.choice(BRANCH_TYPES) for _ in range(rng.choice(n_options)))
    dilations = tuple(rng.randint(1, 7) for _ in range(rng.choice(n_options)))
    ds = rng.random() < 0.6
    gab_stages = tuple(rng.random() < 0.75 for _ in range(5))
    bridge = rng.random() < 0.85
    gab_mask = rng.random() < 0.7
    unsup = (not ds) and gab_mask and bridge and all(gab_stages) and rng.random() < 0.7
    return EGEUNetConfig(
        widths=widths, ghpa_branches=branches, use_ghpa=rng.random() < 0.8, bridge=bridge,
        gab_stages=gab_stages, gab_mask=gab_mask, gab_dilations=dilations, deep_supervision=ds,
        unsupervised_heads=unsup, ds_weights=tuple(round(rng.uniform(0, 1), 2) for _ in range(5)))


RANDOM_CONFIGS = [_random_config(random.Random(1000 + i)) for i in range(12)]


@pytest.mark.parametrize("cfg", RANDOM_CONFIGS, ids=[f"random{i}" for i in range(len(RANDOM_CONFIGS))])
def test_random_switch_combinations(cfg: EGEUNetConfig) -> None:
    torch.manual_seed(0)
    model = EGEUNet(cfg)
    assert n_params(model) == expected_params(cfg)
    check_fwd_bwd(model, (1, 3, 64, 96))
    want = (cfg.final_weight, *cfg.ds_weights) if cfg.deep_supervision else (cfg.final_weight,)
    assert model.loss_weights == want


def test_egeunet_registry_entries_match_their_modules() -> None:
    names = [n for n in list_models("egeunet*") if get_entry(n).family == "egeunet"]
    assert "egeunet" in names and len(names) >= 20
    for name in names:
        entry = get_entry(name)
        model = create_model(name)
        assert n_params(model) == entry.params == expected_params(model.config), name
        assert model.config == EGEUNetConfig(**entry.switches), name
    assert get_entry("egeunet").thop_macs == REF_THOP_MACS[256]


@pytest.mark.parametrize("kwargs,match", [
    ({"ghpa_branches": ("xy", "zx", "zy")}, "not divisible"),
    ({"ghpa_branches": ("xy", "zx", "zy", "hw")}, "unknown GHPA branch"),
    ({"ghpa_branches": ()}, "at least one branch"),
    ({"gab_dilations": (1, 2, 5)}, "not divisible"),
    ({"gab_dilations": ()}, "non-empty"),
    ({"gab_dilations": (1, 0, 2, 3)}, "positive"),
    ({"widths": (8, 16, 24, 32, 48)}, "6 stage widths"),
    ({"widths": (8, 16, 24, 32, 48, 66)}, "divisible by 4"),
    ({"gab_stages": (True, True, True, True)}, "5 booleans"),
    ({"ds_weights": (0.1, 0.2, 0.3, 0.4)}, "ds_weights"),
    ({"ds_weights": (0.1, 0.2, -0.3, 0.4, 0.5)}, "non-negative"),
    ({"unsupervised_heads": True}, "deep_supervision=False"),
    ({"deep_supervision": False, "unsupervised_heads": True, "gab_mask": False}, "gab_mask=True"),
    ({"deep_supervision": False, "unsupervised_heads": True, "bridge": False}, "GAB stages"),
    ({"deep_supervision": False, "unsupervised_heads": True, "gab_stages": (True, False, True, True, True)},
     "GAB stages"),
])
def test_bad_configs_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EGEUNet(EGEUNetConfig(**kwargs))


def test_input_sides_must_be_multiples_of_32(ref: EGEUNet) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        ref(torch.randn(1, 3, 64, 80))


def test_config_accepts_lists_and_round_trips() -> None:
    cfg = EGEUNetConfig(ghpa_branches=["xy", "dw"], gab_dilations=[1, 2], gab_stages=[True] * 5)
    assert cfg.ghpa_branches == ("xy", "dw") and cfg.gab_dilations == (1, 2)
    assert EGEUNetConfig(**cfg.to_dict()) == cfg
    assert EGEUNet(cfg, gab_mask=False).config == cfg.replace(gab_mask=False)


# -- output contract -------------------------------------------------------------------------------
def test_output_contract_default(ref: EGEUNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        out = ref(x)
        assert isinstance(out, SegOutput) and len(out.aux) == 5
        assert out.logits.shape == (2, 1, 64, 64) and all(a.shape == (2, 1, 64, 64) for a in out.aux)
    ref.eval()
    assert ref.loss_weights == (1.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    with torch.no_grad():
        out = ref(x)
        probs = torch.sigmoid(out.logits)
    # probabilities are sigmoid(logits): finite and in [0, 1]; strictly inside (0, 1) wherever float32
    # can represent it (at the official init |logits| reaches ~45 on random input, where sigmoid
    # rounds to exactly 1.0 in float32: losses must work on logits, not on saturated probabilities)
    assert bool(torch.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all())
    moderate = out.logits.abs() < 15
    assert bool(moderate.any())
    assert bool(((probs > 0) & (probs < 1))[moderate].all())
    assert torch.equal(predict_proba(ref, x), probs)
    # no sigmoid inside: the outputs are logits, not probabilities
    assert bool(out.logits.min() < 0 or out.logits.max() > 1) or any(bool(a.min() < 0) for a in out.aux)
    # no dropout/BN: train and eval give the same maps
    ref.train()
    with torch.no_grad():
        assert torch.equal(ref(x).logits, out.logits)
    ref.eval()


def test_output_contract_without_deep_supervision() -> None:
    for kw in ({"deep_supervision": False}, {"deep_supervision": False, "unsupervised_heads": True}):
        m = EGEUNet(**kw)
        out = m(torch.randn(1, 3, 64, 64))
        assert out.aux == () and m.loss_weights == (1.0,)
    m = EGEUNet(ds_weights=(0.5, 0.4, 0.3, 0.2, 0.1), final_weight=2.0)
    assert m.loss_weights == (2.0, 0.5, 0.4, 0.3, 0.2, 0.1)


# -- wiring (docs/models.md §1.3) ------------------------------------------------------------------
class Recorder:
    """Forward hooks recording each named module's inputs (positional) and output."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, Any] = {}
        self.handles = []
        for n in names:
            mod = model.get_submodule(n)
            self.handles.append(mod.register_forward_hook(self._hook(n)))

    def _hook(self, name: str):
        def hook(_m: nn.Module, args: tuple, out: Any) -> None:
            self.inputs[name] = args
            self.outputs[name] = out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def test_wiring_gab_inputs_masks_and_side_outputs(ref: EGEUNet) -> None:
    names = ([f"encoder{k}" for k in range(1, 7)] + [f"ebn{k}" for k in range(1, 6)] + [f"GAB{k}" for k in range(1, 6)]
             + [f"gt_conv{k}" for k in range(1, 6)] + [f"decoder{k}" for k in range(1, 6)]
             + [f"dbn{k}" for k in range(1, 6)] + ["final"])
    rec = Recorder(ref, names)
    h, w = 64, 96
    with torch.no_grad():
        out = ref(torch.randn(1, 3, h, w))
    rec.close()
    t = {k: F.gelu(F.max_pool2d(rec.outputs[f"ebn{k}"], 2, 2)) for k in range(1, 6)}
    t[6] = F.gelu(rec.outputs["encoder6"])
    for k in range(1, 6):
        xh, xl, mask = rec.inputs[f"GAB{k}"]
        # xh: GAB5 takes the raw t6, every other GAB the output of the deeper GAB
        assert torch.equal(xh, t[6] if k == 5 else rec.outputs[f"GAB{k + 1}"]), k
        assert torch.equal(xl, t[k]), k
        # mask = raw logits of head gt_conv{6-k}, at the stage's own resolution
        head = rec.outputs[f"gt_conv{6 - k}"]
        assert mask is head or torch.equal(mask, head)
        assert mask.shape == (1, 1, h >> k, w >> k)
    # decoder: GN before the x2 up-sampling (stages 2-5), none at stage 1
    for s in range(1, 6):
        dec_in = rec.inputs[f"decoder{s}"][0]
        assert rec.outputs[f"dbn{s}"].shape[-2:] == dec_in.shape[-2:]
    # side outputs: deepest head first, bilinearly up-sampled logits (no sigmoid)
    for i, aux in enumerate(out.aux):
        assert torch.allclose(aux, _bilinear(rec.outputs[f"gt_conv{i + 1}"], (h, w)))
    # skip fusion by addition: decoder-stage output = GELU(up2(GN(conv))) + GAB output
    o1 = rec.inputs["final"][0]
    d1 = F.gelu(_bilinear(rec.outputs["dbn5"], (h >> 1, w >> 1)))
    assert torch.allclose(o1, d1 + rec.outputs["GAB1"], atol=1e-6)
    assert torch.allclose(out.logits, _bilinear(rec.outputs["final"], (h, w)))


def test_wiring_with_a_gab_stage_off() -> None:
    torch.manual_seed(0)
    m = EGEUNet(gab_stages=(True, True, False, True, True)).eval()
    rec = Recorder(m, ["ebn3", "GAB2", "GAB4"])
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    rec.close()
    t3 = F.gelu(F.max_pool2d(rec.outputs["ebn3"], 2, 2))
    assert torch.equal(rec.inputs["GAB2"][0], t3)  # GAB3 off: GAB2 receives the raw t3 as xh


def test_wiring_without_mask_or_supervision() -> None:
    for kw in ({"gab_mask": False}, {"deep_supervision": False}):
        m = EGEUNet(**kw).eval()
        rec = Recorder(m, ["GAB1", "GAB5"])
        with torch.no_grad():
            m(torch.randn(1, 3, 64, 64))
        rec.close()
        for k in ("GAB1", "GAB5"):
            assert rec.inputs[k][2] is None
            assert not m.get_submodule(k).use_mask
    with_heads = EGEUNet(gab_mask=False)
    assert all(hasattr(with_heads, f"gt_conv{k}") for k in range(1, 6))
    no_ds = EGEUNet(deep_supervision=False)
    assert not any(hasattr(no_ds, f"gt_conv{k}") for k in range(1, 6))


def test_layernorm_channels_first_matches_definition() -> None:
    ln = LayerNormCF(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7)
    u = x.mean(1, keepdim=True)
    s = ((x - u) ** 2).mean(1, keepdim=True)
    want = (x - u) / torch.sqrt(s + 1e-6) * ln.weight[:, None, None] + ln.bias[:, None, None]
    assert torch.allclose(ln(x), want, atol=1e-6)
    ref_ln = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref_ln, atol=1e-5)


def test_initialisation_rules() -> None:
    m = EGEUNet()
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.GroupNorm, LayerNormCF)):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
        if isinstance(mod, nn.Conv2d):
            assert torch.all(mod.bias == 0), name
    for name, p in m.named_parameters():
        if ".params_" in name:
            assert torch.all(p == 1), name
