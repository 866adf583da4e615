"""What is measured: the pipeline's CLI and the implementations it is compared with.

Each measured run is a fresh process (see measure.py). The pipeline cases run the real ``pipeline``
command on a generated YAML file; the others run this file as a script::

    python benchmarks/cases.py CASE KERNEL FOLDER OUT [--limit M]

All cases do the same work per image: decode a 2048x2048 RGB JPEG, BT.601 gray in float32,
convolve (mode same, boundary reflect), write one float32 chunk per image into a Zarr v3 array
compressed with the pipeline's default codec (blosc-lz4 + shuffle).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2  # the plain loops' thread pool: one thread per core of the 2-core benchmark machine

# name -> (pipeline kernel spec, params, expected shape); shapes are checked against build_kernel.
KERNELS = {
    "3x3": ("edge", {}, (3, 3)),
    "15x15": ("gaussian", {"sigma": 2.5, "truncate": 2.8}, (15, 15)),  # radius int(2.8*2.5+0.5) = 7
    "31x31": ("box", {"size": 31}, (31, 31)),
}
CLI_CASES = ("pipeline", "floor-cli")
SCRIPT_CASES = ("floor", "dask-image", "opencv-loop", "scipy-loop")
CASES = ("floor", "floor-cli", "pipeline", "dask-image", "opencv-loop", "scipy-loop")
CONVOLVING = ("pipeline", "dask-image", "opencv-loop", "scipy-loop")


def kernel_weights(name: str) -> np.ndarray:
    """The kernel's matrix exactly as the pipeline builds it, so every case convolves the same."""
    from pipeline.steps.kernels import build_kernel

    spec, params, shape = KERNELS[name]
    weights = build_kernel(spec, params).weights
    if weights.shape != shape:
        raise AssertionError(f"kernel {name}: build_kernel gave shape {weights.shape}, expected {shape}")
    return weights


def gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma on float32 (0.299 R + 0.587 G + 0.114 B), as the pipeline's ``color: gray``."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


def create_output(path: str, count: int, shape: tuple[int, int]):
    """A plain Zarr v3 array laid out as the pipeline's: one chunk per image, its default codec."""
    import zarr

    from pipeline.sinks.codecs import CODECS  # the codec table alone: no dask, nothing else of the pipeline

    return zarr.create_array(
        store=path, shape=(count, *shape), chunks=(1, *shape), dtype="float32",
        compressors=CODECS["blosc-lz4"](), fill_value=0, zarr_format=3, overwrite=True,
    )


# --- the pipeline itself, through its command line -------------------------------------------


def pipeline_config(folder: str, out: str, kernel: str | None, config_path: Path) -> Path:
    """A job file with default settings; ``kernel=None`` gives ``steps: []`` (the CLI floor)."""
    steps = []
    if kernel is not None:
        spec, params, _ = KERNELS[kernel]
        steps = [{"convolve": {"kernel": spec, "params": params, "mode": "same", "boundary": "reflect"}}]
    config = {
        "input": {"paths": f"{folder}/*.jpg", "color": "gray"},
        "steps": steps,
        "output": {"path": out, "dtype": "float32"},  # codec and execution left at their defaults
    }
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path


def command(case: str, kernel: str | None, folder: str, out: str, *, limit: int | None = None) -> list[str]:
    """The argv of one measured run."""
    if case in CLI_CASES:
        name = f"{case}-{kernel or 'none'}-{Path(folder).name}.yaml"
        config = pipeline_config(folder, out, kernel if case == "pipeline" else None, ROOT / "benchmarks/work/configs" / name)
        return [str(Path(sys.executable).parent / "pipeline"), "run", str(config), "--overwrite", "--no-progress"]
    argv = [sys.executable, str(Path(__file__).resolve()), case, kernel or "none", folder, out]
    return argv + (["--limit", str(limit)] if limit else [])


# --- the comparisons, run inside the measured process ----------------------------------------


def run_floor(files: list[str], out: str, kernel: str) -> None:
    """Decode + gray + write, no convolution: the pipeline's own reader, 2 threads.

    The naive floor: each JPEG decoded to RGB, then BT.601 (``gray_from="rgb"``); the pipeline's
    default reads the luma plane the JPEG stores instead, without decoding its chroma.
    """
    import imageio.v3 as iio

    from pipeline.pixels import convert_pixels
    from pipeline.sources.decode import decode

    target = create_output(out, len(files), iio.improps(files[0]).shape[:2])  # header only, no decode

    def one(index: int) -> None:
        pixels, bgr = decode(files[index])  # RGB (OpenCV's BGR order), as the pipeline's reader decodes it
        target[index] = convert_pixels(pixels, color="gray", dtype="float32", bgr=bgr)

    _pool(one, len(files))


def run_dask_image(files: list[str], out: str, kernel: str) -> None:
    """dask-image's own reader and convolve (scipy.ndimage per chunk), dask's threads scheduler."""
    import dask
    import dask.array as da
    from dask_image.imread import imread
    from dask_image.ndfilters import convolve

    folder = str(Path(files[0]).parent)
    rgb = imread(f"{folder}/*.jpg")  # (n, y, x, 3) uint8, one chunk per image
    if rgb.shape[0] != len(files):
        raise RuntimeError(f"dask-image read {rgb.shape[0]} images, expected {len(files)}")
    luma = gray(rgb)  # the same float32 expression, here as lazy dask operations
    result = convolve(luma, kernel_weights(kernel)[None], mode="reflect")
    target = create_output(out, len(files), luma.shape[1:])
    with dask.config.set(scheduler="threads"):
        da.to_zarr(result, target)


def run_scipy_loop(files: list[str], out: str, kernel: str) -> None:
    """imageio decode + gray + scipy.ndimage.convolve + write, per image, 2 threads."""
    import imageio.v3 as iio
    from scipy import ndimage

    weights = kernel_weights(kernel)
    target = create_output(out, len(files), (iio.improps(files[0]).shape[:2]))

    def one(index: int) -> None:
        target[index] = ndimage.convolve(gray(iio.imread(files[index])), weights, mode="reflect")

    _pool(one, len(files))


def run_opencv_loop(files: list[str], out: str, kernel: str) -> None:
    """imageio decode + gray + cv2.filter2D + write, per image, 2 threads."""
    import cv2
    import imageio.v3 as iio

    # filter2D correlates: flipping the kernel makes it a convolution. BORDER_REFLECT (fedcba|abcdef)
    # is scipy's "reflect". The kernel is passed in float32 as OpenCV computes in the image's type.
    flipped = np.ascontiguousarray(kernel_weights(kernel)[::-1, ::-1], dtype=np.float32)
    target = create_output(out, len(files), (iio.improps(files[0]).shape[:2]))

    def one(index: int) -> None:
        image = gray(iio.imread(files[index]))
        target[index] = cv2.filter2D(image, -1, flipped, borderType=cv2.BORDER_REFLECT)

    _pool(one, len(files))


def _pool(work, count: int) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(work, range(count)):  # iterating re-raises the first worker error
            pass


RUNNERS = {"floor": run_floor, "dask-image": run_dask_image, "scipy-loop": run_scipy_loop, "opencv-loop": run_opencv_loop}
# Imported before the in-process clock starts, so ``inner_seconds`` is the work alone (the wall
# time, the headline figure, includes them anyway). Per case, so no case carries another's modules.
IMPORTS = {
    "floor": ["pipeline.sources.decode", "pipeline.pixels"],  # no dask: a plain script would not import it
    "dask-image": ["dask.array", "dask_image.imread", "dask_image.ndfilters"],
    "scipy-loop": ["imageio.v3", "scipy.ndimage"],
    "opencv-loop": ["imageio.v3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=SCRIPT_CASES)
    parser.add_argument("kernel", choices=[*KERNELS, "none"])
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--limit", type=int, help="only the first M images (for extrapolating very slow cases)")
    args = parser.parse_args()

    import importlib

    import zarr  # noqa: F401  (every case writes zarr)

    from pipeline.sinks.codecs import CODECS  # noqa: F401
    from pipeline.threads import limit_library_threads

    # 2 worker threads x 1 library thread = 2 cores, as the pipeline limits itself (no oversubscription).
    limit_library_threads(1)
    from collection import collection_files

    for module in IMPORTS[args.case]:
        importlib.import_module(module)
    files = collection_files(args.folder)[: args.limit]
    started = time.perf_counter()
    RUNNERS[args.case](files, args.out, args.kernel)
    print(f"{time.perf_counter() - started:.3f}")  # in-process seconds, without start-up and imports


if __name__ == "__main__":
    main()
