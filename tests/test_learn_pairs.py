"""A pair read in pieces (tiles of TIFFs, slabs of volumes) against the pair read whole and the explicit
design matrix: the pieces' normal equations add up to the image's, and each piece reads only its window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from pipeline.errors import InputError
from pipeline.learn_config import LearnConfig
from pipeline.learn_pairs import Pair, example, pair_shape, piece_arrays, pieces
from pipeline.learning import accumulate, tile_window
from pipeline.sources import tiled
from pipeline.steps.strategies import NUMPY_PAD_MODES
from test_normal_equations import design_matrix, photo

KIB = 1024


def _config(root: Path, kernel: dict[str, Any], *, tile: Any = "auto", layout: str = "images", color: str = "gray") -> LearnConfig:
    sides = {"layout": layout, "color": color}
    return LearnConfig.model_validate({
        "inputs": {"paths": str(root / "in.tif"), "tile": tile, **sides}, "targets": {"paths": str(root / "out.tif"), **sides},
        "kernel": kernel, "output": {"path": str(root / "fit")},
    })


def _write(root: Path, x: np.ndarray, y: np.ndarray, **options: Any) -> Pair:
    tifffile.imwrite(root / "in.tif", x, photometric="minisblack", **options)
    tifffile.imwrite(root / "out.tif", y, photometric="minisblack", **options)
    return Pair(str(root / "in.tif"), str(root / "out.tif"))


def _summed(pair: Pair, config: LearnConfig, budget: int = 96 * KIB * KIB):
    found = pieces(pair, pair_shape(pair, config), config, budget)
    return found, sum(accumulate(*piece_arrays(piece, config), config.kernel.shape, bias=config.kernel.bias) for piece in found)


@pytest.mark.parametrize("tile", [3, 7, 16])  # smaller than the 5x7 kernel, about as large, many file tiles
@pytest.mark.parametrize("target", ["same-size", "valid-size"])
def test_tiles_add_up_to_the_design_matrix_of_the_image(tmp_path: Path, tile: int, target: str) -> None:
    x = photo((37, 45))[0]
    y = np.random.default_rng(1).normal(size=(33, 39) if target == "valid-size" else x.shape)
    pair = _write(tmp_path, x, y)  # stripped: tiles of any size
    found, parts = _summed(pair, _config(tmp_path, {"shape": [5, 7], "bias": True}, tile=tile))
    assert len(found) > 1 and all(piece.by_region for piece in found)
    design = design_matrix(x[None], (5, 7), bias=True)
    counted = (y if target == "valid-size" else y[2:-2, 3:-3]).ravel()
    np.testing.assert_allclose(parts.gram, design.T @ design, rtol=1e-12, atol=1e-12 * np.abs(design.T @ design).max())
    np.testing.assert_allclose(parts.cross[:, 0], design.T @ counted, rtol=1e-11, atol=1e-11 * np.abs(design.T @ counted).max())
    assert parts.count == design.shape[0]


@pytest.mark.parametrize("boundary", ["reflect", "mirror", "nearest", "wrap", "constant"])
def test_same_mode_tiles_extend_the_image_by_the_boundary_rule(tmp_path: Path, boundary: str) -> None:
    x, y = photo((26, 30))[0], np.random.default_rng(2).normal(size=(26, 30))
    pair = _write(tmp_path, x, y, tile=(16, 16))
    config = _config(tmp_path, {"shape": [5, 3], "mode": "same", "boundary": boundary}, tile=16)
    found, parts = _summed(pair, config)
    assert len(found) == 4
    extended = np.pad(x, [(2, 2), (1, 1)], mode=NUMPY_PAD_MODES[boundary])
    design = design_matrix(extended[None], (5, 3), bias=False)
    np.testing.assert_allclose(parts.gram, design.T @ design, rtol=1e-12)
    np.testing.assert_allclose(parts.cross[:, 0], design.T @ y.ravel(), rtol=1e-11, atol=1e-11 * np.abs(x).max() * np.abs(y).sum())


def test_a_tile_reads_only_its_window_from_the_file(tmp_path: Path, monkeypatch) -> None:
    """Memory follows the tile: every region read is at most a tile grown by the kernel's reach."""
    x = photo((128, 96))[0]
    pair = _write(tmp_path, x, signal.correlate(x, np.ones((9, 9)), mode="valid"), tile=(32, 32))
    boxes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    read = tiled.read_region

    def recording(path: str, rows: tuple[int, int], columns: tuple[int, int], **options: Any) -> np.ndarray:
        boxes.append((rows, columns))
        return read(path, rows, columns, **options)

    monkeypatch.setattr("pipeline.learn_pairs.read_region", recording)
    for boundary_mode in ({"mode": "valid"}, {"mode": "same", "boundary": "wrap"}):
        boxes.clear()
        found, parts = _summed(pair, _config(tmp_path, {"shape": [9, 9], **boundary_mode}, tile=32))
        assert len(found) >= 12 and parts.count > 0
        assert max((r1 - r0) * (c1 - c0) for (r0, r1), (c0, c1) in boxes) <= (32 + 8) ** 2


def test_the_budget_decides_whole_or_tiles(tmp_path: Path) -> None:
    x = photo((64, 64))[0]
    pair = _write(tmp_path, x, x, tile=(16, 16))
    config = _config(tmp_path, {"shape": [3, 3]})
    shape = pair_shape(pair, config)
    assert [p.by_region for p in pieces(pair, shape, config, 8 * KIB * KIB)] == [False]  # 64² pairs fit 8 MiB whole
    tiles = pieces(pair, shape, config, 256 * KIB)
    assert len(tiles) > 1 and all(p.by_region for p in tiles)
    sizes = {own.stop - own.start for p in tiles for own in p.own}
    assert max(sizes) % 16 == 0  # whole file tiles
    assert [p.by_region for p in pieces(pair, shape, _config(tmp_path, {"shape": [3, 3]}, tile="whole"), 256 * KIB)] == [False]


def test_volumes_are_read_by_slabs_and_add_up(tmp_path: Path) -> None:
    x = photo((12, 10, 11))[0]
    y = signal.correlate(x, np.random.default_rng(3).normal(size=(3, 3, 3)), mode="valid")
    pair = _write(tmp_path, x, y)
    config = _config(tmp_path, {"shape": [3, 3, 3], "bias": True}, layout="volume")
    found, parts = _summed(pair, config, budget=16 * KIB)  # a few slices a slab
    assert len(found) > 3 and all(p.own[1:] == (slice(0, 10), slice(0, 11)) for p in found)
    whole = accumulate(x[None], y[None], (3, 3, 3), bias=True)
    np.testing.assert_allclose(parts.gram, whole.gram, rtol=1e-12)
    np.testing.assert_allclose(parts.cross, whole.cross, rtol=1e-11)


def test_non_tiff_pairs_are_read_whole_and_tile_n_says_why_not(tmp_path: Path) -> None:
    import imageio.v3 as iio

    image = (photo((40, 40))[0] * 100).clip(0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "in.png", image)
    tifffile.imwrite(tmp_path / "out.tif", image.astype(np.float64))
    pair = Pair(str(tmp_path / "in.png"), str(tmp_path / "out.tif"))
    config = _config(tmp_path, {"shape": [3, 3]})
    assert [p.by_region for p in pieces(pair, pair_shape(pair, config), config, 1024)] == [False]
    with pytest.raises(InputError, match="in.png' is not a local TIFF; a pair is read by tiles only when both"):
        pieces(pair, pair_shape(pair, config), _config(tmp_path, {"shape": [3, 3]}, tile=8), 1024)


def test_the_example_is_the_middle_of_the_pair_with_its_windows(tmp_path: Path) -> None:
    x = photo((300, 280))[0]
    pair = _write(tmp_path, x, x, tile=(16, 16))
    inputs, targets = example(pair, _config(tmp_path, {"shape": [5, 5]}))
    assert targets.shape == (1, 256, 256) and inputs.shape == (1, 260, 260)
    window = tile_window((300, 280), (5, 5), (slice(0, 300), slice(0, 280)))
    middle = sliding_window_view(x[window.x], (5, 5))[20:276, 10:266, 2, 2]
    np.testing.assert_array_equal(targets[0], middle)
