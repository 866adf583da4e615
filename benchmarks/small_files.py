"""Benchmark many small images: the pipeline against a plain loop, whole processes, rounds interleaved.

    python benchmarks/small_files.py               # 400, 4,000 and 40,000 PNGs, 3 repeats, listing of 100,000
    python benchmarks/small_files.py --quick       # 400 and 4,000, 1 repeat, listing of 10,000

The workload: gray 128×128 PNGs, each a different crop (offset, flip, rotation) of the bundled
photographs in gray, built once under benchmarks/work/small/ (git-ignored); the smaller collections
are hard links to the first files of the largest. Both cases do the same work per image: decode,
float32, 3×3 ``edge`` convolution (mode same, boundary reflect), a float32 blosc-lz4 Zarr v3 array.

* ``pipeline`` — ``pipeline run`` on a generated job, all defaults;
* ``loop`` — a plain script: ``cv2.imread`` (gray), ``cv2.filter2D``, one chunk per image written
  into a blosc-lz4 Zarr array, a pool of 2 threads (OpenCV at one thread each).

Targets: pipeline ÷ loop ≤ 0.9 at 4,000 images; the pipeline's marginal cost per image from 4,000
to 40,000 no more than from 400 to 4,000. Also timed, in this process: listing and planning a
folder of 100,000 files (empty placeholders but the first, which the plan probes).

Writes benchmarks/results/small_files.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection import WORK, load_samples  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL = WORK / "small"
SIDE = 128
WORKERS = 2  # the loop's threads: one per core of the 2-core benchmark machine
PIPELINE = str(Path(sys.executable).with_name("pipeline"))


def crops(count: int, start: int = 0):
    """Crop ``start + i``: a seeded offset, rotation and flip of one of the gray samples."""
    import cv2

    samples = [cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY) for tile in load_samples()]
    for index in range(start, start + count):
        rng = np.random.default_rng(10_000 + index)
        tile = samples[index % len(samples)]
        y, x = rng.integers(0, tile.shape[0] - SIDE, size=2)
        crop = np.rot90(tile[y:y + SIDE, x:x + SIDE], k=int(rng.integers(4)))
        yield index, np.ascontiguousarray(crop[:, ::-1] if rng.integers(2) else crop)


def ensure_small(count: int, largest: int) -> Path:
    """A folder of ``count`` PNGs: the first of the ``largest`` collection's files, hard-linked."""
    import cv2

    pool = SMALL / f"n{largest}"
    pool.mkdir(parents=True, exist_ok=True)
    names = [f"img-{i:06d}.png" for i in range(largest)]
    missing = [i for i, name in enumerate(names) if not (pool / name).is_file()]
    if missing:
        print(f"building {len(missing)} small PNGs in {pool} (once)", flush=True)
        for index, pixels in crops(len(missing), missing[0]):
            partial = pool / f"{names[index]}.tmp.png"  # never a half-written file in the cache
            cv2.imwrite(str(partial), pixels)
            os.replace(partial, pool / names[index])
    if count == largest:
        return pool
    folder = SMALL / f"n{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names[:count]:
        if not (folder / name).is_file():
            try:
                os.link(pool / name, folder / name)
            except OSError:  # no hard links on this file system
                shutil.copyfile(pool / name, folder / name)
    listed = sorted(folder.glob("*.png"))
    if len(listed) != count:  # a stale larger folder would silently change the workload
        raise RuntimeError(f"{folder} lists {len(listed)} images, expected {count}; delete it and rerun")
    return folder


def placeholders(count: int) -> Path:
    """``count`` files for listing: the first a real PNG (the plan probes it), the others empty."""
    import cv2

    folder = SMALL / f"placeholders-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "img-000000.png"
    if not first.is_file():
        cv2.imwrite(str(first), next(crops(1))[1])
    for i in range(1, count):
        path = folder / f"img-{i:06d}.png"
        if not path.exists():
            path.touch()
    return folder


def edge_weights() -> np.ndarray:
    """The ``edge`` kernel exactly as the pipeline builds it."""
    sys.path.insert(0, str(ROOT))
    from pipeline.steps.kernels import build_kernel

    return build_kernel("edge", {}).weights


def job(folder: Path, out: Path, path: Path) -> Path:
    import yaml

    config = {
        "input": {"paths": str(folder), "color": "gray"},
        "steps": [{"convolve": {"kernel": "edge", "mode": "same", "boundary": "reflect"}}],
        "output": {"path": str(out), "dtype": "float32", "overwrite": True},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_loop(folder: str, out: str, weights: str) -> None:
    """The plain loop, run inside the measured process: prints its own seconds.

    It imports nothing of the pipeline (the kernel comes as a .npy file): its start-up is a script's.
    """
    import cv2
    import zarr
    from zarr.codecs import BloscCodec

    cv2.setNumThreads(1)
    started = time.perf_counter()
    files = sorted(str(path) for path in Path(folder).glob("*.png"))
    flipped = np.ascontiguousarray(np.load(weights)[::-1, ::-1], dtype=np.float32)  # filter2D correlates
    target = zarr.create_array(
        store=out, shape=(len(files), SIDE, SIDE), chunks=(1, SIDE, SIDE), dtype="float32",
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), fill_value=0, zarr_format=3,
        overwrite=True,
    )

    def one(index: int) -> None:
        image = cv2.imread(files[index], cv2.IMREAD_GRAYSCALE).astype(np.float32)
        target[index] = cv2.filter2D(image, -1, flipped, borderType=cv2.BORDER_REFLECT)

    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(one, range(len(files))):  # re-raises the first error
            pass
    print(f"{time.perf_counter() - started:.3f}")


def check(out: Path, folder: Path) -> bool:
    """The first and last images of the store against scipy on the decoded PNG."""
    import cv2
    import zarr
    from scipy import ndimage

    files = sorted(folder.glob("*.png"))
    array = zarr.open_array(str(out / "0") if (out / "0").is_dir() else str(out), mode="r")
    if array.shape != (len(files), SIDE, SIDE):
        return False
    for index in (0, len(files) - 1):
        image = cv2.imread(str(files[index]), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        expected = ndimage.convolve(image, edge_weights(), mode="reflect")
        if not np.allclose(array[index], expected, atol=1e-4 * max(1.0, np.abs(expected).max())):
            return False
    return True


def listing_and_planning(count: int) -> dict:
    """Seconds to list ``count`` files and to plan the job over them, in this process."""
    sys.path.insert(0, str(ROOT))
    from pipeline.config import PipelineConfig
    from pipeline.job_plan import build_plan, list_sources

    folder = placeholders(count)
    config = PipelineConfig.model_validate({
        "input": {"paths": str(folder), "color": "gray"},
        "steps": [{"convolve": {"kernel": "edge"}}],
        "output": {"path": str(WORK / "unused.zarr")},
    })
    began = time.perf_counter()
    sources = list_sources(config)
    listed = time.perf_counter()
    plan = build_plan(config, sources)
    planned = time.perf_counter()
    first = plan.result(0, min(len(sources), 512))  # one batch's graph, as a run builds it
    first.__dask_graph__()
    graphed = time.perf_counter()
    return {"files": len(sources), "listing_s": round(listed - began, 3), "planning_s": round(planned - listed, 3),
            "first_batch_graph_s": round(graphed - planned, 3)}


def main() -> None:
    from measure import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 and 4,000 images, 1 repeat, listing of 10,000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="400,4000,40000", help="collection sizes, comma-separated")
    parser.add_argument("--listing", type=int, default=100_000, help="files to list and plan (0: skip)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    if args.quick:
        sizes, args.repeats, args.listing = [n for n in sizes if n <= 4000], 1, min(args.listing, 10_000)
    folders = {n: ensure_small(n, max(sizes)) for n in sizes}
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    configs = WORK / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    weights = WORK / "small-edge.npy"
    np.save(weights, edge_weights())
    runs: dict[str, dict[int, list]] = {"pipeline": {}, "loop": {}}
    checks = {}
    for n in sizes:
        argv = {
            "pipeline": [PIPELINE, "run", str(job(folders[n], out / f"small-pipeline-{n}.zarr", configs / f"small-{n}.yaml")),
                         "--overwrite", "--no-progress"],
            "loop": [sys.executable, __file__, "loop", str(folders[n]), str(out / f"small-loop-{n}.zarr"), str(weights)],
        }
        for _ in range(args.repeats):  # interleaved: pipeline, loop, pipeline, loop, …
            for case in ("pipeline", "loop"):
                shutil.rmtree(out / f"small-{case}-{n}.zarr", ignore_errors=True)
                run = measure(argv[case], cwd=str(WORK))
                runs[case].setdefault(n, []).append({"seconds": run.seconds, "inner": run.inner_seconds,
                                                     "peak_rss_mib": run.peak_rss_mib})
                print(f"{case:8s} {n:6d} images: {run.seconds:7.2f} s", flush=True)
        for case in ("pipeline", "loop"):
            checks[f"{case}-{n}"] = check(out / f"small-{case}-{n}.zarr", folders[n])
            shutil.rmtree(out / f"small-{case}-{n}.zarr", ignore_errors=True)
    median = {case: {n: statistics.median(r["seconds"] for r in by[n]) for n in by} for case, by in runs.items()}
    rows = []
    for n in sizes:
        rows.append({"images": n, "pipeline_s": round(median["pipeline"][n], 3), "loop_s": round(median["loop"][n], 3),
                     "ratio": round(median["pipeline"][n] / median["loop"][n], 3)})
    marginal = {}
    for a, b in zip(sizes, sizes[1:]):
        marginal[f"{a}-{b}"] = {case: round(1000 * (median[case][b] - median[case][a]) / (b - a), 3) for case in median}
    targets = []
    if 4000 in median["pipeline"]:
        ratio = median["pipeline"][4000] / median["loop"][4000]
        targets.append({"target": "pipeline ÷ loop at 4,000 ≤ 0.9", "value": round(ratio, 3), "met": ratio <= 0.9})
    if "400-4000" in marginal and "4000-40000" in marginal:
        low, high = marginal["400-4000"]["pipeline"], marginal["4000-40000"]["pipeline"]
        targets.append({"target": "marginal ms/image 4,000→40,000 ≤ 400→4,000", "value": [high, low], "met": high <= low})
    listing = listing_and_planning(args.listing) if args.listing else None
    print("\n| images | pipeline s | loop s | pipeline ÷ loop |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['images']:,} | {row['pipeline_s']:.2f} | {row['loop_s']:.2f} | {row['ratio']:.2f} |")
    print("\n| marginal ms/image | pipeline | loop |\n|---|---|---|")
    for span, values in marginal.items():
        print(f"| {span} | {values['pipeline']:.2f} | {values['loop']:.2f} |")
    for target in targets:
        print(f"{'MET' if target['met'] else 'MISSED':6s} {target['target']}: {target['value']}")
    if listing:
        print(f"listing {listing['files']:,} files: {listing['listing_s']} s, planning: {listing['planning_s']} s, "
              f"first batch's graph: {listing['first_batch_graph_s']} s")
    print("checks:", ", ".join(f"{name} {'OK' if ok else 'FAIL'}" for name, ok in checks.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "small_files.json").write_text(json.dumps(
        {"rows": rows, "marginal_ms": marginal, "targets": targets, "listing": listing, "checks": checks,
         "runs": {case: {str(n): r for n, r in by.items()} for case, by in runs.items()},
         "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())},
        indent=2), encoding="utf-8")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "loop":
        run_loop(*sys.argv[2:])
    else:
        main()
