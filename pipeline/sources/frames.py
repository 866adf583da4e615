"""Multi-page TIFFs and animated GIFs (APNG, WebP) in a collection: each page or frame is one image.

Like dask-image's ``imread``, the frame count comes from the collection's first file, so listing a
million files opens one of them; every read task then checks that its file holds exactly as many
frames, and fails naming the file if not, so no frame is silently dropped or invented.

An image read from a multi-frame file is named ``<file>#<frame>`` (``stack.tif#3``) in the
store's source list, in the ledger's positions and in messages.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tifffile

from pipeline.errors import InputError
from pipeline.sources.image_libraries import imageio, pillow
from pipeline.storage import is_remote, opened, read_bytes

Options = Mapping[str, Any] | None

TIFF_SUFFIXES = (".tif", ".tiff")
# Formats that can hold several frames; others are always one image per file.
MULTI_FRAME_SUFFIXES = (*TIFF_SUFFIXES, ".gif", ".png", ".webp")
_FRAME_NAME = re.compile(r"^(?P<path>.+)#(?P<frame>\d+)$")


def split_source(source: str) -> tuple[str, int | None]:
    """``stack.tif#3`` → (``stack.tif``, 3), ``a.zarr#3`` → (``a.zarr``, 3); a plain name → (name, None)."""
    match = _FRAME_NAME.match(source)
    if match and (match["path"].lower().endswith(MULTI_FRAME_SUFFIXES) or is_array_entry(match["path"])):
        return match["path"], int(match["frame"])
    return source, None


def is_array_entry(entry: str) -> bool:
    """An input entry naming arrays rather than image files: a ``.zarr`` store (or a path in one), ``.npy``.

    Its images are named like frames: ``<entry>#<index>`` along the array's image axis.
    """
    return entry.rstrip("/").lower().endswith(".npy") or any(
        part.lower().endswith(".zarr") for part in re.split(r"[/\\]", entry.split("://", 1)[-1])
    )


def source_file(source: str) -> str:
    """The file an image's source name refers to (what ``os.stat`` and the lock see)."""
    return split_source(source)[0]


def frame_sources(files: Sequence[str], frames: int) -> list[str]:
    """The images of ``files`` when each holds ``frames`` frames: the files themselves when one."""
    if frames == 1:
        return list(files)
    return [f"{path}#{frame}" for path in files for frame in range(frames)]


def frame_count(path: str, storage_options: Options = None) -> int:
    """Pages of a TIFF, frames of a GIF/APNG/WebP, 1 for every other format (header only)."""
    if not path.lower().endswith(MULTI_FRAME_SUFFIXES):
        return 1
    try:
        with opened(path, storage_options) as source:
            if path.lower().endswith(TIFF_SUFFIXES):
                with tifffile.TiffFile(source) as tiff:
                    return len(tiff.pages)
            with pillow().open(source) as image:
                return int(getattr(image, "n_frames", 1))
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def check_frames(path: str, expected: int, reference: str, storage_options: Options = None) -> None:
    """Refuse a file whose frame count differs from the collection's (learnt from ``reference``)."""
    found = frame_count(path, storage_options)
    if found != expected:
        raise InputError(
            f"image {path!r} holds {found} frames (pages) but {reference!r}, the first file, holds {expected}; "
            f"every file of a collection must hold as many (split the files, or list them in separate jobs)",
            path,
        )


def read_frame(path: str, frame: int, storage_options: Options = None) -> np.ndarray:
    """One page of a TIFF or one frame of an animation, channels last (a remote file in one request)."""
    try:
        source: Any = io.BytesIO(read_bytes(path, storage_options)) if is_remote(path) else path
        if path.lower().endswith(TIFF_SUFFIXES):
            return tifffile.imread(source, key=frame)
        return imageio().imread(source, index=frame, extension=os.path.splitext(path)[1].lower())
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None

