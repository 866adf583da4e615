"""Folders, globs and lists of image files as ONE lazy Dask array, one chunk per image.

Only the first file is opened while the graph is built (for its shape and type); each file is
decoded inside its own task, converted to the compute dtype on the input's own scale (uint8 stays
0-255, 16-bit stays 0-65535), and its shape is checked there, failing with the file's name.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import cv2
import dask.array as da
import imageio.v3 as iio
import numpy as np
import tifffile
from natsort import natsorted, ns
from PIL import Image

from pipeline.budget import BlockBudget, slab_depth
from pipeline.errors import InputError
from pipeline.sources.tiled import TIFF_SUFFIXES, choose_tile, tiff_layout, tiled_stack
from pipeline.sources.volume import stack_shape, stack_volumes, volume_shape

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
OPENCV_SUFFIXES = (".jpg", ".jpeg")
# Refuse images declaring more pixels than this before decoding them (input.max_pixels).
DEFAULT_MAX_PIXELS = 1 << 30
# Our own limit replaces Pillow's, which would refuse large trusted images with its own error.
Image.MAX_IMAGE_PIXELS = None
# ITU-R BT.601 luma weights, applied to the values on their own scale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
Color = Literal["gray", "keep"]


@dataclass(frozen=True)
class ImageCollection:
    """A lazy stack of images and what each index came from."""

    array: da.Array
    sources: tuple[str, ...]
    axes: tuple[str, ...]

    @property
    def spatial_ndim(self) -> int:
        return sum(axis in ("z", "y", "x") for axis in self.axes)


def list_images(paths: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand globs and directories into a naturally sorted list of files, without opening any.

    Entries keep the order they are given in; files within an entry are sorted naturally
    (``img2`` before ``img10``). A file named twice is kept once, at its first place.
    """
    entries = [paths] if isinstance(paths, str) else list(paths)
    found: list[str] = []
    for entry in entries:
        found.extend(_expand(entry))
    return list(dict.fromkeys(found))


def _expand(entry: str) -> list[str]:
    if glob.has_magic(entry):
        # Listing must not stat a million files: a name with an image suffix is taken as a file.
        matches = [
            path
            for path in glob.glob(entry, recursive=True)
            if path.lower().endswith(IMAGE_SUFFIXES) or os.path.isfile(path)
        ]
        if not matches:
            raise InputError(f"input.paths: {entry!r} matches no files; check the pattern and the working directory")
        return natsorted(matches, alg=ns.PATH)
    if os.path.isdir(entry):
        with os.scandir(entry) as listing:
            matches = [
                item.path
                for item in listing
                if item.name.lower().endswith(IMAGE_SUFFIXES) and item.is_file()
            ]
        if not matches:
            raise InputError(
                f"input.paths: directory {entry!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        return natsorted(matches, alg=ns.PATH)
    if os.path.isfile(entry):
        return [entry]
    raise InputError(f"input.paths: {entry!r} does not exist")


@dataclass(frozen=True)
class ImageSpec:
    """What every image of a collection must look like, learnt from its first file."""

    shape: tuple[int, ...]  # after colour handling: (y, x) or (c, y, x)
    color: Color
    reference: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    raw_shape: tuple[int, ...] = ()  # as stored in the file: (y, x[, c]), or (z, y, x[, c]) for volumes
    tile: tuple[int, int] | None = None  # read by (y, x) tiles (huge TIFFs), or whole
    volume: bool = False  # each file a (z, y, x) stack, read by slabs of ``slab`` slices
    slab: int = 1
    pad_value: float | None = None  # input.shapes: pad — smaller images padded (bottom, right) with it

    @property
    def chunks(self) -> tuple[int, ...]:
        """One image's chunk: the whole image, one tile of it, or one slab of a volume."""
        if self.volume:
            return (min(self.slab, self.shape[0]), *self.shape[1:])
        return self.shape if self.tile is None else (*self.shape[:-2], *self.tile)

    @property
    def axes(self) -> tuple[str, ...]:
        if self.volume:
            return ("image", "z", "y", "x")
        return ("image", "y", "x") if self.color == "gray" else ("image", "c", "y", "x")

    @property
    def spatial_ndim(self) -> int:
        return len(self.shape) - (self.color == "keep")


def probe(
    path: str,
    *,
    color: Color = "gray",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tile: str | int = "auto",
    layout: str = "images",
    budget: BlockBudget = BlockBudget(),
    stored_chunks: tuple[int, ...] | None = None,
) -> ImageSpec:
    """Open one file (header only where the format allows) for the collection's image shape.

    Tiles and slabs are sized from one worker's ``budget``, unless ``stored_chunks`` (the chunks of
    the store a run resumes) fix them: every task must write whole chunks of that store.
    """
    check_size(path, max_pixels)
    if layout == "volume":
        if color != "gray":
            raise InputError("input.layout: volume reads gray stacks; set input.color: gray")
        raw = stack_shape(path)
        shape = volume_shape(path, raw)
        slab = slab_depth(
            budget.bytes,
            plane_bytes=budget.itemsize * shape[1] * shape[2],
            halo=budget.reach(3)[0],
            multiple=stored_chunks[1] if stored_chunks else 1,
        )
        return ImageSpec(
            shape=shape, color=color, reference=path, max_pixels=max_pixels, raw_shape=raw, volume=True, slab=slab,
        )
    raw = _raw_shape(path)
    shape = _converted_shape(path, raw, color)
    if stored_chunks is not None:
        chosen = None if tuple(stored_chunks[-2:]) == shape[-2:] else tuple(stored_chunks[-2:])
    else:
        chosen = choose_tile(path, tile, shape, budget=budget)
    return ImageSpec(shape=shape, color=color, reference=path, max_pixels=max_pixels, raw_shape=raw, tile=chosen)


def stack_images(
    sources: Sequence[str], spec: ImageSpec, *, dtype: str = "float32", halo: dict[int, int] | None = None
) -> da.Array:
    """A lazy (image, [c], y, x) stack of ``sources``, one chunk and one decode task per image.

    Tasks get absolute paths: a distributed worker may run in another directory. Huge TIFFs
    (``spec.tile``) are read by tiles instead, one task per tile, and volumes by slabs. Those can
    also be read with a ``halo`` ({axis: samples}, as dask's ``overlap`` takes it): each chunk then
    holds that much of its neighbours too, read from the file.
    """
    halo = {axis: reach for axis, reach in (halo or {}).items() if reach}
    ndim = 1 + len(spec.shape)
    if spec.volume:
        _only_along(halo, (1,), "volumes are read with halos along z only")
        return stack_volumes(
            sources, shape=spec.shape, raw_shape=spec.raw_shape, slab=spec.chunks[0], dtype=dtype,
            reference=spec.reference, halo=halo.get(1, 0),
        )
    if spec.tile is not None:
        _only_along(halo, (ndim - 2, ndim - 1), "tiles are read with halos along y and x only")
        return tiled_stack(
            sources, shape=spec.shape, raw_shape=spec.raw_shape, tile=spec.tile,
            color=spec.color, dtype=dtype, reference=spec.reference,
            halo=(halo.get(ndim - 2, 0), halo.get(ndim - 1, 0)),
        )
    _only_along(halo, (), "whole images are read without halos")
    names = np.empty(len(sources), dtype=object)
    names[:] = [os.path.abspath(source) for source in sources]
    return da.from_array(names, chunks=1, name=False).map_blocks(
        _read_block,
        new_axis=list(range(1, 1 + len(spec.shape))),
        chunks=((1,) * len(sources), *((n,) for n in spec.shape)),
        dtype=dtype,
        meta=np.empty((0,) * (1 + len(spec.shape)), dtype=dtype),
        color=spec.color,
        shape=spec.shape,
        reference=spec.reference,
        out_dtype=dtype,
        max_pixels=spec.max_pixels,
        pad_value=spec.pad_value,
    )


def _only_along(halo: dict[int, int], axes: tuple[int, ...], message: str) -> None:
    if set(halo) - set(axes):
        raise ValueError(f"{message}; asked for {halo}")


def open_collection(
    paths: str | list[str] | tuple[str, ...], *, color: Color = "gray", dtype: str = "float32"
) -> ImageCollection:
    """List, probe the first file, and stack: axes (image, y, x), or (image, c, y, x) with ``keep``."""
    sources = list_images(paths)
    spec = probe(sources[0], color=color)
    return ImageCollection(array=stack_images(sources, spec, dtype=dtype), sources=tuple(sources), axes=spec.axes)


def fits_inside(small: tuple[int, ...], large: tuple[int, ...]) -> bool:
    """Same channels, and no larger along y or x: an image that padding can bring to ``large``."""
    return len(small) == len(large) and small[:-2] == large[:-2] and all(a <= b for a, b in zip(small, large))


def declared_shape(path: str, color: Color) -> tuple[int, ...]:
    """An image's shape after colour handling, from its header (no decoding)."""
    return _converted_shape(path, _raw_shape(path), color)


def declared_dtype(path: str) -> np.dtype:
    """The pixel type a file stores, from its header."""
    try:
        if path.lower().endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(path) as tiff:
                return np.dtype(tiff.pages[0].dtype)
        return np.dtype(iio.improps(path).dtype)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def _raw_shape(path: str) -> tuple[int, ...]:
    """The stored (y, x[, c]) shape of the first image or page, from the header."""
    if path.lower().endswith(TIFF_SUFFIXES):
        return tiff_layout(path)[0]
    try:
        return tuple(iio.improps(path).shape)
    except Exception as exc:  # imageio raises many types for unreadable files
        raise InputError.unreadable(path, exc) from None


def _converted_shape(path: str, raw: tuple[int, ...], color: Color) -> tuple[int, ...]:
    """Shape of the image after colour handling: (y, x) for gray, (c, y, x) for keep."""
    if len(raw) == 2:
        return raw if color == "gray" else (1, *raw)
    if len(raw) == 3 and raw[-1] in (1, 2, 3, 4):
        return raw[:2] if color == "gray" else (raw[2], *raw[:2])
    raise InputError(
        f"image {path!r} has shape {raw}, which is not a 2-D gray, gray+alpha, RGB or RGBA image", path
    )


def declared_pixels(path: str) -> int:
    """Pixels the file's header declares (all pages), read without decoding the image data."""
    try:
        if path.lower().endswith((".tif", ".tiff")):
            with tifffile.TiffFile(path) as tiff:
                return sum(int(np.prod(page.shape[:2])) for page in tiff.pages)
        with Image.open(path) as image:
            return image.size[0] * image.size[1] * getattr(image, "n_frames", 1)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def check_size(path: str, max_pixels: int) -> None:
    """Refuse a decompression bomb (a small file declaring a huge image) before decoding it."""
    declared = declared_pixels(path)
    if declared > max_pixels:
        raise InputError(
            f"image {path!r} declares {declared:,} pixels, above input.max_pixels = {max_pixels:,}; "
            f"raise the limit if the file is trusted",
            path,
        )


def decode(path: str, *, max_pixels: int | None = None) -> tuple[np.ndarray, bool]:
    """Pixels of one file, channels last, and whether their colour order is BGR (OpenCV's).

    JPEG goes through OpenCV: the same libjpeg-turbo pixels as Pillow's, about 40% faster, and
    CMYK files come out as colour. Everything else, and the message for an unreadable JPEG,
    comes from imageio. With ``max_pixels`` the header is checked first.
    """
    if max_pixels is not None:
        check_size(path, max_pixels)
    if path.lower().endswith(OPENCV_SUFFIXES) and _ends_like_jpeg(path):
        pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # UNCHANGED: no EXIF rotation, as imageio
        if pixels is not None:
            return pixels, pixels.ndim == 3
    try:
        pixels = iio.imread(path)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    if pixels.ndim == 4:  # frames first (GIF): one frame is one image
        if pixels.shape[0] != 1:
            raise InputError(
                f"image {path!r} has {pixels.shape[0]} frames; multi-frame files are not read as "
                f"collections yet — export the frames as separate files",
                path,
            )
        pixels = pixels[0]
    return pixels, False


def _ends_like_jpeg(path: str) -> bool:
    """True if the file ends with JPEG's end-of-image marker.

    libjpeg, under OpenCV, decodes a truncated file with only a warning and grey where data is
    missing; Pillow refuses it. So a file without the marker (truncated, or with trailing bytes)
    goes to Pillow, which either reads it or says what is wrong.
    """
    try:
        with open(path, "rb") as file:
            file.seek(-2, os.SEEK_END)
            return file.read(2) == b"\xff\xd9"
    except OSError:
        return False


def read_image(
    path: str, *, color: Color = "gray", dtype: str = "float32", max_pixels: int | None = None
) -> np.ndarray:
    """Decode one file into ``dtype`` on its own scale; gray is BT.601 luma, alpha dropped."""
    pixels, bgr = decode(path, max_pixels=max_pixels)
    _converted_shape(path, pixels.shape, color)  # rejects shapes we cannot interpret
    return convert_pixels(pixels, color=color, dtype=dtype, bgr=bgr)


def convert_pixels(pixels: np.ndarray, *, color: Color, dtype: str, bgr: bool = False) -> np.ndarray:
    """Channels-last pixels (an image or a tile of one) → (y, x) luma or (c, y, x), in ``dtype``."""
    if pixels.ndim == 2:
        image = pixels.astype(dtype, copy=False)
        return image if color == "gray" else image[np.newaxis]
    if color == "keep":
        if bgr:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA if pixels.shape[-1] == 4 else cv2.COLOR_BGR2RGB)
        return np.moveaxis(pixels, -1, 0).astype(dtype)
    if pixels.shape[-1] < 3:  # gray (+ alpha)
        return pixels[..., 0].astype(dtype)
    colour = pixels[..., :3].astype(dtype)
    if colour.dtype == np.float32:  # OpenCV applies the same BT.601 weights, several times faster
        return cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    weights = LUMA_WEIGHTS[::-1] if bgr else LUMA_WEIGHTS
    return colour @ np.asarray(weights, dtype=dtype)


def _read_block(
    names: np.ndarray,
    *,
    color: Color,
    shape: tuple[int, ...],
    reference: str,
    out_dtype: str,
    max_pixels: int,
    pad_value: float | None,
) -> np.ndarray:
    path = names.item()
    image = read_image(path, color=color, dtype=out_dtype, max_pixels=max_pixels)
    if image.shape != shape and pad_value is not None and fits_inside(image.shape, shape):
        extra = [(0, 0)] * (image.ndim - 2) + [(0, n - m) for n, m in zip(shape[-2:], image.shape[-2:])]
        image = np.pad(image, extra, constant_values=pad_value)
    if image.shape != shape:
        raise InputError(
            f"image {path!r} has shape {image.shape} but {reference!r}, the first image, has {shape}; "
            f"all images of a collection must have the same size and channels "
            f"(input.shapes: pad pads smaller images to the largest)",
            path,
        )
    return image[np.newaxis]
