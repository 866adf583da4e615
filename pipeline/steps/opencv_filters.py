"""OpenCV's filters, run so that a sample's bytes do not depend on the block it lies in.

A job's blocks (tiles, slabs, chunks) follow its memory budget; OpenCV's results would follow them
in two ways, both handled here or by the cost model:

* its row, column and 2-D filters run along a row in SIMD vectors and finish the last
  ``width % lanes`` columns in a scalar loop that rounds differently: ``refilter_tail`` computes
  those columns again in a strip that ends on whole vectors;
* ``filter2D`` turns into a DFT, whose roundings follow the block's size, from
  ``opencv_dft_taps`` taps on: plans call it "direct" only below that.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# scipy.ndimage mode → OpenCV border; `wrap` has no OpenCV equivalent in filter2D.
CV_BORDERS = {
    "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d
    "mirror": cv2.BORDER_REFLECT_101,  # d c b | a b c d
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,  # zero; non-zero cval is shifted out first
}
CV_DTYPES = (np.float32, np.float64)
# Vector width for `refilter_tail`. Measured on this build (OpenCV 5.0, x86-64 with AVX-512; its
# filters run AVX2 vectors): filtering blocks of every width from 20 to 300 and comparing with the
# whole image (3x3, 5x5, 7x7 dense; 3- and 15-tap separable; float32 and float64), 32 bytes (8
# float32, 4 float64) is the smallest width after which every column agrees byte for byte; 16 bytes
# is not (float32 filter2D). 64 bytes also covers builds that dispatch AVX-512, and costs nothing
# but a few more columns in the strip.
LANE_BYTES = 64


def opencv_dft_taps(dtype: np.dtype) -> int:
    """Taps from which OpenCV's ``filter2D`` computes by DFT rather than directly.

    OpenCV's ``dftFilter2D`` (modules/imgproc/src/filter.dispatch.cpp) takes kernels of
    ``dft_filter_size`` taps and more: 130 for float32 on CPUs with SSE3, 50 otherwise (float64,
    or float32 on ARM). Measured here: float32 10x13 and 2x65 take 4x the time of 3x43 and 11x11;
    float64 5x10 twice that of 7x7.
    """
    sse3 = cv2.checkHardwareSupport(4)  # cv::CPU_SSE3 (the Python bindings do not name it)
    return 130 if np.dtype(dtype) == np.float32 and sse3 else 50


PlaneFilter = Callable[[np.ndarray, np.ndarray], None]  # (plane, target of its shape)


def refilter_tail(
    filter_plane: PlaneFilter, plane: np.ndarray, target: np.ndarray, reach: tuple[int, int], border: int
) -> None:
    """Compute the last ``width % lanes`` columns of ``target`` again, the way OpenCV computes the others.

    OpenCV rounds the scalar tail of a row differently from its SIMD vectors, so those columns would
    depend on the block's width (its tile, its memory budget). They are filtered again in a strip
    that ends on whole vectors: it starts ``before`` real columns ahead of them, and its right side is
    extended by at least ``after`` with the border rule, which it applies as on the block because it
    holds the ``after + 1`` last columns the rule reflects; the tail never reads OpenCV's border of the
    strip. A block of whole vectors is not copied.
    """
    width = plane.shape[1]
    lanes = LANE_BYTES // plane.itemsize
    tail = width % lanes
    if tail == 0:
        return
    before, after = reach
    start = max(0, min(width - tail - before, width - after - 1))
    pad = after + (start - width - after) % lanes
    strip = cv2.copyMakeBorder(plane[:, start:], 0, 0, 0, pad, border)
    filtered = np.empty_like(strip)
    filter_plane(strip, filtered)
    target[:, width - tail :] = filtered[:, width - tail - start : width - start]
