"""Correctness, checked outside the timed runs: a benchmark comparing wrong results is worthless.

The reference for an image is scipy.ndimage.convolve (mode reflect) of its gray float32 version,
computed here from imageio's decode (BT.601 of the RGB pixels) or, for the pipeline's CLI cases,
which read a JPEG's luma plane, from Pillow's decode of that plane (``draft("L")``). A case's store must hold, for the first and the last image
(the last one catches runs that stopped early: unwritten chunks read back as zeros), values within
1e-4 of it relative to the reference's largest |value|, with the expected shape, dtype and codec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import imageio.v3 as iio
import numpy as np
import zarr
from scipy import ndimage

from cases import CLI_CASES, gray, kernel_weights
from pipeline.sinks.zarr_store import describe_codec

RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    case: str
    kernel: str
    images: str
    max_rel_error: float
    codec: str
    ok: bool
    problem: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def reference(path: str, kernel: str | None, luma: bool = False) -> np.ndarray:
    image = luma_plane(path) if luma else gray(iio.imread(path))
    return image if kernel is None else ndimage.convolve(image, kernel_weights(kernel), mode="reflect")


def luma_plane(path: str) -> np.ndarray:
    """The Y plane a JPEG stores, as libjpeg decodes it for Pillow's gray draft (no chroma decoded)."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("L", image.size)
        return np.asarray(image.convert("L"), dtype=np.float32)


def check_store(case: str, kernel: str | None, store: str, files: list[str]) -> Check:
    """Compare the store a case wrote with the reference, for the first and the last image."""
    array = zarr.open_group(store, mode="r")["0"] if case in CLI_CASES else zarr.open_array(store, mode="r")
    codec = describe_codec(array)
    indices = sorted({0, len(files) - 1})
    luma = case in CLI_CASES
    label = f"{kernel or 'no kernel'}"
    problems = layout_problems(array, (len(files), *reference(files[0], None).shape), codec)
    worst = float("nan")
    if not problems:
        errors = []
        for index in indices:
            expected = reference(files[index], kernel, luma).astype(np.float64)
            got = np.asarray(array[index], dtype=np.float64)
            errors.append(float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30)))
        worst = max(errors)
        if not worst <= RTOL:
            problems.append(f"max |error| / max |reference| = {worst:.2e} > {RTOL:g}")
    return Check(case, label, f"images {indices}", worst, codec, not problems, "; ".join(problems))


def layout_problems(array, expected_shape: tuple[int, ...], codec: str, *, compressed: bool = True) -> list[str]:
    """What differs from the layout every case must write: shape, float32, blosc-lz4 + shuffle
    (or, with ``compressed=False``, no codec at all)."""
    problems = []
    if tuple(array.shape) != expected_shape:
        problems.append(f"shape {tuple(array.shape)} != {expected_shape}")
    if array.dtype != np.float32:
        problems.append(f"dtype {array.dtype} != float32")
    if compressed and ("lz4" not in codec or "shuffle" not in codec):
        problems.append(f"codec {codec} is not blosc-lz4 + shuffle")
    if not compressed and codec != "none":
        problems.append(f"codec {codec}, not none")
    return problems
