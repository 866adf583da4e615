"""Bands of padded rows against numpy's padding of the whole block, for every border rule."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.steps.padding import PaddedRows, pad_block
from pipeline.steps.strategies import NUMPY_PAD_MODES


@pytest.mark.parametrize("mode", sorted(NUMPY_PAD_MODES))
@pytest.mark.parametrize(("shape", "kernel"), [((2, 7, 9), (5, 3)), ((1, 2, 3), (9, 9)), ((3, 1, 1), (2, 2)), ((2, 40, 5), (3, 8))])
def test_bands_of_rows_are_the_rows_of_the_padded_block(mode: str, shape, kernel) -> None:
    rng = np.random.default_rng(5)
    block = np.moveaxis(rng.uniform(-1, 1, (*shape[1:], shape[0])), -1, 0)  # channels last in memory, as decoded
    want = np.pad(block, [(0, 0)] + [(m // 2, m - 1 - m // 2) for m in kernel], mode=NUMPY_PAD_MODES[mode],
                  **({"constant_values": 0.5} if mode == "constant" else {}))
    assert np.array_equal(pad_block(block, kernel, mode, 0.5), want)
    rows = PaddedRows(block, kernel, mode, 0.5)
    assert rows.shape == want.shape
    for start, stop in ((0, want.shape[1]), (1, 3), (want.shape[1] - 2, want.shape[1]), (kernel[0] // 2, kernel[0] // 2 + 1)):
        assert np.array_equal(rows[start:stop], want[:, start:stop]), (start, stop)
