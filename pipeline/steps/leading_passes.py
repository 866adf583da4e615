"""1-D passes along a leading axis (z of a volume) as weighted sums of whole rows.

Along z of a C-ordered volume every sample a tap reads is a whole (y, x) slice away, so a pass is
a sum over taps of scaled slices: ``out[k] = Σ_j w[j] · block[k - anchor + j]``, each product and
each sum rounded once, in tap order. NumPy does that column band by column band, so that the rows
of a band stay in cache while every tap reads them. It is cheaper than OpenCV's column filter,
which copies each row into its own buffer, filters every row of the block (a slab's halo slices
included) and leaves the wanted rows to be copied out: on a 9-slice slab of 1024² float32 slices
(5 kept) the box's z pass took 4.6 ms against 8.6 ms, one thread. A slab of raw 16-bit integers
is converted band by band as it is read: reading it and its box pass took 7 ms, against 10 ms for
converting the slab to float32 first and summing that (13 ms with OpenCV's column filter), and the
slab is half the size.

A sample's bytes depend on its taps only, never on the band or the block it lies in: each output
is computed by the same sequence of elementwise operations wherever it is. A vector whose weights
are all equal (a box) is summed first and scaled once, as ``(x0 + x1 + … + x4) · w``.
"""

from __future__ import annotations

import math

import numpy as np

# Bytes of one row of a band in the compute dtype: a slab's 9 rows of 128 KiB (1024² float32 slices,
# 5 kept) fit a 2 MiB L2 with the kept rows. Measured, one thread, box and gaussian 5-tap z passes on
# raw uint16 slabs: 32768 columns 10-25% ahead of 16384 and 65536.
BAND_BYTES = 1 << 17
# numpy.pad's names for scipy.ndimage's boundary rules, applied to the row indices
_INDEX_PADS = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}


def source_rows(size: int, before: int, after: int, edge_mode: str) -> np.ndarray:
    """For each position from ``-before`` to ``size + after``, the row a border rule reads there (-1: zero).

    >>> source_rows(4, 2, 2, "reflect").tolist()
    [1, 0, 0, 1, 2, 3, 3, 2]
    >>> source_rows(4, 1, 1, "constant").tolist()
    [-1, 0, 1, 2, 3, -1]
    """
    index = np.arange(size)
    if edge_mode == "constant":
        return np.pad(index, (before, after), mode="constant", constant_values=-1)
    return np.pad(index, (before, after), mode=_INDEX_PADS[edge_mode])


def filter_along(
    block: np.ndarray, vector: np.ndarray, axis: int, anchor: int, edge_mode: str, rows: slice,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """``correlate1d(block, vector, axis, mode=edge_mode)`` with ``anchor`` taps before the sample, its ``rows`` only.

    The block is seen as matrices (``axis``, everything after it); ``rows`` are the positions
    along ``axis`` computed. ``constant`` reads zeros past the block (a non-zero cval is padded in
    by the caller). The result is in ``dtype`` (default: the block's): a block of integers that
    ``dtype`` holds exactly (a volume's raw slab) is converted as each band is read, which gives the
    bytes of converting it first without writing the converted block.
    """
    dtype = block.dtype if dtype is None else np.dtype(dtype)
    size = block.shape[axis]
    matrices = block.reshape(math.prod(block.shape[:axis]), size, -1)
    kept = range(size)[rows]
    taps = vector.size
    index = source_rows(size, anchor, taps - 1 - anchor, edge_mode)
    weights = vector.astype(dtype)
    constant = bool(np.all(weights == weights[0]))
    out = np.empty((matrices.shape[0], len(kept), matrices.shape[2]), dtype=dtype)
    columns = max(1, BAND_BYTES // dtype.itemsize)
    scratch = None if constant else np.empty((len(kept), min(columns, matrices.shape[2])), dtype=dtype)
    # per tap: the source row of each kept output (as a slice where they run one by one)
    reads = [_rows_read(index[k + j] for k in kept) for j in range(taps)]
    # raw integers are converted a band at a time into a buffer that stays in cache, once per row read
    converted = None if block.dtype == dtype else np.empty((size, min(columns, matrices.shape[2])), dtype=dtype)
    for matrix, target in zip(matrices, out):
        for first in range(0, matrix.shape[1], columns):
            band = slice(first, first + columns)
            source = matrix[:, band]
            if converted is not None:
                source = converted[:, : source.shape[1]]
                np.copyto(source, matrix[:, band], casting="safe")
            _weighted_sum(source, target[:, band], reads, weights, constant, scratch)
    return out.reshape(*block.shape[:axis], len(kept), *block.shape[axis + 1 :])


def _rows_read(sources) -> tuple[slice, slice | np.ndarray]:
    """(outputs that read a row, the rows they read): a slice where the rows run one by one."""
    sources = np.fromiter(sources, dtype=np.intp)
    valid = np.flatnonzero(sources >= 0)  # a constant border's zeros sit at the ends only
    if valid.size == 0:
        return slice(0, 0), slice(0, 0)
    outputs = slice(int(valid[0]), int(valid[-1]) + 1)
    read = sources[outputs]
    if np.all(np.diff(read) == 1):
        return outputs, slice(int(read[0]), int(read[-1]) + 1)
    return outputs, read


def _weighted_sum(
    source: np.ndarray, target: np.ndarray, reads: list, weights: np.ndarray, constant: bool,
    scratch: np.ndarray | None,
) -> None:
    """``target = Σ_j weights[j] · source[reads[j]]`` in tap order (a box: the sum, then one product)."""
    rows = target.shape[0]
    if all(outputs == slice(0, rows) for outputs, _ in reads):
        _sum_rows(target, [source[read] for _, read in reads], weights, constant, scratch)
        return
    # A constant border: each output sums the taps that read inside the block, in the same order
    # and by the same operations as above, so an output far from the border has the same bytes.
    for row in range(rows):
        taps = [(_read_at(outputs, read, row), weight) for (outputs, read), weight in zip(reads, weights)
                if outputs.start <= row < outputs.stop]  # in tap order
        if taps:
            taken = np.asarray([weight for _, weight in taps], dtype=weights.dtype)
            _sum_rows(target[row], [source[at] for at, _ in taps], taken, constant, None)
        else:
            target[row] = 0


def _read_at(outputs: slice, read: slice | np.ndarray, row: int) -> int:
    offset = row - outputs.start
    return read.start + offset if isinstance(read, slice) else int(read[offset])


def _sum_rows(
    target: np.ndarray, parts: list[np.ndarray], weights: np.ndarray, constant: bool, scratch: np.ndarray | None
) -> None:
    # dtype= makes raw integer parts convert before the operation (not wrap in their own type)
    if constant:
        if len(parts) > 1:
            np.add(parts[0], parts[1], out=target, dtype=target.dtype)
        else:
            np.copyto(target, parts[0])
        for part in parts[2:]:
            target += part
        target *= weights[0]
        return
    np.multiply(parts[0], weights[0], out=target, dtype=target.dtype)
    term = np.empty_like(target) if scratch is None else scratch[: target.shape[0], : target.shape[-1]]
    for part, weight in zip(parts[1:], weights[1:]):
        np.multiply(part, weight, out=term, dtype=target.dtype)
        target += term
