"""The built-in ``synthetic`` dataset: procedural dermoscopy-like images with binary lesion masks.

For smoke tests, CPU budgets and machines without the ISIC data. Results on it are flagged
(``SegArrays.synthetic = True``) and must never be reported as skin-lesion results.

Each sample is a pure function of ``(seed, split, index, size)``: sample ``i`` draws from
``numpy.random.default_rng([seed, split_code, i])`` (train 1, val 2, test 3), so a split of ``n`` images is a
prefix of a split of ``n + k`` images, any size works, and two calls give identical arrays.

A sample: skin-tone background (one of a range of tones) with low-frequency shading, pixel noise and, for half the
samples, a dark circular dermoscope vignette; 1 lesion (70 %), 2 (25 %) or 3 (5 %): darker brown blobs with an
irregular border (radius modulated by harmonics 2..7 of the angle, random ellipticity and orientation), internal
texture and a darker core, blended with a soft rim; 0..6 hair-like dark curves (quadratic Bezier strokes) drawn
over everything. The mask is the union of the lesion shapes (hair does not change it).
Default sizes: train 64, val 16, test 32 (``DEFAULT_COUNTS``), overridable with ``n``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

#: bump when the generator draws different images for the same (seed, split, index, size)
GENERATOR_VERSION = 1
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
DEFAULT_COUNTS = {"train": 64, "val": 16, "test": 32}


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a (cells+1)^2 random grid resized bilinearly."""
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)


def make_sample(seed: int, split: str, index: int, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (image uint8 H x W x 3, mask uint8 H x W in {0,1})."""
    h, w = size_hw
    rng = np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])
    v, u = np.meshgrid(((np.arange(h) + 0.5) / h * 2 - 1).astype(np.float32),
                       ((np.arange(w) + 0.5) / w * 2 - 1).astype(np.float32), indexing="ij")

    base = np.array([rng.uniform(195, 240), rng.uniform(145, 195), rng.uniform(120, 170)], dtype=np.float32)
    shade = 1 + 0.07 * _smooth(rng, h, w, 4)
    img = base[None, None, :] * shade[..., None]
    img += rng.normal(0, 4, size=(h, w, 3)).astype(np.float32)

    n_lesions = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
    mask = np.zeros((h, w), dtype=bool)
    for k in range(n_lesions):
        cx, cy = rng.uniform(-0.4, 0.4, size=2)
        r0 = rng.uniform(0.22, 0.6) if k == 0 else rng.uniform(0.08, 0.22)
        rot, ecc = rng.uniform(0, np.pi), rng.uniform(0.6, 1.0)
        amps = [rng.uniform(0, 0.22 / harm ** 0.8) for harm in range(2, 8)]
        phases = rng.uniform(0, 2 * np.pi, size=6)
        red = rng.uniform(75, 160)
        colour = np.array([red, red * rng.uniform(0.45, 0.7), 0.0], dtype=np.float32)
        colour[2] = colour[1] * rng.uniform(0.6, 0.95)
        texture = 1 + 0.25 * _smooth(rng, h, w, 12)
        rim = max(0.01, rng.uniform(0.01, 0.05) * r0 / 0.3)
        # only the lesion's bounding box is computed
        reach = r0 * (1 + sum(amps)) / ecc + 2.0 / min(h, w)
        y0, y1 = np.searchsorted(v[:, 0], [cy - reach, cy + reach])
        x0, x1 = np.searchsorted(u[0], [cx - reach, cx + reach])
        if y1 <= y0 or x1 <= x0:
            continue
        du, dv = u[y0:y1, x0:x1] - cx, v[y0:y1, x0:x1] - cy
        a = du * np.cos(rot) + dv * np.sin(rot)
        b = (-du * np.sin(rot) + dv * np.cos(rot)) / ecc
        d = np.sqrt(a * a + b * b)
        theta = np.arctan2(b, a)
        rad = np.ones_like(d)
        for harm, amp, ph in zip(range(2, 8), amps, phases):
            rad += amp * np.cos(harm * theta + ph)
        rad *= r0
        core = 0.7 + 0.3 * np.clip(d / np.maximum(rad, 1e-6), 0, 1)
        lesion = colour[None, None, :] * (texture[y0:y1, x0:x1] * core)[..., None]
        alpha = (np.clip((rad - d) / rim, 0, 1) ** 0.7)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + lesion * alpha
        mask[y0:y1, x0:x1] |= d < rad

    if rng.random() < 0.5:
        r = np.sqrt(u * u + v * v)
        r_edge = rng.uniform(0.95, 1.25)
        dark = np.clip((r - r_edge) / 0.12, 0, 1)
        img *= (1 - 0.9 * dark[..., None])

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    n_hair = int(rng.integers(0, 7))
    width = max(1, round(min(h, w) / 200))
    for _ in range(n_hair):
        p0, p1, p2 = rng.uniform(-0.1, 1.1, size=(3, 2)) * np.array([w, h])
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        shade_h = int(rng.uniform(15, 60))
        draw.line([tuple(p) for p in pts], fill=(shade_h, shade_h - 5 if shade_h > 5 else 0, 0), width=width)
    out = np.asarray(pil, dtype=np.uint8)

    if not mask.any():  # tiny sizes: keep at least the lesion centre
        cyi = min(h - 1, max(0, int((cy + 1) / 2 * h)))
        cxi = min(w - 1, max(0, int((cx + 1) / 2 * w)))
        mask[cyi, cxi] = True
    return out, mask.astype(np.uint8)


def make_split(split: str, n: int | None = None, size_hw: tuple[int, int] = (256, 256),
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``n`` synthetic samples (default ``DEFAULT_COUNTS[split]``): images N x H x W x 3, masks, ids."""
    if split not in SPLIT_CODES:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_CODES)}, not {split!r}")
    n = DEFAULT_COUNTS[split] if n is None else int(n)
    h, w = size_hw
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    masks = np.empty((n, h, w), dtype=np.uint8)
    for i in range(n):
        images[i], masks[i] = make_sample(seed, split, i, size_hw)
    ids = tuple(f"SYN_{split}_{seed}_{i:05d}" for i in range(n))
    return images, masks, ids
