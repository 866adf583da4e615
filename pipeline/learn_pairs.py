"""The pairs of a learn job: found, checked from their headers, and read piece by piece.

A pair is (input image, target image). The fit counts the target at each *valid* position of the
model's grid, the positions whose kernel window lies inside it (``learning.tiles``): with ``mode:
valid`` the grid is the image; with ``mode: same`` it is the image extended by the kernel's reach
with the ``boundary`` rule, so that every pixel of the image is a valid position. A target has the
input's size, or the valid size (as ``scipy.signal.correlate(..., mode="valid")`` writes it) and
then starts at ``m // 2``.

A pair is read in *pieces*, one task each, whose own regions partition the counted positions:

* whole, one piece: images a worker's share of ``execution.memory_budget`` holds, and files that
  cannot be read by regions (JPEG, PNG, remote files);
* by tiles: local TIFF pairs beyond that share (or with ``inputs.tile: N``), through
  ``sources.tiled.read_region`` — only the file tiles a piece overlaps are decoded;
* by slabs of slices: volumes (``layout: volume``), as deep as the share allows.

A piece reads only the input samples of its positions' windows (its own region grown by the
kernel's reach, read from the file as ``pipeline run`` reads a tile's halo) and the targets of its
counted positions. The pieces' normal equations add up to exactly the image's, and a task holds
one piece, not one image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial, reduce
from math import isqrt, prod
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import InputConfig
from pipeline.errors import ConfigError, InputError
from pipeline.learn_config import LearnConfig
from pipeline.learning import tile_window
from pipeline.pixels import convert_pixels
from pipeline.sources.frames import TIFF_SUFFIXES, split_source
from pipeline.sources.images import declared_shape, read_image
from pipeline.sources.listing import list_images
from pipeline.sources.tiled import STRIP_TILE_STEP, block_regions, read_region, tiff_layout
from pipeline.sources.volume import read_slices, stack_shape, volume_shape
from pipeline.steps.strategies import NUMPY_PAD_MODES
from pipeline.storage import is_remote

# Bytes a piece's task holds per sample of its window, per channel of input and target: the float64
# samples, their spectra and the Gram terms' products (2 to 5 window-sized copies for 5×5 to 31×31
# kernels, measured with tracemalloc), and the decoded pixels with their conversion.
SAMPLE_BYTES = 48
# The picture of a fit shows at most this many positions per axis of each example.
EXAMPLE_SIZE = 256

Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Pair:
    input: str
    target: str


@dataclass(frozen=True)
class PairShape:
    """What a pair's headers say: the image's spatial shape and channels, the targets' shape and channels."""

    spatial: tuple[int, ...]
    channels: int
    outputs: int
    target: tuple[int, ...]
    offset: tuple[int, ...]  # where the targets start on the image: 0, or m // 2 for valid-sized ones


@dataclass(frozen=True)
class Piece:
    """One task's share of a pair: the own region of the model's grid whose valid positions it counts."""

    pair: Pair
    shape: PairShape
    own: tuple[slice, ...]
    by_region: bool  # read its regions from the files (tiles, slabs), or the pair whole


def pair_sources(config: LearnConfig) -> tuple[list[Pair], str]:
    """The (input, target) pairs and how they were paired: by file name, or by sorted order."""
    inputs = list_images(config.inputs.paths, config.inputs.storage_options)
    targets = list_images(config.targets.paths, config.targets.storage_options)
    stems = {Path(path).stem: path for path in targets}
    by_name = len(stems) == len(targets) and all(Path(path).stem in stems for path in inputs)
    how = config.pairing if config.pairing != "auto" else ("names" if by_name else "order")
    if how == "names":
        missing = [path for path in inputs if Path(path).stem not in stems]
        if missing:
            raise InputError(f"targets: no target named like {missing[0]!r} ({len(missing)} inputs without one); "
                             f"name them alike or set pairing: order", missing[0])
        return [Pair(path, stems[Path(path).stem]) for path in inputs], "names"
    if len(inputs) != len(targets):
        raise InputError(
            f"inputs and targets do not pair: {len(inputs)} input files but {len(targets)} target files "
            f"(paired by sorted order; the first unpaired: {(inputs + targets)[min(len(inputs), len(targets))]!r})"
        )
    return [Pair(a, b) for a, b in zip(inputs, targets)], "order"


def pair_shape(pair: Pair, config: LearnConfig) -> PairShape:
    """The pair's shapes from the files' headers, checked against each other and the kernel."""
    x_shape, y_shape = _declared(pair.input, config.inputs), _declared(pair.target, config.targets)
    kernel = tuple(config.kernel.shape)
    spatial = x_shape[1:]
    if len(kernel) != len(spatial):
        raise ConfigError(f"kernel.shape {list(kernel)} has {len(kernel)} axes but the images have {len(spatial)}")
    if any(m > n for m, n in zip(kernel, spatial)):
        raise ConfigError(f"kernel.shape {list(kernel)} is larger than the image {list(spatial)} of {pair.input!r}")
    valid = tuple(n - m + 1 for n, m in zip(spatial, kernel))
    if y_shape[1:] == spatial:
        offset = (0,) * len(kernel)
    elif y_shape[1:] == valid:
        offset = tuple(m // 2 for m in kernel)
    else:
        raise InputError(
            f"target {pair.target!r} has shape {list(y_shape[1:])} but its input {pair.input!r} has {list(spatial)}; "
            f"a target has the input's size or the valid size {list(valid)}", pair.target,
        )
    return PairShape(spatial, x_shape[0], y_shape[0], y_shape[1:], offset)


def pieces(pair: Pair, shape: PairShape, config: LearnConfig, budget: int) -> list[Piece]:
    """The pieces of one pair, for tasks of at most ``budget`` bytes (one worker's share)."""
    tiles = _tiles(pair, shape, config, budget)
    if tiles is None:
        return [Piece(pair, shape, tuple(slice(0, n) for n in grid_shape(shape, config)), by_region=False)]
    shift = _shift(config)
    kernel, grid = tuple(config.kernel.shape), grid_shape(shape, config)
    found = []
    for tile in itertools.product(*tiles):
        own = tuple(slice(start + s, stop + s) for (start, stop), s in zip(tile, shift))
        if min(v.stop - v.start for v in tile_window(grid, kernel, own).valid) > 0:  # a tile at the edge may count nothing
            found.append(Piece(pair, shape, own, by_region=True))
    return found


def example(pair: Pair, config: LearnConfig) -> tuple[np.ndarray, np.ndarray]:
    """The middle of a pair for the picture: at most ``EXAMPLE_SIZE`` positions per axis (one slice of a
    volume), as ``piece_arrays`` reads them."""
    shape = pair_shape(pair, config)
    grid, kernel = grid_shape(shape, config), tuple(config.kernel.shape)
    own = []
    for axis, (n, m) in enumerate(zip(grid, kernel)):
        first, last = m // 2, n - (m - 1 - m // 2)  # the valid positions
        size = 1 if len(grid) == 3 and axis == 0 else min(EXAMPLE_SIZE, last - first)
        start = first + (last - first - size) // 2
        own.append(slice(start, start + size))
    return piece_arrays(Piece(pair, shape, tuple(own), _by_region(pair, config)), config)


def grid_shape(shape: PairShape, config: LearnConfig) -> tuple[int, ...]:
    """The model's grid: the image (``valid``), or the image extended by the kernel's reach (``same``)."""
    if config.kernel.mode == "valid":
        return shape.spatial
    return tuple(n + m - 1 for n, m in zip(shape.spatial, config.kernel.shape))


def piece_arrays(piece: Piece, config: LearnConfig) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (C, *window) and ``y`` (K, *counted) of one piece in float64: the windows of the counted
    positions and their targets, as ``accumulate`` and ``loss_and_gradient`` take them."""
    pair, shape = piece.pair, piece.shape
    kernel = tuple(config.kernel.shape)
    window = tile_window(grid_shape(shape, config), kernel, piece.own)
    counted = [slice(own.start + valid.start, own.start + valid.stop) for own, valid in zip(piece.own, window.valid)]
    x_index = [_input_index(n, m, config)[part] for n, m, part in zip(shape.spatial, kernel, window.x)]
    y_index = [np.arange(part.start, part.stop) - s - o for part, s, o in zip(counted, _shift(config), shape.offset)]
    y_index = [np.where((index >= 0) & (index < n), index, -1) for index, n in zip(y_index, shape.target)]
    if piece.by_region:
        read_x = partial(_read_box, pair.input, config.inputs, shape.channels)
        read_y = partial(_read_box, pair.target, config.targets, shape.outputs)
    else:
        read_x = partial(_in_memory, _whole(pair.input, config.inputs, (shape.channels, *shape.spatial)))
        read_y = partial(_in_memory, _whole(pair.target, config.targets, (shape.outputs, *shape.target)))
    x, y = _gather(read_x, x_index, shape.channels), _gather(read_y, y_index, shape.outputs)
    if not np.isfinite(y).all():
        raise InputError(f"target {pair.target!r} holds NaN or infinite values; a fit needs finite targets", pair.target)
    return x, y


def _shift(config: LearnConfig) -> tuple[int, ...]:
    """Where the image starts on the model's grid."""
    return tuple(m // 2 if config.kernel.mode == "same" else 0 for m in config.kernel.shape)


def _input_index(size: int, m: int, config: LearnConfig) -> np.ndarray:
    """The image sample each grid position along an axis holds; -1 for the zeros of ``constant``."""
    samples = np.arange(size)
    if config.kernel.mode == "valid":
        return samples
    pads = (m // 2, m - 1 - m // 2)
    if config.kernel.boundary == "constant":
        return np.pad(samples, pads, constant_values=-1)
    return np.pad(samples, pads, mode=NUMPY_PAD_MODES[config.kernel.boundary])  # the rule acts on indices alike


def _tiles(pair: Pair, shape: PairShape, config: LearnConfig, budget: int) -> list[list[tuple[int, int]]] | None:
    """Per axis the (start, stop) of the image's tiles or slabs, or None to read the pair whole."""
    setting, kernel = config.inputs.tile, tuple(config.kernel.shape)
    sample = SAMPLE_BYTES * (shape.channels + shape.outputs)
    if setting == "whole":
        return None
    if config.inputs.layout == "volume":  # slabs of whole slices, as runs read volumes
        depth = max(1, budget // (sample * prod(shape.spatial[1:])) - (kernel[0] - 1))
        if depth >= shape.spatial[0]:
            return None
        return [block_regions(shape.spatial[0], depth), *([(0, n)] for n in shape.spatial[1:])]
    if not _by_region(pair, config):
        if setting == "auto":
            return None
        path = next(path for path in (pair.input, pair.target) if not _region_readable(path))
        raise InputError(f"inputs.tile: {path!r} is not a local TIFF; a pair is read by tiles only when both its files "
                         f"are (set inputs.tile: whole or auto)", path)
    if setting == "auto":
        if sample * prod(shape.spatial) <= budget:
            return None
        side = max(1, isqrt(budget // sample) - (max(kernel) - 1))
        step = tiff_layout(pair.input)[1] or STRIP_TILE_STEP
    else:
        side, step = int(setting), tiff_layout(pair.input)[1] or (1, 1)
    tile = tuple(max(unit, side // unit * unit) for unit in step)  # whole file tiles: none decoded twice but the halo
    return [block_regions(n, t) for n, t in zip(shape.spatial, tile)]


def _by_region(pair: Pair, config: LearnConfig) -> bool:
    return config.inputs.layout == "volume" or (_region_readable(pair.input) and _region_readable(pair.target))


def _region_readable(source: str) -> bool:
    path = split_source(source)[0]
    return not is_remote(path) and path.lower().endswith(TIFF_SUFFIXES)


def _declared(path: str, settings: InputConfig) -> tuple[int, ...]:
    """(C, *spatial) of one file after colour handling, from its header."""
    if settings.layout == "volume":
        return (1, *volume_shape(path, stack_shape(path)))
    shape = declared_shape(path, settings.color_mode, settings.storage_options)
    return (1, *shape) if settings.color_mode == "gray" else shape


def _whole(path: str, settings: InputConfig, expected: tuple[int, ...]) -> np.ndarray:
    """One image (C, y, x) — or one volume (1, z, y, x) — in float64, checked against its header's shape."""
    if settings.layout == "volume":
        image = _read_box(path, settings, 1, tuple((0, n) for n in expected[1:]))
    else:
        image = read_image(path, color=settings.color_mode, dtype="float64", scale=settings.scale,
                           storage_options=settings.storage_options)
        image = image[np.newaxis] if settings.color_mode == "gray" else image
    if image.shape != expected:
        raise InputError(f"image {path!r} decodes to shape {list(image.shape)} but its header says {list(expected)}", path)
    return image


def _in_memory(image: np.ndarray, box: Box) -> np.ndarray:
    return image[(slice(None), *(slice(start, stop) for start, stop in box))]


def _read_box(path: str, settings: InputConfig, channels: int, box: Box) -> np.ndarray:
    """(channels, *box) of one file in float64, reading only that region: a tile of a TIFF, slices of a volume."""
    try:
        if settings.layout == "volume":
            (z0, z1), (y0, y1), (x0, x1) = box
            planes = [convert_pixels(plane[y0:y1, x0:x1], color="gray", dtype="float64", scale=settings.scale)
                      for plane in read_slices(path, z0, z1)]
            return np.stack(planes)[np.newaxis]
        file, frame = split_source(path)
        # Unit scale needs the stored type to divide by: the region is converted after reading.
        pixels = read_region(file, *box, page=frame or 0)
        image = convert_pixels(pixels, color=settings.color_mode, dtype="float64", scale=settings.scale)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return image[np.newaxis] if image.ndim == 2 else image


def _gather(read: Callable[[Box], np.ndarray], indices: list[np.ndarray], channels: int) -> np.ndarray:
    """``array[c, i_0[p_0], i_1[p_1], …]`` of the file ``read`` reads by boxes; 0 where an index is -1.

    Contiguous indices (the common case: a tile inside the image) are one box, read as is. Others
    (the edge of ``mode: same``, valid-sized targets there) read each contiguous run of the samples
    they use, so ``wrap`` reads the few samples of the other side, not the whole axis between.
    """
    if all(index[0] >= 0 and np.array_equal(index, np.arange(index[0], index[0] + len(index))) for index in indices):
        return read(tuple((int(index[0]), int(index[-1]) + 1) for index in indices))
    used = [np.unique(index[index >= 0]) for index in indices]
    out = np.zeros((channels, *(len(index) for index in indices)))
    if min(len(samples) for samples in used) == 0:
        return out
    buffer = np.empty((channels, *(len(samples) for samples in used)))
    runs = [np.split(np.arange(len(samples)), np.flatnonzero(np.diff(samples) != 1) + 1) for samples in used]
    for combination in itertools.product(*runs):
        box = tuple((int(samples[run[0]]), int(samples[run[-1]]) + 1) for samples, run in zip(used, combination))
        buffer[(slice(None), *(slice(run[0], run[-1] + 1) for run in combination))] = read(box)
    where = [np.clip(np.searchsorted(samples, index), 0, len(samples) - 1) for samples, index in zip(used, indices)]
    ndim = len(indices)
    inside = reduce(np.logical_and, ((index >= 0).reshape([-1 if a == axis else 1 for a in range(ndim)])
                                     for axis, index in enumerate(indices)))
    out[:] = np.where(inside, buffer[(slice(None), *np.ix_(*where))], 0.0)
    return out
