"""The two large workloads: one huge tiled TIFF and one z-stack, each a single image convolved whole.

    python benchmarks/large.py VARIANT WORKLOAD INPUT OUT [--tile T]   # one measured script run

- ``huge``: one 12000x12000 uint16 TIFF in 512x512 file tiles, a 15x15 gaussian (sigma 2.5,
  truncate 2.8). The pipeline reads it by tiles (``input.tile: auto``: the largest whole file tiles
  whose task fits a worker's share of ``execution.memory_budget``, 2048x2048 by default on two
  workers), and every case here writes chunks of that tile.
- ``volume``: one 128x1024x1024 uint16 multi-page TIFF (a z-stack, ``photometric='minisblack'``),
  a 5x5x5 box (``box``, size 5, ndim 3), ``input.layout: volume``: slabs as deep as the budget
  allows (5 slices by default on two workers), stored one slice per chunk.

Each is compared in four variants, every run a fresh process (see measure.py):

- ``pipeline``: the pipeline CLI on a generated YAML job, defaults (threads, one worker per core);
- ``floor-cli``: the same CLI with ``steps: []`` (read + gray/float32 + write, no convolution);
- ``floor``: a plain script doing the same read + float32 + write (tifffile, a thread pool of 2);
- ``dask-image``: ``da.from_zarr(tifffile.imread(path, aszarr=True))`` (rechunked to the pipeline's
  tiles for ``huge``; one page per chunk for ``volume``) -> float32 -> ``dask_image.ndfilters
  .convolve(mode="reflect")`` -> ``da.to_zarr``, dask's threads scheduler;
- ``libvips`` (``huge`` only, when pyvips is installed: ``pip install pyvips-binary pyvips``, the
  ``bench`` extra): libvips' demand-driven pipeline, ``convsep`` for a separable kernel (``conv``
  otherwise) in float precision, written as an uncompressed float32 tiled TIFF of the pipeline's
  tile size, its own thread pool (one thread per core). libvips extends the image's edges by copying
  them (scipy's ``nearest``), so its check compares with that.

Every store is float32 with the pipeline's default codec (blosc-lz4 + shuffle), laid out as the
pipeline's: (1, y, x) in (1, T, T) chunks, or (1, z, y, x) in (1, 1, y, x) chunks.

The inputs are real image content: the huge image is a grid of gray versions of the JPEG mosaics
(collection.py) scaled to 16 bits; the volume's slices are the eight sample photographs in gray,
resized to 1024x1024 and scaled to 16 bits, each fading into the next along z. Both are built once
under benchmarks/work/large/ (git-ignored). ``--large-scale S`` (run.py) multiplies both pixel counts
by S: the huge image's side by sqrt(S), the volume's depth by S.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LARGE = ROOT / "benchmarks" / "work" / "large"
MIB = 1024 * 1024
WORKERS = 2  # the floor script's thread pool, as cases.py's loops: one thread per core
HUGE_SIDE = 12000
HUGE_FILE_TILE = (512, 512)
VOLUME_SHAPE = (128, 1024, 1024)
WORKLOADS = ("huge", "volume")
# the order they are run and shown in; pipeline-raw (huge only) is the pipeline writing uncompressed
# chunks (output.codec: none), as libvips writes its TIFF: the two then do the same work
VARIANTS = ("floor", "floor-cli", "pipeline", "dask-image", "libvips", "pipeline-raw")
CLI_VARIANTS = ("pipeline", "floor-cli", "pipeline-raw")
SCRIPT_VARIANTS = ("floor", "dask-image", "libvips")
CONVOLVING = ("pipeline", "dask-image", "libvips", "pipeline-raw")
HUGE_ONLY = ("libvips", "pipeline-raw")
LIBVIPS_FILE = "result.tif"  # inside the variant's output folder, so that one rmtree removes it
# workload -> (label, pipeline kernel spec, params, expected shape)
KERNELS = {
    "huge": ("15x15", "gaussian", {"sigma": 2.5, "truncate": 2.8}, (15, 15)),
    "volume": ("5x5x5", "box", {"size": 5, "ndim": 3}, (5, 5, 5)),
}


@dataclass(frozen=True)
class Workload:
    name: str  # huge | volume
    shape: tuple[int, ...]  # the TIFF's pixels: (y, x) or (z, y, x)
    kernel: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", KERNELS[self.name][0])

    @property
    def path(self) -> Path:
        return LARGE / f"{self.name}-{'x'.join(map(str, self.shape))}.tif"

    @property
    def float32_mib(self) -> float:
        """The whole image as float32: the peak-RSS target for the pipeline."""
        return math.prod(self.shape) * 4 / MIB

    def describe(self) -> str:
        dims = "×".join(map(str, self.shape))
        if self.name == "huge":
            return f"huge: 1 tiled TIFF {dims} uint16 (file tiles 512²), 15x15 gaussian"
        return f"volume: 1 z-stack TIFF {dims} uint16 (multi-page), 5x5x5 box"

    def settings(self) -> dict:
        label, spec, params, _ = KERNELS[self.name]
        return {"input": self.describe(), "path": str(self.path), "shape": list(self.shape),
                "file_tile": list(HUGE_FILE_TILE) if self.name == "huge" else None,
                "kernel": {"label": label, "kernel": spec, "params": params},
                "float32_mib": round(self.float32_mib, 1)}


def variants(workload: Workload) -> list[str]:
    """The variants a workload is measured in: libvips for the huge image only."""
    return [variant for variant in VARIANTS if variant not in HUGE_ONLY or workload.name == "huge"]


def libvips_missing() -> str | None:
    """Why the libvips variant cannot run here, or None."""
    try:
        import pyvips  # noqa: F401
    except Exception as exc:  # ImportError, or OSError without the libvips binary
        return f"skipped: pyvips not usable ({type(exc).__name__}); pip install pyvips-binary pyvips"
    return None


def workloads(scale: float) -> dict[str, Workload]:
    """Both workloads with their pixel counts multiplied by ``scale``."""
    side = max(1, round(HUGE_SIDE * math.sqrt(scale)))
    depth = max(8, round(VOLUME_SHAPE[0] * scale))
    return {"huge": Workload("huge", (side, side)), "volume": Workload("volume", (depth, *VOLUME_SHAPE[1:]))}


def kernel_weights(workload: str) -> np.ndarray:
    """The kernel's matrix exactly as the pipeline builds it."""
    from pipeline.steps.kernels import build_kernel

    _, spec, params, shape = KERNELS[workload]
    weights = build_kernel(spec, params).weights
    if weights.shape != shape:
        raise AssertionError(f"kernel {workload}: build_kernel gave shape {weights.shape}, expected {shape}")
    return weights


def store_tile(workload: Workload) -> int | None:
    """The pipeline's tile for the huge image, as its run will choose it (``input.tile: auto`` under
    the default memory budget, on this machine's workers); None for the volume."""
    if workload.name != "huge":
        return None
    from pipeline.config import load_config
    from pipeline.job_plan import build_plan

    plan = build_plan(load_config(cli_config(workload, "pipeline", str(ROOT / "benchmarks" / "work" / "unused.zarr"))))
    if plan.spec.tile is None:
        raise RuntimeError(f"{workload.path}: input.tile auto would read it whole; use a larger --large-scale")
    tile = plan.chunks[-2:]
    if tile[0] != tile[1]:
        raise RuntimeError(f"unexpected non-square tile {tile}")
    return tile[0]


def slab_depth(workload: Workload) -> int | None:
    """Slices per task of the pipeline's volume run (the memory budget's choice); None for the image."""
    if workload.name != "volume":
        return None
    from pipeline.config import load_config
    from pipeline.job_plan import build_plan

    plan = build_plan(load_config(cli_config(workload, "pipeline", str(ROOT / "benchmarks" / "work" / "unused.zarr"))))
    return plan.spec.chunks[0]


# --- the inputs, built once -------------------------------------------------------------------


def ensure_input(workload: Workload) -> tuple[Path, bool]:
    """The workload's TIFF, built if missing or of the wrong shape; returns (path, built now)."""
    import tifffile

    path = workload.path
    if path.is_file():
        try:
            with tifffile.TiffFile(path) as tiff:
                if tuple(tiff.series[0].shape) == workload.shape:
                    return path, False
        except Exception:
            pass  # unreadable (an interrupted build): rebuild
    LARGE.mkdir(parents=True, exist_ok=True)
    pixels = _huge_pixels(workload.shape[0]) if workload.name == "huge" else _volume_pixels(workload.shape)
    partial = path.with_suffix(".partial.tif")  # never leave a half-written file under the real name
    tifffile.imwrite(partial, pixels, photometric="minisblack",
                     tile=HUGE_FILE_TILE if workload.name == "huge" else None)
    os.replace(partial, path)
    return path, True


def _to_uint16(gray8: np.ndarray) -> np.ndarray:
    """A gray image on the 0-255 scale (fractional luma) to the full 16-bit range."""
    return np.clip(np.rint(gray8 * 257.0), 0, 65535).astype(np.uint16)


def _huge_pixels(side: int) -> np.ndarray:
    """A grid of gray 2048x2048 mosaics (seeds apart from the JPEG collection's), cut to side x side."""
    from cases import gray
    from collection import SIZE, load_samples, mosaic

    tiles = load_samples()
    grid = -(-side // SIZE)
    image = np.empty((side, side), dtype=np.uint16)
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        y0, x0 = row * SIZE, col * SIZE
        height, width = min(SIZE, side - y0), min(SIZE, side - x0)
        image[y0:y0 + height, x0:x0 + width] = _to_uint16(gray(mosaic(tiles, 5000 + index))[:height, :width])
    return image


def _volume_pixels(shape: tuple[int, int, int]) -> np.ndarray:
    """The eight samples in gray, resized to (y, x), each fading into the next along z."""
    import cv2

    from cases import gray
    from collection import load_samples

    depth, height, width = shape
    planes = [cv2.resize(gray(tile), (width, height), interpolation=cv2.INTER_CUBIC) for tile in load_samples()]
    volume = np.empty(shape, dtype=np.uint16)
    for z in range(depth):
        position = z / depth * len(planes)
        first, weight = int(position), position - int(position)
        plane = (1 - weight) * planes[first % len(planes)] + weight * planes[(first + 1) % len(planes)]
        volume[z] = _to_uint16(plane)
    return volume


# --- the measured runs ------------------------------------------------------------------------


def cli_config(workload: Workload, variant: str, out: str) -> Path:
    """A job file with default settings; the floor has ``steps: []``."""
    import yaml

    _, spec, params, _ = KERNELS[workload.name]
    steps = [] if variant == "floor-cli" else [
        {"convolve": {"kernel": spec, "params": params, "mode": "same", "boundary": "reflect"}}]
    source = {"paths": str(workload.path), "color": "gray"}  # input.tile left at auto
    if workload.name == "volume":
        source["layout"] = "volume"
    config = {"input": source, "steps": steps, "output": {"path": out, "dtype": "float32"}}
    if variant == "pipeline-raw":
        config["output"]["codec"] = "none"
    path = ROOT / "benchmarks" / "work" / "configs" / f"large-{workload.path.stem}-{variant}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def command(variant: str, workload: Workload, out: str, tile: int | None) -> list[str]:
    """The argv of one measured run."""
    if variant in CLI_VARIANTS:
        config = cli_config(workload, variant, out)
        return [str(Path(sys.executable).parent / "pipeline"), "run", str(config), "--overwrite", "--no-progress"]
    argv = [sys.executable, str(Path(__file__).resolve()), variant, workload.name, str(workload.path), out]
    return argv + (["--tile", str(tile)] if tile else [])


def create_store(path: str, shape: tuple[int, ...], chunks: tuple[int, ...]):
    """A plain Zarr v3 float32 array with the pipeline's default codec."""
    import zarr

    from pipeline.sinks.codecs import CODECS

    return zarr.create_array(store=path, shape=shape, chunks=chunks, dtype="float32",
                             compressors=CODECS["blosc-lz4"](), fill_value=0, zarr_format=3, overwrite=True)


def run_huge_floor(path: str, out: str, tile: int) -> None:
    """Read tile by tile (tifffile's Zarr view, opened per task as the pipeline does) + float32 + write."""
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tiff:
        height, width = tiff.pages[0].shape[:2]
    target = create_store(out, (1, height, width), (1, tile, tile))

    def one(origin: tuple[int, int]) -> None:
        y0, x0 = origin
        with tifffile.imread(path, aszarr=True) as store:
            pixels = zarr.open_array(store, mode="r")[y0:y0 + tile, x0:x0 + tile]
        target[0, y0:y0 + tile, x0:x0 + tile] = pixels.astype(np.float32)

    _pool(one, [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)])


def run_volume_floor(path: str, out: str, tile: int | None) -> None:
    """Read slice by slice + float32 + write one chunk per slice."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        depth, height, width = tiff.series[0].shape
    target = create_store(out, (1, depth, height, width), (1, 1, height, width))

    def one(z: int) -> None:
        target[0, z] = tifffile.imread(path, key=z).astype(np.float32)

    _pool(one, list(range(depth)))


def run_huge_dask_image(path: str, out: str, tile: int) -> None:
    import dask
    import dask.array as da
    import tifffile
    from dask_image.ndfilters import convolve

    source = da.from_zarr(tifffile.imread(path, aszarr=True))  # (y, x) uint16 in 512x512 file tiles
    image = source.rechunk((tile, tile)).astype(np.float32)
    result = convolve(image, kernel_weights("huge"), mode="reflect")
    target = create_store(out, (1, *image.shape), (1, tile, tile))
    with dask.config.set(scheduler="threads"):
        da.to_zarr(result[None], target)


def run_volume_dask_image(path: str, out: str, tile: int | None) -> None:
    import dask
    import dask.array as da
    import tifffile
    from dask_image.ndfilters import convolve

    source = da.from_zarr(tifffile.imread(path, aszarr=True))  # (z, y, x) uint16, one page per chunk
    volume = source.astype(np.float32)
    result = convolve(volume, kernel_weights("volume"), mode="reflect")
    chunks = (1, 1, *volume.shape[1:])
    target = create_store(out, (1, *volume.shape), chunks)
    with dask.config.set(scheduler="threads"):
        # dask-image's map_overlap merges slices into 2-slice chunks (depth 2 > 1 slice); the store
        # takes one slice per chunk, as the pipeline's.
        da.to_zarr(result[None].rechunk(chunks), target)


def run_huge_libvips(path: str, out: str, tile: int) -> None:
    """libvips: read the TIFF, filter in float precision, write an uncompressed tiled float TIFF."""
    import pyvips

    weights = kernel_weights("huge")
    image = pyvips.Image.new_from_file(path)
    profile = weights.sum(axis=0)  # the 1-D factor of a symmetric outer product
    if np.allclose(np.outer(profile, profile), weights, rtol=0, atol=1e-12 * np.abs(weights).max()):
        result = image.convsep(pyvips.Image.new_from_array(profile.reshape(1, -1).tolist()), precision="float")
    else:  # vips' conv correlates: flip the kernel for a convolution
        result = image.conv(pyvips.Image.new_from_array(weights[::-1, ::-1].tolist()), precision="float")
    Path(out).mkdir(parents=True, exist_ok=True)
    result.cast("float").tiffsave(str(Path(out) / LIBVIPS_FILE), tile=True, tile_width=tile, tile_height=tile,
                                  compression="none")


def _pool(work, items: list) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(work, items):  # iterating re-raises the first worker error
            pass


RUNNERS = {
    ("floor", "huge"): run_huge_floor, ("floor", "volume"): run_volume_floor,
    ("dask-image", "huge"): run_huge_dask_image, ("dask-image", "volume"): run_volume_dask_image,
    ("libvips", "huge"): run_huge_libvips,
}
IMPORTS = {"floor": ["tifffile", "zarr"], "dask-image": ["tifffile", "zarr", "dask.array", "dask_image.ndfilters",
                                                         "pipeline.steps.kernels"],
           "libvips": ["pyvips", "pipeline.steps.kernels"]}


# --- correctness, checked after the timed runs -----------------------------------------------


def crops(workload: Workload, tile: int | None) -> list[tuple[slice, ...]]:
    """Regions compared with scipy: the image's corners and chunk junctions (where halos matter)."""
    if workload.name == "huge":
        side = workload.shape[0]
        size = min(1024, side // 4)
        last = (side - 1) // tile * tile  # the last chunk boundary
        middle = min(max(tile, round(side / 2 / tile) * tile), last)
        starts = dict.fromkeys(min(max(c - size // 2, 0), side - size) for c in (0, middle, last, side))
        return [(slice(s, s + size), slice(s, s + size)) for s in starts]
    depth, height, width = workload.shape
    dz, size = min(16, depth), min(256, height, width)
    boxes = []
    for f in (0.0, 0.5, 1.0):  # the first corner, the centre, the far corner (z crosses chunks everywhere)
        z0, y0, x0 = round((depth - dz) * f), round((height - size) * f), round((width - size) * f)
        boxes.append((slice(z0, z0 + dz), slice(y0, y0 + size), slice(x0, x0 + size)))
    return boxes


def reference(source, box: tuple[slice, ...], weights: np.ndarray | None, mode: str = "reflect") -> np.ndarray:
    """scipy.ndimage.convolve (``mode``) of the float64 input, computed on the box plus a margin."""
    from scipy import ndimage

    margins = [0] * len(box) if weights is None else [n // 2 for n in weights.shape]
    padded = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margins, source.shape))
    data = np.asarray(source[padded], dtype=np.float64)
    # Where the margin is cut by the image's edge, the mode here is the image's own boundary; elsewhere
    # the margin covers the kernel's reach and the extended border is cut away below.
    result = data if weights is None else ndimage.convolve(data, weights, mode=mode)
    inner = tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(box, padded))
    return result[inner]


def check_store(workload: Workload, variant: str, store: str, tile: int | None):
    """Shape, dtype, codec, every chunk written, and the crops within 1e-4 of scipy."""
    import tifffile
    import zarr

    from pipeline.sinks.zarr_store import describe_codec
    from verify import RTOL, Check, layout_problems

    boxes = crops(workload, tile)
    if variant == "libvips":
        array, codec, problems = _libvips_result(Path(store) / LIBVIPS_FILE, workload, tile)
        label = f"{len(boxes)} crops of the tiled TIFF"
    else:
        array = zarr.open_group(store, mode="r")["0"] if variant in CLI_VARIANTS else zarr.open_array(store, mode="r")
        codec = describe_codec(array)
        label = f"{len(boxes)} crops + all chunks"
        problems = layout_problems(array, (1, *workload.shape), codec, compressed=variant != "pipeline-raw")
        if not problems and array.nchunks_initialized != array.nchunks:  # a run that stopped early
            problems.append(f"{array.nchunks - array.nchunks_initialized} of {array.nchunks} chunks never written")
    worst = float("nan")
    if not problems:
        weights = None if variant in ("floor", "floor-cli") else kernel_weights(workload.name)
        mode = "nearest" if variant == "libvips" else "reflect"
        errors = []
        with tifffile.imread(workload.path, aszarr=True) as tiff_store:
            source = zarr.open_array(tiff_store, mode="r")
            for box in boxes:
                expected = reference(source, box, weights, mode)
                got = np.asarray(array[(0, *box)], dtype=np.float64)
                errors.append(float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30)))
        worst = max(errors)
        if not worst <= RTOL:
            problems.append(f"max |error| / max |reference| = {worst:.2e} > {RTOL:g}")
    return Check(f"{workload.name}:{variant}", workload.kernel if variant not in ("floor", "floor-cli") else "no kernel",
                 label, worst, codec, not problems, "; ".join(problems))


def _libvips_result(path: Path, workload: Workload, tile: int | None):
    """libvips' TIFF as a (1, y, x) array, its compression, and what differs from what was asked."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        codec = page.compression.name.lower()
        problems = [] if page.is_tiled and page.tilewidth == tile else [f"not tiled by {tile}"]
        if codec != "none":
            problems.append(f"compression {codec}, not none")
        pixels = page.asarray()
    if pixels.dtype != np.float32 or pixels.shape != workload.shape:
        problems.append(f"{pixels.dtype} {pixels.shape}, not float32 {workload.shape}")
    return pixels[np.newaxis], codec, problems


def describe_crops(workload: Workload, tile: int | None) -> list[str]:
    return [",".join(f"{s.start}:{s.stop}" for s in box) for box in crops(workload, tile)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=SCRIPT_VARIANTS)
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("input")
    parser.add_argument("out")
    parser.add_argument("--tile", type=int, help="chunk size of the huge image's store (the pipeline's tile)")
    args = parser.parse_args()

    import importlib

    if args.variant != "libvips":  # libvips writes a TIFF with its own threads: no zarr, no caps
        import zarr  # noqa: F401  (the other cases write zarr)

        from pipeline.sinks.codecs import CODECS  # noqa: F401  (the codec table alone: no dask)
        from pipeline.threads import limit_library_threads

        # 2 worker threads x 1 library thread = 2 cores, as the pipeline limits itself (no oversubscription).
        limit_library_threads(1)
    for module in IMPORTS[args.variant]:
        importlib.import_module(module)
    if args.workload == "huge" and not args.tile:
        parser.error("--tile is required for the huge workload")
    started = time.perf_counter()
    RUNNERS[args.variant, args.workload](args.input, args.out, args.tile)
    print(f"{time.perf_counter() - started:.3f}")  # in-process seconds, without start-up and imports


if __name__ == "__main__":
    main()
