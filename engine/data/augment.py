"""Input scaling and training augmentation as batched tensor operations (CPU or GPU).

Order, as the official pipeline (docs/protocol.md §3): ``normalise`` first, then ``augment_batch``. Rotation fills
the corners with 0, which after normalisation is the image minimum (black), as in the official code; rotating the
uint8 image before normalising would change the min-max scaling of that image.

``normalise``: the official code subtracts a per-dataset mean and divides by a std (e.g. ISIC 2017 train
159.922 / 28.871) and then min-max scales each image over all its pixels and channels to [0, 255]. A positive
affine map is cancelled by min-max scaling, so the constants are no-ops (docs/protocol.md §3, measured
difference <= 6e-14): the network input is simply ``(x - min) / (max - min) * 255`` per image, as float32 in
[0, 255]. A constant image (max == min) gives zeros (the official code would divide by zero).

``augment_batch``: per sample, independently, horizontal flip (p 0.5), vertical flip (p 0.5), rotation (p 0.5)
about the image centre by an angle uniform in [0, 360) drawn per sample (``clean``), or, with
``paper_quirks=True``, by the one ``run_angle`` of the whole run (the official config draws a single angle at
import). Rotation is counter-clockwise for positive angles (as ``torchvision.transforms.functional.rotate``),
uses ``affine_grid``/``grid_sample`` with ``align_corners=False``, no expansion, fill 0, and **nearest**
interpolation for both image and mask (the official code uses nearest for both; masks stay binary;
``image_mode="bilinear"`` is available for the image). Random numbers come from ``generator`` (on its own device):
each call draws exactly 4 x B uniforms, whichever options are set, so both modes consume the stream identically.

Deviations from the official pipeline, documented: augmentation acts on the cached image already resized to the
training size (official: at source resolution, then resize); soft (bilinearly resized) mask targets are not
produced -- masks stay {0, 1}.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def _to_tensor(x, device=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        with warnings.catch_warnings():  # read-only cache maps: normalise never writes into its input
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    return x if device is None else x.to(device, non_blocking=True)


def normalise(images, *, channels_last: bool | None = None, device=None) -> torch.Tensor:
    """uint8 (or float) B x H x W x 3 or B x 3 x H x W -> float32 B x 3 x H x W, per-image min-max to [0, 255].

    The layout is inferred (last axis 3 -> channels last, else axis 1 must be 3); pass ``channels_last`` when
    both are 3. ``device`` moves the data before the arithmetic (e.g. uint8 to the GPU, then scale there).
    """
    x = _to_tensor(images, device)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"normalise expects a batch B x H x W x 3 or B x 3 x H x W, got shape {tuple(x.shape)}")
    if channels_last is None:
        last, first = x.shape[-1] == 3, x.shape[1] == 3
        if last and first:
            raise ValueError(f"ambiguous layout {tuple(x.shape)}: pass channels_last=True/False")
        if not (last or first):
            raise ValueError(f"normalise expects 3 channels, got shape {tuple(x.shape)}")
        channels_last = last
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    # min / max on the input dtype (exact for uint8 and float), one converting copy into the NCHW
    # result, then the same three float32 operations as (x - lo) / span * 255 in place: bit-identical
    # to the plain expression, with one full-size buffer instead of four
    lo = x.amin(dim=(1, 2, 3), keepdim=True).to(torch.float32)
    hi = x.amax(dim=(1, 2, 3), keepdim=True).to(torch.float32)
    span = hi - lo
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out.copy_(x)
    return out.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span))).mul_(255.0)


def draw_run_angle(generator: torch.Generator | None = None) -> float:
    """One angle uniform in [0, 360) for ``paper_quirks`` runs; record it with the run."""
    dev = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=dev).item() * 360.0)


def _rotation_theta(angles_deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B x 2 x 3 affine matrices (output -> input, normalised coordinates) for counter-clockwise rotation."""
    a = angles_deg * (math.pi / 180.0)
    c, s = torch.cos(a), torch.sin(a)
    z = torch.zeros_like(a)
    row0 = torch.stack([c, -s * (h / w), z], dim=-1)
    row1 = torch.stack([s * (w / h), c, z], dim=-1)
    return torch.stack([row0, row1], dim=1)


def rotate(x: torch.Tensor, angles_deg: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Rotate each image of a float batch B x C x H x W by its angle (degrees, counter-clockwise), fill 0."""
    b, _, h, w = x.shape
    theta = _rotation_theta(angles_deg.to(device=x.device, dtype=torch.float32), h, w)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="zeros", align_corners=False)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None,
                  paper_quirks: bool = False, run_angle: float | None = None, *, p_hflip: float = 0.5,
                  p_vflip: float = 0.5, p_rotate: float = 0.5, image_mode: str = "nearest"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Jointly flip/rotate a batch. images B x C x H x W (float, or uint8), masks B x H x W or B x 1 x H x W
    (any dtype); returns tensors with the input shapes and dtypes on the images' device. See the module notes."""
    if images.ndim != 4:
        raise ValueError(f"images must be B x C x H x W, got {tuple(images.shape)}")
    squeeze = masks.ndim == 3
    m = masks.unsqueeze(1) if squeeze else masks
    if m.ndim != 4 or m.shape[0] != images.shape[0] or m.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    if paper_quirks and run_angle is None:
        raise ValueError("paper_quirks=True needs run_angle (one angle for the whole run; see draw_run_angle)")
    b, dev = images.shape[0], images.device
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(4, b, generator=generator, device=gdev).to(dev)
    hflip, vflip, rot = u[0] < p_hflip, u[1] < p_vflip, u[2] < p_rotate
    angles = torch.full_like(u[3], float(run_angle)) if paper_quirks else u[3] * 360.0

    img_dtype, mask_dtype = images.dtype, m.dtype
    work = images.dtype if images.is_floating_point() else torch.float32
    c = images.shape[1]
    # image and mask channels travel together (one copy, one set of flips and one grid_sample)
    z = torch.cat([images.to(work), m.to(device=dev, dtype=work)], dim=1)
    # flips per image, both axes in one copy where both are drawn (exact: flips only move values)
    for i, (fh, fv) in enumerate(zip(hflip.tolist(), vflip.tolist())):
        if fh or fv:
            z[i] = z[i].flip((-2, -1) if fh and fv else (-1,) if fh else (-2,))
    idx = rot.nonzero().flatten()
    if idx.numel():
        if image_mode == "nearest":
            z[idx] = rotate(z[idx], angles[idx], "nearest")
        else:
            zi = z[idx]
            z[idx] = torch.cat([rotate(zi[:, :c], angles[idx], image_mode),
                                rotate(zi[:, c:], angles[idx], "nearest")], dim=1)
    x, y = z[:, :c], z[:, c:]
    if x.dtype != img_dtype:
        x = x.round().clamp(0, 255).to(img_dtype) if not img_dtype.is_floating_point else x.to(img_dtype)
    else:
        x = x.contiguous()
    y = y.to(mask_dtype) if mask_dtype.is_floating_point else y.round().to(mask_dtype)
    return x, (y.squeeze(1) if squeeze else y)
