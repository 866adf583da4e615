"""Pillow and imageio, imported when a read first needs them.

Together they take 30–50 ms to import, a few percent of a short run's wall time; a job reading
TIFFs (tifffile) or arrays never needs them (JPEGs are decoded by OpenCV, but their headers are read
by Pillow). Every module of the package that
decodes through them gets them from here, so Pillow's settings are made before any decode.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def pillow() -> ModuleType:
    """``PIL.Image``, with its own size limit off: ``input.max_pixels`` (check_size) replaces it."""
    from PIL import Image

    # Pillow would refuse large trusted images with its own error, before our check could say why.
    Image.MAX_IMAGE_PIXELS = None
    return Image


@functools.cache
def imageio() -> ModuleType:
    """``imageio.v3``; it decodes through Pillow, so Pillow is set up first."""
    pillow()
    import imageio.v3 as iio

    return iio
