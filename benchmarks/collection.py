"""The benchmark's input: 2048x2048 RGB JPEG mosaics of the eight bundled 512x512 photographs.

Real photographs rather than noise, because JPEG decode time and compressed output size depend on
content. Each mosaic is a 4x4 grid of the samples in a different order with different flips and
rotations (seeded by the mosaic's index), so no two images are alike and nothing can be cached
between them. Files are built once under benchmarks/work/ (git-ignored) and reused by later runs.

A collection of n images is a folder of n symlinks named img-0000.jpg ... into the mosaic pool. The
10xN memory collection reuses the N mosaics' files through hard links instead: the pipeline lists a
file reached by several symlinks once (they resolve to one path), while hard links are files of their
own, so it lists 10N images that share the N mosaics' bytes on disk and in the page cache.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
WORK = ROOT / "benchmarks" / "work"
POOL = WORK / "mosaics"
GRID = 4
TILE = 512
SIZE = GRID * TILE  # 2048
QUALITY = 90


def load_samples() -> list[np.ndarray]:
    """The eight sample photographs as 512x512x3 uint8; gray ones are stacked to RGB."""
    tiles = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        pixels = iio.imread(path)
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        pixels = pixels[..., :3]
        if pixels.shape != (TILE, TILE, 3):
            raise ValueError(f"sample {path} has shape {pixels.shape}, expected {(TILE, TILE, 3)}")
        tiles.append(pixels)
    if len(tiles) != 8:
        raise ValueError(f"expected 8 samples in {SAMPLES}, found {len(tiles)}")
    return tiles


def mosaic(tiles: list[np.ndarray], index: int) -> np.ndarray:
    """Mosaic number ``index``: a seeded order of the tiles, each flipped and rotated at random."""
    rng = np.random.default_rng(1000 + index)
    order = np.concatenate([rng.permutation(len(tiles)), rng.permutation(len(tiles))])
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    for cell, which in enumerate(order):
        tile = np.rot90(tiles[which], k=int(rng.integers(4)))
        if rng.integers(2):
            tile = tile[:, ::-1]
        row, col = divmod(cell, GRID)
        image[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE] = tile
    return image


def ensure_pool(count: int) -> list[Path]:
    """Mosaics 0..count-1 as JPEG files, building only those not already cached."""
    POOL.mkdir(parents=True, exist_ok=True)
    paths = [POOL / f"mosaic-{i:04d}.jpg" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        tiles = load_samples()
        for i in missing:
            partial = paths[i].with_suffix(".tmp.jpg")  # never leave a half-written file in the cache
            iio.imwrite(partial, mosaic(tiles, i), quality=QUALITY)
            os.replace(partial, paths[i])
    return paths


def ensure_collection(images: int, *, distinct: int | None = None) -> Path:
    """A folder of ``images`` links cycling over ``distinct`` mosaics (default: all different):
    symlinks, or hard links where mosaics repeat (see the module's docstring)."""
    distinct = distinct or images
    pool = ensure_pool(distinct)
    folder = WORK / (f"n{images}" if distinct == images else f"n{images}-of-{distinct}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        link = folder / f"img-{i:04d}.jpg"
        if distinct < images:
            if link.is_symlink() or not (link.exists() and os.path.samefile(link, pool[i % distinct])):
                link.unlink(missing_ok=True)
                os.link(pool[i % distinct], link)
            continue
        target = os.path.relpath(pool[i % distinct], folder)
        if not (link.is_symlink() and os.readlink(link) == target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    listed = collection_files(folder)
    if len(listed) != images:  # a stale larger folder would silently change the workload
        raise RuntimeError(f"{folder} lists {len(listed)} images, expected {images}; delete it and rerun")
    return folder


def collection_files(folder: Path | str) -> list[str]:
    """The collection's files in index order (zero-padded names, so a plain sort is the natural one)."""
    return sorted(glob.glob(os.path.join(str(folder), "*.jpg")))
