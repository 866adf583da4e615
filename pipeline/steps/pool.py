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
from typing import Any, Literal

import dask.array as da
import numpy as np

from pipeline.steps.base import ImageShape, Step

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
        """Combine the windows' ``ky × kx`` offsets one strided slice at a time: each pass reads one
        sample per output (a reshape or a window view reduced over its last axes is many times slower
        on channel-first blocks)."""
        (ky, kx), (sy, sx), (oy, ox) = self.size, self.stride, outputs
        planes = (
            block[..., dy : dy + (oy - 1) * sy + 1 : sy, dx : dx + (ox - 1) * sx + 1 : sx]
            for dy in range(ky) for dx in range(kx)
        )
        if self.function in ("max", "min"):
            combine = np.maximum if self.function == "max" else np.minimum
            result = np.array(next(planes), copy=True)
            for plane in planes:
                combine(result, plane, out=result)
            return result
        total = np.zeros((*block.shape[:-2], oy, ox), dtype=np.float64)
        count = np.zeros_like(total) if self.function == "mean" and self.padding == "same" else None
        for plane in planes:
            if self.function == "l2":
                total += np.square(plane, dtype=np.float64)
            elif count is not None:  # the padding (NaN) takes no part in the mean
                present = ~np.isnan(plane)
                total += np.where(present, plane, 0.0)
                count += present
            else:
                total += plane
        if self.function == "l2":
            total = np.sqrt(total)
        else:
            total /= count if count is not None else ky * kx
        return total.astype(block.dtype, copy=False)

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        """max, min and mean stay within the input's range; an L2 norm grows with the window."""
        if self.function != "l2":
            return low, high
        largest = max(abs(low), abs(high)) * math.sqrt(self.size[0] * self.size[1])
        smallest = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        return smallest, largest


class PoolStep(Step):
    """``pool``: y and x divided; per channel. Blocks on the pool grid pool to the whole image's values."""

    kind = "pool"
    fusion = "resize"

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @property
    def name(self) -> str:
        return self.pool.name

    def provenance(self) -> dict[str, Any]:
        return {"step": "pool", "function": self.pool.function, "size": list(self.pool.size),
                "stride": list(self.pool.stride), "padding": self.pool.padding}

    @property
    def stride(self) -> tuple[int, int]:
        """How much the pool divides y and x (what a tile of the result is smaller by)."""
        return self.pool.stride

    def output(self, image: ImageShape) -> ImageShape:
        sizes = tuple(self.pool.output_size(n, axis) for axis, n in enumerate(image.shape[-2:]))
        return ImageShape((*image.shape[:-2], *sizes), image.axes)

    def check(self, image: ImageShape) -> None:
        self.pool.check_fits(image.shape[-2:])

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        return self.pool.value_range(low, high)

    def block(self, block: np.ndarray, image: ImageShape, outputs: tuple[int, int] | None = None) -> np.ndarray:
        return self.pool.apply(block, outputs=outputs)

    def joins_pass(self, chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
        """Whether blocks of these (y, x) chunks pool on their own, so the pool can end its
        neighbours' pass: windows do not overlap, and every chunk but the last is on the grid."""
        return not any(self.pool.overlap) and all(
            size % stride == 0 for sizes, stride in zip(chunks, self.pool.stride) for size in sizes[:-1]
        )

    def chunks_of(self, chunks: tuple[tuple[int, ...], tuple[int, ...]], image: ImageShape) -> tuple[tuple[int, ...], ...]:
        """The (y, x) chunks of the pooled result of blocks of ``chunks`` of ``image``."""
        out = self.output(image).shape[-2:]
        return tuple(tuple(self._windows(sizes, axis, n)) for axis, (sizes, n) in enumerate(zip(chunks, out)))

    def apply_resize(self, array: da.Array, image: ImageShape, overlapped: Any) -> da.Array:
        """Blocks realigned to whole multiples of the stride (tiles already are), each pooled on its own.

        Overlapping windows (size > stride) also read ``size - stride`` samples after the block.
        """
        axes = (array.ndim - 2, array.ndim - 1)
        grid = {axis: _on_grid(array.chunks[axis], self.pool.stride[i]) for i, axis in enumerate(axes)}
        array = array.rechunk(grid)
        overlap = self.pool.overlap
        if any(overlap):  # no chunk smaller than the windows' overlap (dask's overlap would rechunk)
            array = array.rechunk({
                axis: _on_grid(array.chunks[axis], self.pool.stride[i], minimum=reach)
                for i, (axis, reach) in enumerate(zip(axes, overlap)) if reach
            })
        counts = list(self.chunks_of(array.chunks[-2:], image))
        chunks = (*array.chunks[:-2], *counts)
        meta = np.empty((0,) * array.ndim, dtype=array.dtype)
        if not any(overlap) or all(len(array.chunks[axis]) == 1 for axis in axes):
            return array.map_blocks(_pool_block, chunks=chunks, dtype=array.dtype, meta=meta, step=self, counts=counts)
        depth = {axis: reach for axis, reach in zip(axes, overlap) if reach and len(array.chunks[axis]) > 1}
        widened = da.overlap.overlap(array, depth=depth, boundary={axis: "none" for axis in depth})
        return widened.map_blocks(_pool_haloed, chunks=chunks, dtype=array.dtype, meta=meta, step=self, counts=counts, depth=depth)

    def _windows(self, chunks: tuple[int, ...], axis: int, total: int) -> list[int]:
        """Windows starting in each chunk (on the grid), the last chunk taking the ragged rest."""
        stride, counts, start = self.pool.stride[axis], [], 0
        for size in chunks:
            first, stop = -(-start // stride), -(-(start + size) // stride)
            counts.append(max(0, min(stop, total) - first))
            start += size
        return counts


def _on_grid(chunks: tuple[int, ...], stride: int, minimum: int = 1) -> tuple[int, ...]:
    """Chunk sizes whose starts are multiples of ``stride``, none below ``minimum`` (the last merged if it is)."""
    if all(size % stride == 0 for size in chunks[:-1]) and min(chunks) >= minimum:
        return chunks
    total, step = sum(chunks), max(stride, -(-max(max(chunks), minimum) // stride) * stride)
    sizes = [step] * (total // step)
    rest = total - sum(sizes)
    if rest and rest < minimum and sizes:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return tuple(sizes)


def _pool_block(block: np.ndarray, *, step: PoolStep, counts: list[tuple[int, ...]], block_id: tuple[int, ...]) -> np.ndarray:
    outputs = (counts[0][block_id[-2]], counts[1][block_id[-1]])
    return step.pool.apply(block, outputs=outputs) if all(outputs) else np.empty((*block.shape[:-2], *outputs), block.dtype)


def _pool_haloed(block: np.ndarray, *, step: PoolStep, counts: list[tuple[int, ...]], depth: dict[int, int],
                 block_info: dict, block_id: tuple[int, ...]) -> np.ndarray:
    """A block widened by the overlap on both sides: drop what precedes its own start, pool its windows."""
    location = block_info[None]["array-location"]
    crop = tuple(slice(min(start, depth.get(axis, 0)), None) for axis, (start, _) in enumerate(location))
    return _pool_block(block[crop], step=step, counts=counts, block_id=block_id)


def build(spec: Any) -> PoolStep:
    """The step of a validated ``pool:`` mapping (size and stride: a number or [y, x]; stride defaults to size)."""
    size = _pair(spec.size)
    stride = size if spec.stride is None else _pair(spec.stride)
    return PoolStep(Pool(spec.function, size, stride, spec.padding))


def _pair(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
