"""normalise and augment_batch: batched, seeded, masks stay binary, image and mask move together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data import augment_batch, draw_run_angle, normalise
from engine.data.augment import rotate


def _batch(b=6, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    masks = (torch.rand(b, h, w, generator=g) > 0.5).to(torch.uint8)
    return imgs, masks


def test_normalise_minmax_per_image_both_layouts():
    imgs, _ = _batch()
    imgs[0] = 7  # constant image -> zeros, not NaN
    out = normalise(imgs)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert torch.all(out[0] == 0)
    for k in range(1, 6):
        assert out[k].min() == 0 and out[k].max() == 255
    ref = imgs[1].double()
    expected = ((ref - ref.min()) / (ref.max() - ref.min()) * 255).permute(2, 0, 1).float()
    torch.testing.assert_close(out[1], expected)
    torch.testing.assert_close(normalise(imgs.permute(0, 3, 1, 2)), out)
    torch.testing.assert_close(normalise(imgs.numpy()), out)


def test_normalise_cancels_mean_std_constants():
    imgs, _ = _batch()
    x = imgs.double()
    official = (x - 157.561) / 26.706  # isic18 train constants: a positive affine map
    torch.testing.assert_close(normalise(official.float()), normalise(imgs), atol=1e-3, rtol=0)


def test_normalise_ambiguous_layout():
    with pytest.raises(ValueError, match="channels_last"):
        normalise(torch.zeros(2, 3, 5, 3))
    assert normalise(torch.zeros(2, 3, 5, 3), channels_last=True).shape == (2, 3, 3, 5)


def test_rotate_90_matches_rot90_counter_clockwise():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    out = rotate(x, torch.tensor([90.0, 180.0]))
    np.testing.assert_array_equal(out[0, 0].numpy(), np.rot90(x[0, 0].numpy(), 1))
    np.testing.assert_array_equal(out[1, 0].numpy(), np.rot90(x[1, 0].numpy(), 2))


def test_rotate_non_square_keeps_shape_and_geometry():
    x = torch.zeros(1, 1, 32, 64)
    x[0, 0, 14:18, 20:44] = 1  # horizontal bar -> vertical after 90 degrees
    out = rotate(x, torch.tensor([90.0]))
    assert out.shape == x.shape
    ys, xs = torch.nonzero(out[0, 0], as_tuple=True)
    assert (ys.max() - ys.min()) > (xs.max() - xs.min())


def test_augment_is_seeded_joint_and_binary():
    imgs, masks = _batch(b=32, h=24, w=24)
    x = normalise(imgs)
    x[:, 0] = masks.float() * 255  # channel 0 mirrors the mask: it must move exactly like the mask
    a1, m1 = augment_batch(x, masks, torch.Generator().manual_seed(3))
    a2, m2 = augment_batch(x, masks, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    assert m1.dtype == torch.uint8 and m1.shape == masks.shape and set(m1.unique().tolist()) <= {0, 1}
    assert torch.equal(a1[:, 0], m1.float() * 255)
    changed = [not torch.equal(a1[k], x[k]) for k in range(32)]
    assert 20 < sum(changed) < 32  # P(no flip and no rotation) = 1/8


def test_rotation_angle_per_sample_vs_paper_quirks():
    b = 64
    x = torch.zeros(b, 1, 32, 32)
    x[:, :, 2:10, 12:20] = 1  # an off-centre square reveals the angle
    m = x[:, 0].clone()
    kw = dict(p_hflip=0.0, p_vflip=0.0, p_rotate=1.0)
    out, _ = augment_batch(x, m, torch.Generator().manual_seed(0), **kw)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 30  # clean: one angle per sample
    angle = draw_run_angle(torch.Generator().manual_seed(1))
    assert 0 <= angle < 360
    out_q, _ = augment_batch(x, m, torch.Generator().manual_seed(0), paper_quirks=True, run_angle=angle, **kw)
    assert all(torch.equal(o, out_q[0]) for o in out_q)  # paper: one angle for the whole run
    torch.testing.assert_close(out_q[:1], rotate(x[:1], torch.tensor([angle])))
    with pytest.raises(ValueError, match="run_angle"):
        augment_batch(x, m, torch.Generator(), paper_quirks=True)


def test_augment_uint8_and_4d_masks():
    imgs, masks = _batch()
    x8 = imgs.permute(0, 3, 1, 2).contiguous()
    out, m = augment_batch(x8, masks[:, None].float(), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and m.shape == (6, 1, 16, 16) and m.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_on_gpu_matches_cpu():
    imgs, masks = _batch(b=16)
    x = normalise(imgs)
    cpu = augment_batch(x, masks, torch.Generator().manual_seed(5))
    gpu = augment_batch(x.cuda(), masks.cuda(), torch.Generator().manual_seed(5))
    assert gpu[0].device.type == "cuda"
    # same random draws; nearest sampling may differ at the odd exact half-pixel between devices
    assert (gpu[0].cpu() == cpu[0]).float().mean() > 0.995
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.995
    g = torch.Generator(device="cuda").manual_seed(5)
    xg, mg = augment_batch(normalise(imgs.numpy(), device="cuda"), masks.cuda(), g)
    assert set(mg.unique().tolist()) <= {0, 1}


def test_normalise_is_bit_identical_to_the_plain_expression():
    """normalise works in place for speed; its numbers are exactly (x - lo) / span * 255 in float32."""
    import numpy as np

    def plain(x):
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        span = hi - lo
        return (x - lo) / torch.where(span > 0, span, torch.ones_like(span)) * 255.0

    g = np.random.default_rng(3)
    a = g.integers(10, 240, (4, 64, 48, 3), dtype=np.uint8)
    a[1] = 7  # a constant image: span 0
    assert torch.equal(normalise(a), plain(torch.from_numpy(a)))
    f = torch.from_numpy(g.random((3, 32, 32, 3)).astype(np.float32) * 300 - 20)
    assert torch.equal(normalise(f), plain(f))
    assert normalise(a).is_contiguous()


def test_per_image_flips_equal_the_batched_formulation():
    """augment_batch flips image by image (fast); the numbers are those of the batched index/flip form."""
    import numpy as np

    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = normalise(rng.integers(0, 255, (8, 32, 24, 3), dtype=np.uint8))
        y = torch.from_numpy(rng.integers(0, 2, (8, 32, 24), dtype=np.uint8))
        got_x, got_y = augment_batch(x, y, torch.Generator().manual_seed(seed), p_rotate=0.0)
        u = torch.rand(4, 8, generator=torch.Generator().manual_seed(seed))  # the draws augment_batch makes
        z = torch.cat([x, y.unsqueeze(1).float()], dim=1)
        for flag, dim in ((u[0] < 0.5, -1), (u[1] < 0.5, -2)):
            idx = flag.nonzero().flatten()
            if idx.numel():
                z[idx] = z[idx].flip(dim)
        assert torch.equal(got_x, z[:, :3]) and torch.equal(got_y, z[:, 3].round().to(torch.uint8))
