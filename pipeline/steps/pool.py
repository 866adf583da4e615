"""Pooling: each channel's y and x sub-sampled by the max, mean, min or L2 norm of each window.

Windows of ``size`` start every ``stride`` samples from the image's origin (stride defaults to
size: non-overlapping, as ``MaxPool2d(k)``). ``valid`` padding keeps whole windows only and drops
the ragged edge (PyTorch's default); ``same`` keeps ``ceil(n / stride)`` outputs, the last windows
cut at the image's edge and reduced over the samples they hold (no padding value takes part).

Because windows start at multiples of the stride, a block whose origin is one too pools to exactly
the values of the whole image (tiles and slabs are sized on that grid), so pooling needs no halo
when windows do not overlap (``stride >= size``); overlapping windows need ``size - stride``
samples after the block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Function = Literal["max", "mean", "min", "l2"]
FUNCTIONS: tuple[str, ...] = ("max", "mean", "min", "l2")
Padding = Literal["valid", "same"]


@dataclass(frozen=True)
class Pool:
    function: Function
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding = "valid"

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"pool function must be one of {', '.join(FUNCTIONS)}; got {self.function!r}")
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ValueError(f"pool size and stride must be at least 1; got size {list(self.size)}, stride {list(self.stride)}")

    @property
    def name(self) -> str:
        size = "x".join(map(str, self.size))
        stride = "" if self.stride == self.size else f" stride {'x'.join(map(str, self.stride))}"
        return f"{self.function} pool {size}{stride}" + (" same" if self.padding == "same" else "")

    @property
    def overlap(self) -> tuple[int, int]:
        """Samples a block needs after its own, per axis, when windows overlap (size > stride)."""
        return tuple(max(0, k - s) for k, s in zip(self.size, self.stride))

    def output_size(self, n: int, axis: int) -> int:
        """Outputs along an axis of ``n`` samples (axis 0: y, 1: x)."""
        k, s = self.size[axis], self.stride[axis]
        if self.padding == "same":
            return math.ceil(n / s)
        return 0 if n < k else (n - k) // s + 1

    def check_fits(self, shape: tuple[int, int]) -> None:
        """A ``valid`` pool needs at least one whole window; say so in the config's words."""
        if self.padding == "valid" and any(n < k for n, k in zip(shape, self.size)):
            raise ValueError(
                f"pool size {list(self.size)} is larger than the image {list(shape)}; use a smaller size, "
                f"or padding: same"
            )

    def apply(self, block: np.ndarray, *, outputs: tuple[int, int] | None = None) -> np.ndarray:
        """Pool the last two axes of ``block``, whose origin lies on the pool grid.

        ``outputs`` (y, x) is how many windows to keep, for a block that holds samples of its
        neighbours' windows after its own (overlapping windows); default: all the block holds.
        """
        ny, nx = block.shape[-2:]
        outputs = outputs or (self.output_size(ny, 0), self.output_size(nx, 1))
        if self.padding == "same":
            block = self._padded(block, outputs)
        return self._reduce(block, outputs)

    def _padded(self, block: np.ndarray, outputs: tuple[int, int]) -> np.ndarray:
        """Pad so the cut windows are whole, with the value that leaves their reduction unchanged."""
        need = [(o - 1) * s + k for o, s, k in zip(outputs, self.stride, self.size)]
        extra = [max(0, want - have) for want, have in zip(need, block.shape[-2:])]
        if not any(extra):
            return block
        neutral = {"max": -np.inf, "min": np.inf, "mean": np.nan, "l2": 0.0}[self.function]
        pad = [(0, 0)] * (block.ndim - 2) + [(0, e) for e in extra]
        return np.pad(block.astype(np.result_type(block.dtype, np.float32), copy=False), pad, constant_values=neutral)

    def _reduce(self, block: np.ndarray, outputs: tuple[int, int]) -> np.ndarray:
        (ky, kx), (sy, sx), (oy, ox) = self.size, self.stride, outputs
        if (ky, kx) == (sy, sx):  # non-overlapping: a reshape, no window copies
            cropped = block[..., : oy * ky, : ox * kx]
            windows = cropped.reshape(*block.shape[:-2], oy, ky, ox, kx)
            axes: tuple[int, ...] = (-3, -1)
        else:
            windows = sliding_window_view(block, (ky, kx), axis=(-2, -1))[..., : (oy - 1) * sy + 1 : sy, : (ox - 1) * sx + 1 : sx, :, :]
            axes = (-2, -1)
        if self.function == "max":
            return windows.max(axis=axes)
        if self.function == "min":
            return windows.min(axis=axes)
        if self.function == "mean":
            mean = np.nanmean if self.padding == "same" else np.mean
            return mean(windows, axis=axes, dtype=np.float64).astype(block.dtype, copy=False)
        squares = np.square(windows, dtype=np.float64)
        return np.sqrt(squares.sum(axis=axes)).astype(block.dtype, copy=False)

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        """max, min and mean stay within the input's range; an L2 norm grows with the window."""
        if self.function != "l2":
            return low, high
        largest = max(abs(low), abs(high)) * math.sqrt(self.size[0] * self.size[1])
        smallest = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        return smallest, largest
