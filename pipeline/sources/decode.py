"""One file's pixels: OpenCV for JPEG, imageio for the rest, from bytes for remote files."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np
import tifffile

from pipeline.budget import ImageBudget, format_size
from pipeline.errors import InputError
from pipeline.sources.frames import TIFF_SUFFIXES, read_frame, split_source
from pipeline.sources.image_libraries import imageio, pillow
from pipeline.sources.listing import FILE, IMAGE_SUFFIXES, kind_of
from pipeline.storage import is_remote, opened, read_bytes

OPENCV_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Declared:
    """What a header says an image holds: its first frame's size, and every frame's pixels."""

    width: int
    height: int
    frames: int
    pixels: int  # of all the frames counted

    def __str__(self) -> str:
        size = f"{self.width}x{self.height} pixels"
        return size if self.frames == 1 else f"{self.frames} frames of {size}"


def check_size(
    source: str,
    max_pixels: int,
    storage_options: Mapping[str, Any] | None = None,
    *,
    data: bytes | None = None,
    budget: ImageBudget | None = None,
) -> None:
    """Refuse a decompression bomb (a small file declaring a huge image) before decoding it.

    A whole file counts (all its pages), or one frame when only that frame is read. With
    ``budget`` (the image is read whole) it must also fit what one worker may hold.
    """
    path, frame = split_source(source)
    declared = _declared(path, frame, storage_options, data=data)
    if declared.pixels > max_pixels:
        raise InputError(
            f"image {path!r} declares {declared.pixels:,} pixels, above input.max_pixels = {max_pixels:,}; "
            f"raise the limit if the file is trusted",
            path,
        )
    if budget is not None:
        _check_memory(path, declared, budget)


def _check_memory(path: str, declared: Declared, budget: ImageBudget) -> None:
    needed = budget.needs(declared.pixels)
    if needed > budget.bytes:
        raise InputError(
            f"image {path!r} declares {declared} (≈ {format_size(needed)} to decode and convert), more than a "
            f"worker can hold (≈ {format_size(budget.bytes)}: execution.memory_budget / workers); raise "
            f"execution.memory_budget, use fewer workers, or read it by tiles (TIFF only)",
            path,
        )


def _declared(
    path: str, frame: int | None, storage_options: Mapping[str, Any] | None = None, *, data: bytes | None = None
) -> Declared:
    """One frame (``frame``) or the whole file, from the header.

    ``data``: the file's bytes, when a remote file has already been fetched whole.
    """
    try:
        with opened(path, storage_options) if data is None else io.BytesIO(data) as source:
            if path.lower().endswith(TIFF_SUFFIXES):
                with tifffile.TiffFile(source) as tiff:
                    pages = tiff.pages if frame is None else [tiff.pages[frame]]
                    pixels = sum(page.imagewidth * page.imagelength for page in pages)
                    return Declared(pages[0].imagewidth, pages[0].imagelength, len(pages), pixels)
            with pillow().open(source) as image:
                frames = getattr(image, "n_frames", 1) if frame is None else 1
                return Declared(image.width, image.height, frames, image.width * image.height * frames)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def image_suffix(path: str) -> str | None:
    """The extension hint imageio needs for a remote file object (a local path carries its own)."""
    suffix = os.path.splitext(path)[1].lower()
    return suffix if suffix in IMAGE_SUFFIXES else None


def decode(
    source: str,
    *,
    max_pixels: int | None = None,
    budget: ImageBudget | None = None,
    storage_options: Mapping[str, Any] | None = None,
    luma: bool = False,
) -> tuple[np.ndarray, bool]:
    """Pixels of one file, channels last, and whether their colour order is BGR (OpenCV's).

    JPEG goes through OpenCV: the same libjpeg-turbo pixels as Pillow's, about 40% faster, and
    CMYK files come out as colour. With ``luma`` a JPEG gives its luma plane alone (2-D): libjpeg
    then decodes no chroma and converts no colour, a third of the time of RGB and BT.601. Everything else, and the message for an unreadable JPEG,
    comes from imageio. With ``max_pixels`` the header is checked first (and against ``budget``,
    what one task may hold); only regular local files are opened. A remote file is
    fetched whole in one request and decoded from its bytes the same way. ``source`` is a file or
    one frame of one (``stack.tif#3``).
    """
    path, frame = split_source(source)
    if not is_remote(path):
        _refuse_special(path)
    if frame is not None:
        if max_pixels is not None:
            check_size(source, max_pixels, storage_options, budget=budget)
        return read_frame(path, frame, storage_options), False
    if is_remote(path):
        return _decode_bytes(path, _fetch(path, storage_options), max_pixels, budget, luma)
    if max_pixels is not None:
        check_size(path, max_pixels, budget=budget)
    if path.lower().endswith(OPENCV_SUFFIXES) and _ends_like_jpeg(path):
        pixels = cv2.imread(path, _opencv_flags(luma))
        if pixels is not None:
            return pixels, pixels.ndim == 3
    try:
        pixels = _plain_png(path) if path.lower().endswith(".png") else None
        pixels = imageio().imread(path) if pixels is None else pixels
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return _one_frame(path, pixels), False


# PNG modes whose pixels imageio's Pillow plugin returns as Pillow holds them (it converts the others)
PLAIN_PNG_MODES = ("L", "LA", "RGB", "RGBA", "I;16")


def _plain_png(path: str) -> np.ndarray | None:
    """A one-frame PNG's pixels exactly as ``iio.imread`` gives them, or None for imageio to read.

    imageio spends longer than the decoding of a thumbnail on opening its plugin and reading the
    file's metadata; for these modes it then returns ``np.asarray`` of the Pillow image, as here.
    """
    with pillow().open(path) as image:
        if image.format != "PNG" or image.mode not in PLAIN_PNG_MODES or getattr(image, "n_frames", 1) != 1:
            return None
        return np.array(image)


def _refuse_special(path: str) -> None:
    """Open regular files only: reading a named pipe (even one's header) would wait for a writer forever."""
    try:
        kind = kind_of(os.stat(path).st_mode)
    except OSError as exc:
        raise InputError.unreadable(path, exc) from None
    if kind != FILE:
        raise InputError(f"image {path!r} is not a regular file ({kind}); list image files only", path)


def _fetch(path: str, storage_options: Mapping[str, Any] | None) -> bytes:
    try:
        return read_bytes(path, storage_options)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def _opencv_flags(luma: bool) -> int:
    """UNCHANGED, or the luma plane; never the EXIF rotation, as imageio reads the other formats."""
    return cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION if luma else cv2.IMREAD_UNCHANGED


def _decode_bytes(
    path: str, data: bytes, max_pixels: int | None, budget: ImageBudget | None, luma: bool = False
) -> tuple[np.ndarray, bool]:
    if max_pixels is not None:
        check_size(path, max_pixels, data=data, budget=budget)
    if path.lower().endswith(OPENCV_SUFFIXES) and data[-2:] == b"\xff\xd9":
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _opencv_flags(luma))
        if pixels is not None:
            return pixels, pixels.ndim == 3
    try:
        pixels = imageio().imread(data, extension=image_suffix(path))
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return _one_frame(path, pixels), False


def _one_frame(path: str, pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 4:  # frames first (GIF): one frame is one image
        if pixels.shape[0] != 1:
            raise InputError(
                f"image {path!r} has {pixels.shape[0]} frames; read it as part of a collection "
                f"(each frame is one image) or name one frame as {path + '#0'!r}",
                path,
            )
        pixels = pixels[0]
    return pixels


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
