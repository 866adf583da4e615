"""Built-in banks: shapes, orientations and what they respond to, against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.errors import KernelError
from pipeline.steps.banks import build_bank


def test_sobel_is_the_x_and_y_derivative_as_a_correlation() -> None:
    bank = build_bank("sobel")
    assert bank.shape == (2, 1, 3, 3)
    ramp = np.add.outer(np.zeros(9), np.arange(9.0))  # rises along x by 1 per sample
    responses = [ndimage.correlate(ramp, bank[k, 0])[4, 4] for k in range(2)]
    assert responses == [8.0, 0.0]  # Sobel's 1-2-1 smoothing and a 2-sample difference
    image = np.random.default_rng(2).standard_normal((12, 10))
    for k, axis in ((0, 1), (1, 0)):  # scipy's sobel along x (axis 1), then along y
        np.testing.assert_allclose(ndimage.correlate(image, bank[k, 0]), ndimage.sobel(image, axis=axis), atol=1e-12)


@pytest.mark.parametrize("name, params, channels", [("gabor", {}, 8), ("gabor", {"orientations": 6, "wavelengths": [5.0]}, 6),
                                                    ("log", {}, 3), ("log", {"sigmas": [1.5]}, 1), ("dog", {"sigmas": [1, 2]}, 2)])
def test_banks_are_zero_sum_and_odd_sized(name: str, params: dict, channels: int) -> None:
    bank = build_bank(name, params)
    assert bank.shape[:2] == (channels, 1) and bank.shape[2] == bank.shape[3] and bank.shape[2] % 2 == 1
    np.testing.assert_allclose(bank.sum(axis=(1, 2, 3)), 0.0, atol=1e-9)  # flat regions give 0


def test_gabor_orientations_pick_their_stripes() -> None:
    bank = build_bank("gabor", {"orientations": 2, "wavelengths": [6.0]})
    columns = np.tile(np.cos(2 * np.pi * np.arange(64) / 6.0), (64, 1))  # stripes varying along x
    energy = [np.abs(ndimage.correlate(columns, bank[k, 0])[16:-16, 16:-16]).mean() for k in range(2)]
    assert energy[0] > 10 * energy[1]  # theta 0 responds to variation along x


def test_log_finds_a_blob_of_its_scale() -> None:
    bank = build_bank("log", {"sigmas": [1.0, 3.0, 6.0]})
    blob = np.zeros((65, 65))
    blob[32, 32] = 1.0
    blob = ndimage.gaussian_filter(blob, 3.0 * np.sqrt(2) / np.sqrt(2))
    peaks = [abs(ndimage.correlate(blob, bank[k, 0])[32, 32]) for k in range(3)]
    assert int(np.argmax(peaks)) == 1


def test_bad_banks_name_what_there_is() -> None:
    with pytest.raises(KernelError, match="unknown bank 'sobol'; built-in banks: sobel, gabor, log, dog"):
        build_bank("sobol")
    with pytest.raises(KernelError, match=r"does not take \['sigma'\]; it takes sigmas"):
        build_bank("log", {"sigma": 2})
    with pytest.raises(KernelError, match="positive"):
        build_bank("dog", {"sigmas": [0]})
