"""Benchmark the layer workload, in one run, interleaved: whole processes, medians of repeats.

    python benchmarks/layers.py               # 48 photographs 2048² (the benchmark's mosaics), 3 repeats
    python benchmarks/layers.py --quick       # 8 images, 1 repeat
    python benchmarks/layers.py --only layer,floor,torch,bank,memory --no-torch

Cases (each a fresh process, its output checked):

* ``layer`` — `pipeline run`: colour kept, a 3→16 5×5 layer with bias, ReLU, 2×2 max-pool, float32
  blosc-lz4 Zarr; ``floor`` — the same job without steps (decode, write); ``torch`` — a plain
  PyTorch CPU loop doing the same job (decode with OpenCV, conv2d + relu + max_pool2d, the same
  Zarr codec), when torch is installed (``--torch`` insists on it, ``--no-torch`` skips it; torch
  is never a dependency of the package);
* ``memory`` — the ``layer`` job on 4×N images (the N mosaics listed four times): its peak RSS
  against the median at N;
* ``bank`` — the layer's compute alone: the chosen strategy on one 2048² block, and the whole pass
  (layer + ReLU + pool, band by band) on one thread and on two (two images at once, as the
  pipeline's two workers run), in GFLOP/s per CPU-second (robust to a busy machine) against
  numpy's sgemm on a 65536×75 @ 75×16 problem on one thread.

Writes benchmarks/results/layers.json. The learn workload is benchmarks/learn.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection import WORK, ensure_collection  # noqa: E402
from measure import measure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
TORCH_LOOP = '''
import sys, time, glob, numpy as np, cv2, torch, zarr
from zarr.codecs import BloscCodec
torch.set_num_threads(2)
files = sorted(glob.glob(sys.argv[1] + "/*.jpg")); out = sys.argv[2]
w = torch.from_numpy(np.load(sys.argv[3]).astype(np.float32)); b = torch.from_numpy(np.load(sys.argv[4]).astype(np.float32))
started = time.perf_counter()
array = zarr.create_array(out, shape=(len(files), 16, 1024, 1024), chunks=(1, 16, 1024, 1024), dtype="float32",
                          compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), overwrite=True)
for i, f in enumerate(files):
    rgb = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
    # the pipeline's default border, scipy's reflect, is numpy's symmetric (torch's reflect is scipy's mirror)
    x = torch.from_numpy(np.pad(np.moveaxis(rgb, -1, 0).astype(np.float32), ((0, 0), (2, 2), (2, 2)), mode="symmetric"))[None]
    y = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(x, w, b)), 2)
    array[i] = y[0].numpy()
print(f"{time.perf_counter() - started:.3f}")
'''


def layer_job(folder: Path, out: Path, steps: list, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"input": {"paths": str(folder), "color": "keep"}, "steps": steps,
                                    "output": {"path": str(out), "overwrite": True}}), encoding="utf-8")
    return path


def median_run(argv: list[str], repeats: int) -> dict:
    runs = [measure(argv, cwd=str(WORK)) for _ in range(repeats)]
    return {"seconds": statistics.median(r.seconds for r in runs), "peak_rss_mib": max(r.peak_rss_mib for r in runs),
            "cpu_seconds": statistics.median(r.cpu_seconds for r in runs), "all": [round(r.seconds, 3) for r in runs]}


def bank_rate(repeats: int = 5) -> dict:
    """GFLOP/s of the 3→16 5×5 bank and of the fused pass on 2048² images, against sgemm, in CPU time.

    Each measurement is interleaved with sgemm's and the best of ``repeats`` kept (CPU seconds: a
    busy machine preempts, which CPU time does not count, but its caches are still shared).
    """
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from pipeline.steps.bank import correlate_bank
    from pipeline.steps.chain import chain

    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, 2048, 2048)).astype(np.float32)
    steps = _layer_steps(rng.standard_normal((16, 3, 5, 5)), rng.standard_normal(16))
    passes = [chain(da.from_array(images[i : i + 1], chunks=-1), steps) for i in range(2)]
    assert [stage.steps for stage in passes[0].stages] == [(0, 1, 2)], passes[0].stages  # one pass
    plan = steps[0].bank_strategy(np.dtype("float32"))
    flops = 2 * 16 * 3 * 25 * 2048 * 2048
    a = rng.standard_normal((65536, 75)).astype(np.float32)
    m = rng.standard_normal((75, 16)).astype(np.float32)
    sgemm_flops = 2 * 65536 * 75 * 16

    def cpu(work, times: int = 1) -> float:
        began = time.process_time()
        for _ in range(times):
            work()
        return (time.process_time() - began) / times

    def fused(index: int) -> np.ndarray:  # the job's one task per image: layer + relu + pool, banded
        return passes[index].array.compute(scheduler="sync")

    cv2.setNumThreads(1)
    best: dict[str, float] = {}
    for _ in range(repeats):
        with threadpool_limits(1):
            rates = {
                "bank_1": flops / cpu(lambda: correlate_bank(images[0], plan)),
                "pass_1": flops / cpu(lambda: fused(0)),
                "sgemm_1": sgemm_flops / cpu(lambda: a @ m, 20),
            }
            with ThreadPoolExecutor(2) as pool:  # two images at once, one thread each: CPU s of both
                rates["pass_2"] = 2 * flops / cpu(lambda: list(pool.map(fused, (0, 1))))
        for name, rate in rates.items():
            best[name] = max(best.get(name, 0.0), rate / 1e9)
    # OpenBLAS's own threads spin while they wait, so sgemm is compared per thread, not on two
    return {
        "strategy": plan.describe(), "bank_gflops_1_thread": best["bank_1"], "pass_gflops_1_thread": best["pass_1"],
        "pass_gflops_per_thread_2_threads": best["pass_2"], "sgemm_gflops_1_thread": best["sgemm_1"],
        "share_of_sgemm_1_thread": best["pass_1"] / best["sgemm_1"],
    }


def _layer_steps(weights: np.ndarray, bias: np.ndarray) -> list:
    from pipeline.config import validate_config
    from pipeline.steps.chain import build_steps

    config = validate_config({"input": {"paths": "unused/*.png", "color": "keep"}, "output": {"path": "unused.zarr"}, "steps": [
        {"layer": {"weights": weights.tolist(), "bias": bias.tolist()}}, {"activation": "relu"}, {"pool": {"function": "max", "size": 2}}]})
    return build_steps(config.steps)


CASES = ("layer", "floor", "torch", "memory", "bank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases: {', '.join(CASES)}")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the PyTorch loop (default: when torch is installed)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
    only = set(args.only.split(","))
    if only - set(CASES):
        parser.error(f"unknown cases {', '.join(sorted(only - set(CASES)))}; choose from {', '.join(CASES)}")
    folder = ensure_collection(args.images)
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.save(WORK / "w.npy", rng.standard_normal((16, 3, 5, 5)).astype(np.float32) / 10)
    np.save(WORK / "b.npy", rng.standard_normal(16).astype(np.float32))
    layer = [{"layer": {"weights": str(WORK / "w.npy"), "bias": str(WORK / "b.npy")}}, {"activation": "relu"},
             {"pool": {"function": "max", "size": 2}}]
    jobs = {
        "layer": [PIPELINE, "run", str(layer_job(folder, WORK / "layer.zarr", layer, WORK / "layer.yaml")), "--quiet"],
        "floor": [PIPELINE, "run", str(layer_job(folder, WORK / "floor.zarr", [], WORK / "floor.yaml")), "--quiet"],
    }
    if "torch" in only and args.torch is not False:
        if importlib.util.find_spec("torch") is not None:
            (WORK / "torch_loop.py").write_text(TORCH_LOOP, encoding="utf-8")
            jobs["torch"] = [sys.executable, str(WORK / "torch_loop.py"), str(folder), str(WORK / "torch.zarr"),
                             str(WORK / "w.npy"), str(WORK / "b.npy")]
        elif args.torch:
            parser.error("--torch: torch is not installed in this environment")
        else:
            print("torch is not installed: the PyTorch loop is not measured (install torch to compare)")
    jobs = {name: argv for name, argv in jobs.items() if name in only}
    results: dict = {"images": args.images, "load_before": os.getloadavg(), "cases": {}, "cpu_seconds": {}, "peak_rss_mib": {}}
    for round_ in range(args.repeats):  # interleaved: A B C A B C …
        for name, argv in jobs.items():
            run = median_run(argv, 1)
            results["cases"].setdefault(name, []).append(run["seconds"])
            results["cpu_seconds"].setdefault(name, []).append(run["cpu_seconds"])
            results["peak_rss_mib"].setdefault(name, []).append(run["peak_rss_mib"])
    results["medians"] = {name: statistics.median(times) for name, times in results["cases"].items()}
    results["cpu_medians"] = {name: statistics.median(times) for name, times in results["cpu_seconds"].items()}
    if "torch" in jobs and "layer" in jobs:
        results["torch_matches_layer"] = _same_result(WORK / "layer.zarr", WORK / "torch.zarr")
    if "memory" in only:
        results["memory"] = memory_case(args, layer)
    if "bank" in only:
        results["bank"] = bank_rate()
    results["targets"] = targets(results)
    results["load_after"] = os.getloadavg()
    print(json.dumps({key: results[key] for key in ("medians", "cpu_medians", "memory", "bank", "targets", "load_before", "load_after")
                      if key in results}, indent=2), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "layers.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


def memory_case(args: argparse.Namespace, steps: list) -> dict:
    """The layer job's peak RSS on 4×N images (the N mosaics, each listed four times) against N."""
    runs = {}
    for images in (args.images, 4 * args.images):
        folder = _hard_links(images, args.images)
        job = layer_job(folder, WORK / f"memory{images}.zarr", steps, WORK / f"memory{images}.yaml")
        runs[images] = median_run([PIPELINE, "run", str(job), "--quiet"], 1)
        shutil.rmtree(WORK / f"memory{images}.zarr", ignore_errors=True)
    small, large = (runs[n]["peak_rss_mib"] for n in (args.images, 4 * args.images))
    return {"images": [args.images, 4 * args.images], "peak_rss_mib": [small, large], "ratio": large / small,
            "seconds": [runs[n]["seconds"] for n in (args.images, 4 * args.images)]}


def _hard_links(images: int, distinct: int) -> Path:
    """A folder of ``images`` hard links cycling over ``distinct`` mosaics: distinct files to the
    listing, which keeps a file reached by two symbolic links once."""
    folder = WORK / f"n{images}-of-{distinct}-hard"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(ensure_collection(distinct).glob("*.jpg"))
    for i in range(images):
        link = folder / f"img-{i:04d}.jpg"
        if not link.exists():
            os.link(sources[i % distinct].resolve(), link)
    return folder


def _same_result(ours: Path, theirs: Path) -> bool:
    """The PyTorch loop computed what the pipeline did (first and last image, float32 tolerance)."""
    import zarr

    a, b = zarr.open_group(str(ours), mode="r")["0"], zarr.open_array(str(theirs), mode="r")
    if a.shape != b.shape:
        return False
    return all(np.allclose(a[i], b[i], rtol=1e-4, atol=1e-3 * float(np.abs(a[i]).max())) for i in (0, a.shape[0] - 1))


def targets(results: dict) -> dict:
    """Each target with its measured ratio and MET or MISSED."""
    out = {}
    medians = results["medians"]
    if "torch" in medians and "layer" in medians:
        ratio = medians["torch"] / medians["layer"]
        out["torch ÷ layer, wall (≥ 3)"] = [round(ratio, 2), "MET" if ratio >= 3 else "MISSED"]
        cpu = results["cpu_medians"]["torch"] / results["cpu_medians"]["layer"]
        out["torch ÷ layer, CPU seconds (no target)"] = [round(cpu, 2), "-"]
    if "bank" in results:
        share = results["bank"]["share_of_sgemm_1_thread"]
        out["layer pass ÷ sgemm, one thread (≥ 0.5)"] = [round(share, 2), "MET" if share >= 0.5 else "MISSED"]
    if "memory" in results:
        ratio = results["memory"]["ratio"]
        out["peak RSS 4×N ÷ N (≤ 1.2)"] = [round(ratio, 2), "MET" if ratio <= 1.2 else "MISSED"]
    return out


if __name__ == "__main__":
    main()
