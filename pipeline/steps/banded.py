"""A layer, the pointwise steps after it and the pool ending their pass, computed band by band.

A ``same`` layer's K maps are as large as the image K times over; the pool after it keeps a
quarter of them (2×2). The layer's bank hands its result over a band of rows at a time
(``bank.Bands``), each band a multiple of the pool's stride so that no window straddles two:
the activations and the pool run on it while it is in cache, and only the pooled block is ever
allocated. A max or min pool goes before the activations when they commute with it to the bit
(``order_preserving``: relu, clip) and the bank makes no -0.0 (gemm), and before the bias too (the
bank adds it after): the same bytes, on a quarter of the values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.steps.base import ImageShape, Step


def bands_into_pool(steps: Sequence[Step]) -> bool:
    """A layer computed band by band, then pointwise steps, then the pool ending the pass."""
    return (hasattr(steps[0], "same_bands") and len(steps) > 1 and hasattr(steps[-1], "joins_pass")
            and all(step.fusion == "pointwise" for step in steps[1:-1]))


def banded(block: np.ndarray, layer: Step, tail: Sequence[Step], image: ImageShape, *,
            keep: tuple[slice, ...] | None, **options: Any) -> np.ndarray:
    """The layer's result through the tail (pointwise steps, a pool) band by band of rows: each
    band is pooled while it is in cache, and only the pooled block is ever allocated."""
    spatial = image.spatial_ndim
    kept = tuple(range(n)[cut] for n, cut in zip(block.shape, keep or (slice(None),) * block.ndim))
    layered = layer.output(image)
    band_image = ImageShape((*layered.shape[:-spatial], *map(len, kept[-spatial:])), layered.axes)
    out_image = band_image
    for step in tail:
        out_image = step.output(out_image)
    out = np.empty((len(kept[0]), *out_image.shape), dtype=block.dtype)
    pool, rows = tail[-1], tail[-1].stride[0]
    # a max or min pool goes first, on 1/area of the values, when the steps before it commute with it
    first_pool = (pool.pool.function in ("max", "min") and layer.bands_without_negative_zeros(block.dtype)
                  and all(getattr(step, "order_preserving", False) for step in tail[:-1]))
    steps = (*tail[:-1],) if first_pool else tail

    def take(index: int, first: int, band: np.ndarray) -> None:
        piece, piece_image = band[np.newaxis], ImageShape(band.shape, band_image.axes)
        for step in steps:
            piece, piece_image = step.block(piece, piece_image), step.output(piece_image)
        out[index, ..., first // rows : first // rows + piece.shape[-2], :] = piece[0]

    reduce = (lambda band: pool.pool.apply(band)) if first_pool else None
    layer.same_bands(block, image, take, rows=rows, reduce=reduce, keep=keep, **options)
    return out
