"""Pixels as files store them → the arrays the steps see: channels, colour, bit depth and scale.

A leaf module: every reader (whole images, tiles of huge TIFFs, slabs of volumes) converts what it
decoded here, so that the three give the same values for the same pixels.

Colour (``input.color`` with ``input.alpha``):

* ``gray`` — ITU-R BT.601 luma, ``0.299·R + 0.587·G + 0.114·B`` on the values' own scale, alpha dropped;
* ``keep`` — every channel as stored (gray files have 1, RGBA 4), axes (c, y, x); ``opaque`` is
  ``keep`` with the alpha channel left out (``alpha: drop``);
* ``rgb`` — 3 channels whatever the file holds (a gray image is replicated into R, G and B), so
  gray and colour photographs share a collection; ``rgba`` (``alpha: keep``) adds an alpha channel,
  fully opaque (the type's maximum) for files that have none.

Bit depth: a collection has one. ``input.scale: native`` keeps values on their own scale (0-255,
0-65535), ``unit`` divides each image by its type's maximum (0-1), so that 8- and 16-bit files
can share a collection.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from pipeline.errors import DepthMismatch

# ITU-R BT.601 luma weights, applied to the values on their own scale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
Color = Literal["gray", "keep", "opaque", "rgb", "rgba"]
Scale = Literal["native", "unit"]
# Where color: gray comes from in a JPEG: the luma plane it stores (libjpeg decodes no chroma), or
# its pixels decoded to RGB and mixed with LUMA_WEIGHTS (as every store before the choice).
GrayFrom = Literal["luma", "rgb"]
ALPHA_CHANNELS = (2, 4)  # gray + alpha, RGBA


def color_mode(color: str, alpha: str | None) -> Color:
    """``input.color`` and ``input.alpha`` as one mode; alpha defaults to keep for keep, drop for rgb."""
    if color == "keep":
        return "opaque" if alpha == "drop" else "keep"
    if color == "rgb":
        return "rgba" if alpha == "keep" else "rgb"
    return "gray"


def channels_after(color: Color, stored: int) -> int:
    """How many channels an image stored with ``stored`` channels (1 for a 2-D image) has after conversion."""
    if color == "gray":
        return 1
    if color == "rgb":
        return 3
    if color == "rgba":
        return 4
    return stored - (color == "opaque" and stored in ALPHA_CHANNELS)


def full_scale(dtype: np.dtype) -> float:
    """The largest value of an integer type (1 for bool): what ``scale: unit`` divides by; 1 for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def value_range(dtype: np.dtype, scale: Scale = "native") -> tuple[float, float]:
    """The values pixels of ``dtype`` can take once read: the type's range, or [0, 1] with ``unit``.

    Floating-point files may hold anything: (-inf, inf).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return (0.0, 1.0)
    if dtype.kind not in "ui":
        return (-np.inf, np.inf)
    info = np.iinfo(dtype)
    if scale == "unit":
        return (float(info.min) / info.max, 1.0)
    return (float(info.min), float(info.max))


def depth_name(dtype: np.dtype) -> str:
    """``8-bit (uint8)``, ``16-bit (uint16)``, ``1-bit (bool)``, ``32-bit float (float32)``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "1-bit (bool)"
    kind = " float" if dtype.kind == "f" else ""
    return f"{dtype.itemsize * 8}-bit{kind} ({dtype})"


def convert_pixels(
    pixels: np.ndarray, *, color: Color, dtype: str, bgr: bool = False, scale: Scale = "native"
) -> np.ndarray:
    """Channels-last pixels (an image or a tile of one) → (y, x) luma or (c, y, x), in ``dtype``."""
    stored = pixels.dtype
    image = _colour(pixels, color=color, dtype=dtype, bgr=bgr)
    if scale == "unit" and full_scale(stored) != 1.0:
        image /= image.dtype.type(full_scale(stored))
    return image


def _colour(pixels: np.ndarray, *, color: Color, dtype: str, bgr: bool) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    channels = pixels.shape[-1]
    if color in ("opaque", "rgb") and channels in ALPHA_CHANNELS:
        pixels, channels = pixels[..., :-1], channels - 1
    if color == "gray":
        if channels < 3:  # gray (+ alpha)
            return pixels[..., 0].astype(dtype)
        colour = pixels[..., :3].astype(dtype)
        if colour.dtype == np.float32:  # OpenCV applies the same BT.601 weights, several times faster
            return cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
        weights = LUMA_WEIGHTS[::-1] if bgr else LUMA_WEIGHTS
        return colour @ np.asarray(weights, dtype=dtype)
    if bgr and channels >= 3:
        order = [2, 1, 0, *range(3, channels)]
        pixels = pixels[..., order]
    image = np.moveaxis(pixels, -1, 0).astype(dtype)
    if color in ("rgb", "rgba"):
        image = _as_rgb(image, alpha=color == "rgba", opaque=full_scale(pixels.dtype))
    return image


def _as_rgb(image: np.ndarray, *, alpha: bool, opaque: float) -> np.ndarray:
    """(c, y, x) with gray replicated into R, G, B; with ``alpha`` a 4th channel (opaque if absent)."""
    colour = image[:3] if image.shape[0] >= 3 else image[:1]
    planes = [colour[0]] * 3 if colour.shape[0] == 1 else list(colour)
    if alpha:
        has_alpha = image.shape[0] in ALPHA_CHANNELS
        planes.append(image[-1] if has_alpha else np.full(image.shape[1:], opaque, dtype=image.dtype))
    return np.stack(planes)


def check_depth(path: str, found: np.dtype, expected: str | None, reference: str) -> None:
    """Refuse a file of another bit depth than the collection's first (with ``input.scale: native``)."""
    if expected is not None and np.dtype(found) != np.dtype(expected):
        raise DepthMismatch(
            f"image {path!r} is {depth_name(found)} but {reference!r}, the first image, is {depth_name(expected)}; "
            f"a collection has one bit depth — set input.scale: unit to divide each image by its type's "
            f"maximum (0-1), so files of different depths can share it",
            path,
        )
