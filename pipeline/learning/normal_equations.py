"""The normal equations of a correlation kernel, accumulated tile by tile without a design matrix.

The model: ``y_k[p] = Σ_c Σ_a w[k, c, a] · x_c[p + a] (+ b_k)`` at the valid positions ``p`` of the
tile (window ``x[p : p + m]`` wholly inside), i.e. ``scipy.signal.correlate(x, w, mode="valid")`` per
channel. Its least-squares fit needs only the parts ``X^T X`` (``gram``), ``X^T y`` (``cross``),
``Σ y²`` and ``Σ y`` of the design matrix ``X`` (one row per position, one column per unknown), and
parts of disjoint sets of positions add up: a tree reduction over tiles gives the image's and the
collection's. Unknowns are ordered as ``weights.reshape(K, -1)`` of PyTorch's ``(K, C, *kernel)``
layout (channel, then offset in C order), the bias last; everything is accumulated in float64.

The Gram matrix, exactly and cheaply
------------------------------------
``G[(c, a), (c', b)] = Σ_{p in [0, V)} x_c[p + a] · x_c'[p + b]``. With the lag ``d = b - a`` and
``q = p + a`` this is the sum of ``x_c[q] · x_c'[q + d]`` over the box ``[a, a + V)``, a box that
shifts with ``a``. Along each axis the box is the whole tile ``[0, L)`` (``L = V + m - 1``) minus a
*low band* ``[0, a)`` and a *high band* ``[a + V, L)``, both thinner than the kernel. Multiplying the
per-axis splits, the box sum is a signed sum over the subsets ``B`` of axes that are cut to a band:

* ``B = ∅``: the correlation of ``x_c`` with ``x_c'`` over the whole tile at lags ``|d| < m`` — one
  FFT-based correlation per channel pair, independent of ``a``;
* ``B ≠ ∅``: along the axes of ``B`` only the ``2 (m - 1)`` samples at the tile's two edges take part;
  for each edge sample and each lag along ``B`` the sum over the other axes is again a correlation
  (FFT over those axes, a plain product when ``B`` is every axis), and the prefix and suffix sums over the
  band that each ``a`` cuts off give every offset at once (``_cut_off``).

The terms are kept by lag (``(m, 2m - 1)`` per axis) and spread to ``(a, b)`` at the end. Nothing is
approximated: the result equals ``X^T X`` to rounding (relative 1e-15 on the largest entry).

Cost, for a tile of ``L**D`` samples, ``C`` channels, ``K`` targets and an ``m**D`` kernel:

* the design matrix way: ``V**D · P²`` multiply-adds (``P = C · m**D``), e.g. 2048² · 225² ≈ 2·10¹¹
  for a 15×15 kernel, and ``P`` times the tile in memory;
* here: ``C + K`` forward and ``C (C + 1) / 2 + C K`` inverse FFTs of ``(L + m)**D`` samples, plus the
  bands: ``2 (m - 1) (2m - 1)`` FFTs of a ``(D-1)``-dimensional slice per cut axis, and for ``B`` =
  every axis ``(2 (m - 1) (2 m - 1))**D`` products. Memory: a few tiles, plus ``C (C + 1) / 2``
  lag tables of ``Π m (2m - 1)`` values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import prod
from typing import Sequence

import numpy as np

from pipeline.learning.correlation import at_lags, fft_shape, spectra, window_products
from pipeline.learning.tiles import block_pair, kernel_extent

# Spectra of whole tiles are large; the Gram term of the whole tile takes channel pairs in groups
# whose products stay within this many bytes.
PAIR_BUDGET_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)
class NormalParts:
    """The sufficient statistics of a least-squares kernel fit over a set of positions.

    ``gram`` is ``X^T X`` (P, P), ``cross`` is ``X^T y`` (P, K), ``y_sq`` and ``y_sum`` are the sums of
    the targets' squares and values per output (K,), ``count`` the number of positions. The layout
    (``kernel_shape``, ``channels``, ``bias``) fixes what the P unknowns are. Parts add with ``+``
    (and ``sum()``), as a tree reduction combines them.
    """

    gram: np.ndarray
    cross: np.ndarray
    y_sq: np.ndarray
    y_sum: np.ndarray
    count: int
    kernel_shape: tuple[int, ...]
    channels: int
    bias: bool

    @property
    def outputs(self) -> int:
        return self.cross.shape[1]

    @property
    def unknowns(self) -> int:
        return self.gram.shape[0]

    @classmethod
    def zeros(cls, kernel_shape: Sequence[int], channels: int, outputs: int, *, bias: bool) -> NormalParts:
        """The parts of no position at all (the neutral element of ``+``)."""
        kernel = kernel_extent(kernel_shape)
        unknowns = channels * prod(kernel) + int(bias)
        return cls(np.zeros((unknowns, unknowns)), np.zeros((unknowns, outputs)), np.zeros(outputs),
                   np.zeros(outputs), 0, kernel, channels, bias)

    @property
    def layout(self) -> tuple[tuple[int, ...], int, bool, int]:
        """(kernel_shape, channels, bias, outputs): what must agree for parts to add."""
        return self.kernel_shape, self.channels, self.bias, self.outputs

    def __add__(self, other: NormalParts) -> NormalParts:
        if not isinstance(other, NormalParts):
            return NotImplemented
        if self.layout != other.layout:
            raise ValueError("cannot add normal equations of different layouts (kernel, channels, bias, "
                             f"outputs): {self.layout} and {other.layout}")
        return NormalParts(self.gram + other.gram, self.cross + other.cross, self.y_sq + other.y_sq,
                           self.y_sum + other.y_sum, self.count + other.count, self.kernel_shape,
                           self.channels, self.bias)

    def __radd__(self, other: object) -> NormalParts:
        # sum() starts from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented


def accumulate(
    x_block: np.ndarray,
    y_block: np.ndarray,
    kernel_shape: Sequence[int],
    *,
    bias: bool,
    valid_region: Sequence[slice] | None = None,
) -> NormalParts:
    """The normal-equation parts of one tile (see the module docstring for the method and its cost).

    Parameters
    ----------
    x_block : ndarray, (C, *spatial)
        The input samples of the windows of the counted positions: the counted shape plus
        ``m - 1`` per axis (``pipeline.learning.tiles.tile_window`` says what to read).
    y_block : ndarray, (K, *own region)
        The targets of the tile's own region.
    kernel_shape : sequence of int
        One size per spatial axis.
    bias : bool
        Whether to add a constant unknown per output (the last row and column).
    valid_region : sequence of slice, optional
        The positions of ``y_block`` to count (``TileWindow.valid``); all of them by default.

    Returns
    -------
    NormalParts
        float64 parts; summing those of disjoint tiles gives those of their union.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(6.0)[None]
    >>> parts = accumulate(x, x[:, 1:-1], (3,), bias=False)
    >>> parts.count, parts.gram.shape, parts.cross[:, 0].tolist()
    (4, (3, 3), [20.0, 30.0, 40.0])
    """
    kernel = kernel_extent(kernel_shape)
    x, y = block_pair(x_block, y_block, kernel, valid_region)
    channels, outputs = x.shape[0], y.shape[0]
    valid = y.shape[1:]
    if min(valid) == 0:
        return NormalParts.zeros(kernel, channels, outputs, bias=bias)
    spatial = tuple(range(1, len(kernel) + 1))
    shape = fft_shape(length + m - 1 for length, m in zip(x.shape[1:], kernel))
    x_hat = spectra(x, spatial, shape)
    # r[k, c, a] = Σ_p y_k[p] x_c[p + a]
    cross = window_products(x_hat, spectra(y, spatial, shape), shape, kernel).reshape(outputs, -1).T
    gram = _gram(x, x_hat, valid, kernel, shape)
    y_sum, count = np.sum(y, axis=spatial), prod(valid)
    if bias:  # the constant unknown's column of X holds ones: its products are box sums
        box = _box_sums(x, valid, kernel).reshape(-1, 1)
        gram = np.block([[gram, box], [box.T, np.full((1, 1), float(count))]])
        cross = np.vstack([cross, y_sum[None]])
    return NormalParts(gram, cross, np.sum(y**2, axis=spatial), y_sum, count, kernel, channels, bias)


def _gram(x: np.ndarray, x_hat: np.ndarray, valid: tuple[int, ...], kernel: tuple[int, ...],
          shape: tuple[int, ...]) -> np.ndarray:
    """``X^T X`` of the kernel weights (C·M, C·M) from lag tables, one per channel pair ``c <= c'``."""
    channels, size = x.shape[0], prod(kernel)
    pairs = [(c, c2) for c in range(channels) for c2 in range(c, channels)]
    lags = np.zeros((len(pairs), *(n for m in kernel for n in (m, 2 * m - 1))))
    cuttable = [axis for axis, m in enumerate(kernel) if m > 1]  # a size-1 axis has empty bands
    for count in range(len(cuttable) + 1):
        for banded in itertools.combinations(cuttable, count):
            _add_band_term(lags, x, x_hat, banded, valid, kernel, shape, pairs)
    blocks = lags[(slice(None), *_lag_index(kernel))].reshape(len(pairs), size, size)
    gram = np.empty((channels * size, channels * size))
    for (c, c2), block in zip(pairs, blocks):
        gram[c * size:(c + 1) * size, c2 * size:(c2 + 1) * size] = block
        gram[c2 * size:(c2 + 1) * size, c * size:(c + 1) * size] = block.T
    return gram


def _add_band_term(lags: np.ndarray, x: np.ndarray, x_hat: np.ndarray, banded: tuple[int, ...],
                   valid: tuple[int, ...], kernel: tuple[int, ...], shape: tuple[int, ...],
                   pairs: list[tuple[int, int]]) -> None:
    """Add the term of the subset ``banded`` of axes cut to their edge bands to the lag tables.

    ``lags[pair]`` has axes ``(a_i, d_i + m_i - 1)`` per spatial axis ``i``. Along a cut axis the term
    depends on ``a_i`` through the cut-off sums; along the others it is a correlation over the whole
    tile, the same for every ``a_i`` (broadcast).
    """
    ndim = len(kernel)
    rest = tuple(axis for axis in range(ndim) if axis not in banded)
    rest_shape = tuple(shape[axis] for axis in rest)
    rest_lags = [(1 - kernel[axis], kernel[axis]) for axis in rest]
    rest_axes = tuple(1 + axis for axis in rest)  # of the (channel, *spatial) arrays
    # Along each cut axis: the 2 (m - 1) edge samples x[e], and their partners x'[e + d] for every
    # |d| < m, zero outside the tile, which lie within 3 (m - 1) samples of each end once padded.
    edges = x
    partners = np.pad(x, [(0, 0)] + [(kernel[axis] - 1,) * 2 if axis in banded else (0, 0) for axis in range(ndim)])
    for axis in banded:
        m, inner = kernel[axis], valid[axis]
        edges = np.take(edges, np.r_[0:m - 1, inner:inner + m - 1], axis=1 + axis)
        partners = np.take(partners, np.r_[0:3 * (m - 1), inner:inner + 3 * (m - 1)], axis=1 + axis)
    if banded and not rest:
        _add_corner_term(lags, edges, partners, kernel, pairs)
        return
    edges_hat = spectra(edges, rest_axes, rest_shape) if banded else x_hat
    term_shape = tuple(n for axis, m in enumerate(kernel) for n in ((m,) if axis in banded else (1, 2 * m - 1)))
    # Whole-tile spectra are large: as many channel pairs at a time as fit in the budget.
    group = max(1, PAIR_BUDGET_BYTES // (edges_hat[0].nbytes or 1))
    groups = [np.array(pairs[i:i + group]).T for i in range(0, len(pairs), group)]
    for shifts in itertools.product(*(range(2 * kernel[axis] - 1) for axis in banded)):  # d + m - 1
        shifted = partners
        for axis, shift in zip(banded, shifts):
            m = kernel[axis]
            shifted = np.take(shifted, np.r_[0:m - 1, 3 * (m - 1):4 * (m - 1)] + shift, axis=1 + axis)
        shifted_hat = spectra(shifted, rest_axes, rest_shape) if banded else x_hat
        lag_of = dict(zip(banded, shifts))
        index = tuple(i for axis in range(ndim)
                      for i in ((slice(None), lag_of[axis]) if axis in banded else (slice(None), slice(None))))
        first = 0
        for firsts, seconds in groups:
            term = at_lags(np.conj(edges_hat[firsts]) * shifted_hat[seconds], rest_axes, rest_shape, rest_lags)
            for axis in banded:
                term = _cut_off(term, kernel[axis], 1 + axis)
            lags[(slice(first, first + len(firsts)), *index)] += term.reshape(len(firsts), *term_shape)
            first += len(firsts)


def _add_corner_term(lags: np.ndarray, edges: np.ndarray, partners: np.ndarray, kernel: tuple[int, ...],
                     pairs: list[tuple[int, int]]) -> None:
    """The term of every axis cut to its bands: plain products of the corners' samples, no FFT.

    ``(2 (m - 1) (2 m - 1))**D`` products; the lags of the last axis are taken at once (a sliding
    window of the partners), the others one by one: a loop of ``(2 m - 1)**(D - 1)`` steps.
    """
    ndim, last = len(kernel), len(kernel) - 1
    firsts, seconds = np.array(pairs).T
    m = kernel[last]
    window = np.r_[0:m - 1, 3 * (m - 1):4 * (m - 1)][None, :] + np.arange(2 * m - 1)[:, None]  # (lag, edge sample)
    corners = edges[firsts][..., None, :]  # (pair, *edges, 1, edges of the last axis)
    for shifts in itertools.product(*(range(2 * kernel[axis] - 1) for axis in range(last))):
        shifted = partners
        for axis, shift in enumerate(shifts):
            size = kernel[axis]
            shifted = np.take(shifted, np.r_[0:size - 1, 3 * (size - 1):4 * (size - 1)] + shift, axis=1 + axis)
        term = corners * np.take(shifted[seconds], window, axis=ndim)  # (pair, *edges, lag, edge)
        term = _cut_off(term, m, ndim + 1)
        for axis in range(last):
            term = _cut_off(term, kernel[axis], 1 + axis)
        index = tuple(i for axis in range(last) for i in (slice(None), shifts[axis])) + (slice(None), slice(None))
        lags[(slice(None), *index)] += np.swapaxes(term, -1, -2)


def _box_sums(x: np.ndarray, valid: tuple[int, ...], kernel: tuple[int, ...]) -> np.ndarray:
    """``Σ_p x_c[p + a]`` (C, *kernel): per axis the whole sum minus the edge bands each ``a`` cuts off."""
    sums = x
    for axis, (m, v) in enumerate(zip(kernel, valid), start=1):
        edges = np.take(sums, np.r_[0:m - 1, v:v + m - 1], axis=axis)
        sums = np.sum(sums, axis=axis, keepdims=True) + _cut_off(edges, m, axis)
    return sums


def _cut_off(edges: np.ndarray, m: int, axis: int) -> np.ndarray:
    """Minus what each offset ``a`` in ``[0, m)`` cuts off the ``2 (m - 1)`` edge values along ``axis``.

    The box ``[a, a + V)`` leaves out the low edge values ``e < a`` and the high ones ``j >= a``:
    a prefix and a suffix sum (cumulative sums, not a matrix product: no BLAS call per lag).
    """
    low, high = np.split(edges, 2, axis=axis)
    zero = np.zeros(edges.shape[:axis] + (1,) + edges.shape[axis + 1:])
    prefix = np.concatenate([zero, np.cumsum(low, axis=axis)], axis=axis)
    suffix = np.concatenate([np.flip(np.cumsum(np.flip(high, axis), axis=axis), axis), zero], axis=axis)
    return -(prefix + suffix)


def _lag_index(kernel: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Fancy index from lag tables ``(a_i, d_i + m_i - 1)`` to the Gram layout ``(*a, *b)``."""
    grid = np.indices(kernel + kernel)
    ndim = len(kernel)
    return tuple(index for axis, m in enumerate(kernel)
                 for index in (grid[axis], grid[ndim + axis] - grid[axis] + m - 1))
