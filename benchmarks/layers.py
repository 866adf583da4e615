"""Benchmark the layer workload, in one run, interleaved: whole processes, medians of repeats.

    python benchmarks/layers.py               # 48 photographs 2048² (the benchmark's mosaics), 3 repeats
    python benchmarks/layers.py --quick       # 8 images, 1 repeat

Cases (each a fresh process, its output checked):

* ``layer`` — `pipeline run`: colour kept, a 3→16 5×5 layer with bias, ReLU, 2×2 max-pool, float32
  blosc-lz4 Zarr; ``floor`` — the same job without steps (decode, write); ``torch`` — a plain
  PyTorch CPU loop doing the same job (decode with OpenCV, conv2d + relu + max_pool2d, the same
  Zarr codec), when torch is installed (never a dependency of the package);
* ``bank`` — the layer's compute alone, GFLOP/s of the chosen strategy against the machine's sgemm
  rate, single-threaded (as a dask worker runs it).

Writes benchmarks/results/layers.json. The learn workload is benchmarks/learn.py.
"""

from __future__ import annotations

import argparse
import json
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
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32))[None]
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
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
            "all": [round(r.seconds, 3) for r in runs]}


def bank_rate() -> dict:
    """GFLOP/s of the 3→16 5×5 bank on one 2048² block, one thread, against sgemm on the same work."""
    from threadpoolctl import threadpool_limits
    import cv2

    from pipeline.steps.bank import correlate_bank, choose_bank_strategy

    rng = np.random.default_rng(0)
    block = rng.standard_normal((3, 2052, 2052)).astype(np.float32)
    weights = rng.standard_normal((16, 3, 5, 5))
    plan = choose_bank_strategy(weights, np.zeros(16), dtype=np.dtype("float32"))
    flops = 2 * 16 * 3 * 25 * 2048 * 2048
    cv2.setNumThreads(1)
    with threadpool_limits(1):
        correlate_bank(block, plan)
        began = time.perf_counter()
        correlate_bank(block, plan)
        bank = time.perf_counter() - began
        a = rng.standard_normal((65536, 75)).astype(np.float32)
        m = rng.standard_normal((75, 16)).astype(np.float32)
        a @ m
        began = time.perf_counter()
        for _ in range(10):
            a @ m
        sgemm = (time.perf_counter() - began) / 10
    sgemm_rate = 2 * 65536 * 75 * 16 / sgemm / 1e9
    return {"strategy": plan.describe(), "bank_gflops": flops / bank / 1e9, "sgemm_gflops": sgemm_rate,
            "share_of_sgemm": flops / bank / 1e9 / sgemm_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
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
    try:
        import torch  # noqa: F401

        (WORK / "torch_loop.py").write_text(TORCH_LOOP, encoding="utf-8")
        jobs["torch"] = [sys.executable, str(WORK / "torch_loop.py"), str(folder), str(WORK / "torch.zarr"),
                         str(WORK / "w.npy"), str(WORK / "b.npy")]
    except ImportError:
        print("torch is not installed: the PyTorch loop is not measured (pip install torch to compare)")
    results: dict = {"images": args.images, "cases": {}}
    for round_ in range(args.repeats):  # interleaved: A B C A B C …
        for name, argv in jobs.items():
            run = median_run(argv, 1)
            results["cases"].setdefault(name, []).append(run["seconds"])
    results["medians"] = {name: statistics.median(times) for name, times in results["cases"].items()}
    results["bank"] = bank_rate()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "layers.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps({"medians": results["medians"], "bank": results["bank"]}, indent=2))


if __name__ == "__main__":
    main()
