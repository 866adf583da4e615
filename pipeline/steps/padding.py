"""A block extended by what a kernel reads beyond it, under a border rule: whole, or a band of rows
at a time (what a bank's gemm lowers), with the same values."""

from __future__ import annotations

import numpy as np

from pipeline.steps.strategies import NUMPY_PAD_MODES


def pad_block(block: np.ndarray, kernel: tuple[int, ...], edge_mode: str, cval: float) -> np.ndarray:
    """The block extended by what the kernel reads beyond it (scipy's centring), with the border rule."""
    widths = [(0, 0)] + [(m // 2, m - 1 - m // 2) for m in kernel]
    extra = {"constant_values": cval} if edge_mode == "constant" else {}
    return np.pad(block, widths, mode=NUMPY_PAD_MODES[edge_mode], **extra)


class PaddedRows:
    """Rows of ``pad_block(block, kernel, ...)`` made on demand, so that gemm's bands never need the
    whole block padded (a copy as large as the block, in fresh pages, for every image).

    np.pad pads one axis after the other, each sample taking the value of one source sample (or
    the constant), so a padded band is the source rows its padded row indices name, padded along
    x by its padded column indices: the indices are np.pad's own, of ``arange``.
    """

    def __init__(self, block: np.ndarray, kernel: tuple[int, ...], edge_mode: str, cval: float) -> None:
        self.block, self.cval, self.constant = block, cval, edge_mode == "constant"
        (kh, kw), (channels, height, width) = kernel, block.shape
        extra = {"constant_values": -1} if self.constant else {}  # -1: the constant, not a sample
        self.rows = np.pad(np.arange(height), (kh // 2, kh - 1 - kh // 2), mode=NUMPY_PAD_MODES[edge_mode], **extra)
        self.columns = np.pad(np.arange(width), (kw // 2, kw - 1 - kw // 2), mode=NUMPY_PAD_MODES[edge_mode], **extra)
        self.left = kw // 2
        self.shape = (channels, height + kh - 1, width + kw - 1)

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Padded rows ``rows`` (a slice of the padded block's rows), all channels and columns."""
        sources = self.rows[rows]
        width = self.block.shape[2]
        band = np.empty((self.shape[0], len(sources), self.shape[2]), dtype=self.block.dtype)
        inner = band[:, :, self.left : self.left + width]
        if len(sources) and sources[0] >= 0 and np.array_equal(sources, np.arange(sources[0], sources[0] + len(sources))):
            inner[...] = self.block[:, sources[0] : sources[0] + len(sources)]  # away from the edges: a slice
        else:
            inner[...] = self.block[:, np.maximum(sources, 0)]
            inner[:, sources < 0] = self.cval
        for edge in (slice(0, self.left), slice(self.left + width, None)):
            band[:, :, edge] = inner[:, :, np.maximum(self.columns[edge], 0)]
            if self.constant:
                band[:, :, edge][..., self.columns[edge] < 0] = self.cval
        return band
