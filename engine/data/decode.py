"""Decoding and resizing one image/mask pair, with the documented rules for irregular files.

Rules (each violation is a :class:`DataError` naming the file and what to do, or a :class:`DataWarning`):

* zero-byte, unreadable (permission), truncated or corrupt file: error.
* image modes: RGB as is; L, P, RGBA, CMYK, LA converted to RGB (alpha dropped); 16/32-bit or float images: error.
* mask and image must have the same size (width x height) at the source: **error** (never resized to fit: a size
  mismatch means a wrong pairing or a wrongly exported mask).
* masks become {0, 1}:

  - 8-bit grey (``L``) or 1-bit (``1``): values {0, 255} as is; values that are only {0, 1} are read as labels
    (1 = lesion); anything else is *non-binary*: thresholded at **>= 128** with a warning giving the count of
    non-binary pixels (pixels not 0 or 255).
  - RGB/RGBA/P/LA masks: converted when all colour channels are equal (alpha ignored), else error.
  - 16-bit masks (``I;16``/``I``): values up to 255 are read as 8-bit values; otherwise scaled by 255/65535
    (rounded) to 8 bit; then the 8-bit rules apply. Float masks (``F``): error.
* resize, once, to the training size (cache build): images **bilinear** (PIL ``Image.BILINEAR``, which
  low-pass filters when shrinking), masks **nearest** after thresholding, so they stay binary (the ``clean``
  protocol's rule; the official code resizes masks bilinearly into soft targets, which is not reproduced).
  Large JPEGs are decoded with PIL's DCT-domain ``draft`` reduction to no less than twice the target size first
  (speed; a no-op for the 256-pixel copies this project was developed on, docs/protocol.md §2.2).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, DataWarning

RESIZE_RULE = "image:PIL-bilinear(draft>=2x);mask:threshold128+nearest"


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except PermissionError:
        raise DataError(f"{path}: {what} file is not readable (permission denied); make it readable (chmod a+r) "
                        f"or remove the pair", path) from None
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file disappeared while reading; check the folder and run again",
                        path) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} file ({e.strerror or e}); check the disk or re-download it",
                        path) from None
    if not data:
        raise DataError(f"{path}: empty {what} file (0 bytes); re-download it or remove the pair", path)
    return data


def _open(path: Path, what: str, draft_to: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode; returns the image and its source size (w, h)."""
    data = _read_bytes(path, what)
    try:
        im = Image.open(io.BytesIO(data))
        src = im.size
        if draft_to is not None and im.format == "JPEG":
            im.draft("RGB", draft_to)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot decode {what} ({reason}); the file is truncated or corrupt: re-download "
                        f"it or remove the pair", path) from None
    return im, src


def image_to_rgb(im: Image.Image, path: Path) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("L", "P", "RGBA", "CMYK", "LA", "1", "YCbCr", "RGBX"):
        return im.convert("RGB")
    raise DataError(f"{path}: unsupported image mode {im.mode} (16-bit/float images are not supported); "
                    f"convert it to 8-bit RGB", path)


def mask_to_u8(im: Image.Image, path: Path) -> np.ndarray:
    """A mask image as an 8-bit grey array (before binarisation); see the module rules."""
    mode = im.mode
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise DataError(f"{path}: 32-bit mask with values outside 0..65535; save it as an 8-bit PNG", path)
        if a.max(initial=0) <= 255:
            return a.astype(np.uint8)
        return np.rint(a * (255.0 / 65535.0)).astype(np.uint8)
    if mode in ("RGB", "RGBA", "P", "LA", "PA"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path}: colour mask (mode {mode}, channels differ); save it as a single-channel "
                            f"8-bit PNG with 0 = background and 255 = lesion", path)
        return rgb[..., 0].copy()
    raise DataError(f"{path}: unsupported mask mode {mode}; save it as a single-channel 8-bit PNG", path)


def binarise(grey: np.ndarray) -> tuple[np.ndarray, int]:
    """8-bit mask -> {0,1} uint8 and the number of non-binary pixels (0 when the mask was clean)."""
    if grey.size == 0:
        return grey.astype(np.uint8), 0
    mx = int(grey.max())
    if mx <= 1:  # a label map {0, 1}
        return grey.astype(np.uint8), 0
    nonbin = int(np.count_nonzero((grey != 0) & (grey != 255)))
    return (grey >= 128).astype(np.uint8), nonbin


def read_image(path: str | os.PathLike, size_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to uint8 H x W x 3 (resized bilinear to ``size_hw`` if given) and its source (h, w)."""
    path = Path(path)
    draft = None if size_hw is None else (2 * size_hw[1], 2 * size_hw[0])
    im, (w, h) = _open(path, "image", draft)
    im = image_to_rgb(im, path)
    if size_hw is not None and im.size != (size_hw[1], size_hw[0]):
        im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8), (h, w)


def read_mask(path: str | os.PathLike, size_hw: tuple[int, int] | None = None,
              warn: bool = True) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode a mask to {0,1} uint8 H x W (nearest-resized after thresholding), its source (h, w) and the count
    of non-binary pixels. Emits a :class:`DataWarning` naming the file when the count is non-zero and ``warn``."""
    path = Path(path)
    im, (w, h) = _open(path, "mask")
    grey = mask_to_u8(im, path)
    m, nonbin = binarise(grey)
    if nonbin and warn:
        warnings.warn(f"{path}: mask is not binary ({nonbin} pixels not 0/255); thresholded at 128",
                      DataWarning, stacklevel=2)
    if size_hw is not None and m.shape != tuple(size_hw):
        m = np.asarray(Image.fromarray(m).resize((size_hw[1], size_hw[0]), Image.NEAREST), dtype=np.uint8)
    return m, (h, w), nonbin


def read_pair(image: Path, mask: Path, size_hw: tuple[int, int] | None = None,
              warn: bool = True) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """Decode one pair; error if the source sizes differ. Returns image, mask, source (h, w), non-binary count."""
    img, src_i = read_image(image, size_hw)
    msk, src_m, nonbin = read_mask(mask, size_hw, warn=warn)
    if src_i != src_m:
        raise DataError(f"{mask}: mask is {src_m[1]}x{src_m[0]} but its image {Path(image).name} is "
                        f"{src_i[1]}x{src_i[0]} (width x height); masks must have their image's size: re-export "
                        f"the mask or remove the pair", mask)
    return img, msk, src_i, nonbin
