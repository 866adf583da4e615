"""Benchmark `pipeline learn`: learning against applying, memory against the data's size, and PyTorch.

    python benchmarks/learn.py                 # 48 photographs 2048² (the benchmark's mosaics), 3 repeats
    python benchmarks/learn.py --quick         # 8 photographs, 1 repeat, smaller huge pairs
    python benchmarks/learn.py --torch         # also the PyTorch CPU reference (when torch is importable)

Cases, each a fresh process (``measure``: wall time, peak RSS), its result checked:

* ``ratio`` — `pipeline learn` (lstsq) of a 5×5, 15×15 and 31×31 gaussian from the photographs
  paired with their filtered versions (float64 TIFFs, valid size), against `pipeline run` applying
  the learned kernel to the same photographs; learn and apply interleaved round by round. Target
  for 15×15: ≤ 10×. The learned kernel's largest error relative to the true one is reported.
* ``collection`` — peak RSS of the 15×15 fit from 12, 48 and 192 pairs (192: the 48 four times,
  hard links): flat, since batches of pairs are reduced and let go one after the other.
* ``huge`` — one tiled TIFF pair (uint16 photograph mosaic, float32 target, 512² file tiles) of
  4096² and 8192² (``--quick``: 2048², 4096²) learned with the default memory budget: read by
  tiles, peak RSS flat in the image's size.
* ``torch`` (``--torch``) — PyTorch's ``Conv2d(1, 1, 15)`` (a kernel and a bias) trained with Adam
  on the same photographs, their targets with noise added (σ = 1 grey level, so that the best loss
  is not zero), against `pipeline learn` lstsq with ``bias: true`` on the same pairs: until its mean
  squared error over every valid position of every pair is within 1% of lstsq's, or
  ``--torch-seconds`` of training pass. As one trains a network on images this large: inputs and
  targets standardised, mini-batches of 8 random 128² crops, the step halved when the loss stalls.
  The collection's loss is computed between rounds of 25 steps from the pairs' normal equations
  (exact, not counted as training) and checked once by a forward pass over every pair at the end.

Writes benchmarks/results/learn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage, signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection import WORK, collection_files, ensure_collection, load_samples, mosaic  # noqa: E402
from measure import measure  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
LEARN = WORK / "learn"
NOISE = 1.0  # σ of the noise added to the torch case's targets, in grey levels
TORCH_TOLERANCE = 0.01  # the torch case stops within this fraction of lstsq's loss

TORCH_TRAIN = '''
import json, sys, time, glob
import numpy as np, tifffile, torch
from pipeline.sources.images import read_image

torch.set_num_threads(2)
torch.manual_seed(0)
inputs, targets = sorted(glob.glob(sys.argv[1] + "/*.jpg")), sorted(glob.glob(sys.argv[2] + "/*.tif"))
parts, goal, cap, size, lr = np.load(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
crop, batch, steps_per_round = int(sys.argv[8]), int(sys.argv[9]), 25
began = time.perf_counter()
xs = torch.stack([torch.from_numpy(read_image(f, color="gray", dtype="float32")) for f in inputs])[:, None]
ys = torch.stack([torch.from_numpy(tifffile.imread(f).astype(np.float32)) for f in targets])[:, None]
# standardised, as one trains a network: zero mean and unit spread for the inputs and the targets
(mx, sx), (my, sy) = (float(xs.mean()), float(xs.std())), (float(ys.mean()), float(ys.std()))
xs, ys = (xs - mx) / sx, (ys - my) / sy
loading = time.perf_counter() - began
gram, cross, y_sq, count = parts["gram"], parts["cross"][:, 0], float(parts["y_sq"][0]), float(parts["count"])

def original(conv):  # the kernel and bias on the pixels' own scale
    w = conv.weight.detach().double().numpy().ravel() * sy / sx
    return np.append(w, sy * float(conv.bias.detach()) + my - mx * w.sum())

def mse(conv):  # every valid position of every pair, from the pairs' normal equations (float64)
    w = original(conv)
    return float((y_sq - 2 * w @ cross + w @ gram @ w) / count)

conv = torch.nn.Conv2d(1, 1, size)
optimizer = torch.optim.Adam(conv.parameters(), lr=lr)
schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
rng = np.random.default_rng(0)
training, steps, history = 0.0, 0, []
while training < cap:
    started = time.perf_counter()
    for _ in range(steps_per_round):
        picks = rng.integers(len(xs), size=batch)
        corners = rng.integers(ys.shape[-1] - crop + 1, size=(batch, 2))
        xb = torch.stack([xs[i, :, r : r + crop + size - 1, c : c + crop + size - 1] for i, (r, c) in zip(picks, corners)])
        yb = torch.stack([ys[i, :, r : r + crop, c : c + crop] for i, (r, c) in zip(picks, corners)])
        loss = torch.mean((conv(xb) - yb) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    training += time.perf_counter() - started
    steps += steps_per_round
    history.append([steps, round(training, 2), mse(conv)])
    schedule.step(history[-1][2])
    print(*history[-1], optimizer.param_groups[0]["lr"], file=sys.stderr, flush=True)
    if history[-1][2] <= goal:
        break
started = time.perf_counter()
with torch.no_grad():  # the same loss by a forward pass over every pair, on the pixels' scale, as a check
    forward = sum(float(torch.sum(((conv(x[None]) - y[None]) * sy).double() ** 2)) for x, y in zip(xs, ys)) / count
checking = time.perf_counter() - started
print(json.dumps({"loading_s": loading, "training_s": training, "steps": steps, "reached": history[-1][2] <= goal,
                  "mse": history[-1][2], "mse_forward": forward, "goal": goal, "checking_s": checking,
                  "crop": crop, "batch": batch, "lr": lr,
                  "history": history[-1:] if len(history) < 2 else history[:: max(1, len(history) // 20)] + history[-1:]}))
'''


def median_run(argv: list[str]) -> dict:
    run = measure(argv, cwd=str(WORK))
    return {"seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib}


def gray(path: str) -> np.ndarray:
    from pipeline.sources.images import read_image

    return read_image(path, color="gray", dtype="float64")


def write_targets(inputs: list[str], kernel: np.ndarray, folder: Path, *, noise: float = 0.0) -> Path:
    """Each photograph correlated with ``kernel`` (valid positions), float64 TIFFs named like the photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    stamp = folder / "kernel.npy"
    if stamp.is_file() and np.array_equal(np.load(stamp), kernel) and len(list(folder.glob("*.tif"))) == len(inputs):
        return folder
    for path in inputs:
        target = signal.fftconvolve(gray(path), kernel[::-1, ::-1], mode="valid")
        if noise:
            target = (target + rng.normal(0, noise, target.shape)).astype(np.float32)
        tifffile.imwrite(folder / f"{Path(path).stem}.tif", target, photometric="minisblack")
    np.save(stamp, kernel)
    return folder


def linked(sources: list[Path], folder: Path, count: int) -> Path:
    """``count`` hard links cycling over ``sources``, in sorted order: a larger collection of the same files.

    Hard links, not symlinks: the listing keeps a file reached by two symlinks once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"img-{i:04d}{sources[0].suffix}"
        link.unlink(missing_ok=True)
        os.link(sources[i % len(sources)].resolve(), link)
    return folder


def learn_job(name: str, inputs: Path, targets: Path, size: int, *, bias: bool = False, **extra: object) -> Path:
    path = LEARN / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"inputs": {"paths": str(inputs)}, "targets": {"paths": str(targets)},
                                    "kernel": {"shape": [size, size], "bias": bias}, "output": {"path": str(LEARN / name), "overwrite": True},
                                    **extra}), encoding="utf-8")
    return path


def gaussian(size: int) -> np.ndarray:
    return ndimage.gaussian_filter(np.pad([[1.0]], size // 2), size / 6)


def ratio_cases(folder: Path, repeats: int) -> dict:
    """learn ÷ apply for 5×5, 15×15 and 31×31 kernels, interleaved: learn, apply, learn, apply …"""
    inputs = collection_files(folder)
    out: dict = {}
    for size in (5, 15, 31):
        targets = write_targets(inputs, gaussian(size), LEARN / f"t{size}-{len(inputs)}")
        learn = [PIPELINE, "learn", str(learn_job(f"fit{size}", folder, targets, size)), "--quiet"]
        apply = [PIPELINE, "run", str(LEARN / f"fit{size}" / "job.yaml"), "--quiet", "--overwrite"]
        rounds = []
        for _ in range(repeats):
            rounds.append((median_run(learn), median_run(apply)))
        learned = statistics.median(a["seconds"] for a, _ in rounds)
        applied = statistics.median(b["seconds"] for _, b in rounds)
        error = float(np.abs(np.load(LEARN / f"fit{size}" / "kernel.npy") - gaussian(size)).max() / gaussian(size).max())
        out[f"{size}x{size}"] = {"learn_s": learned, "apply_s": applied, "ratio": learned / applied, "kernel_error": error,
                                 "learn_peak_rss_mib": max(a["peak_rss_mib"] for a, _ in rounds),
                                 "apply_peak_rss_mib": max(b["peak_rss_mib"] for _, b in rounds),
                                 "rounds": [[round(a["seconds"], 2), round(b["seconds"], 2)] for a, b in rounds]}
        print(f"{size}x{size}: {out[f'{size}x{size}']}", flush=True)
    return out


def collection_cases(folder: Path, counts: tuple[int, ...]) -> dict:
    """Peak RSS of the 15×15 fit against the number of pairs (the same pairs, repeated)."""
    inputs = [Path(p) for p in collection_files(folder)]
    targets = sorted(write_targets([str(p) for p in inputs], gaussian(15), LEARN / f"t15-{len(inputs)}").glob("*.tif"))
    out: dict = {}
    for count in counts:
        job = learn_job(f"pairs{count}", linked(inputs, LEARN / f"in{count}", count), linked(targets, LEARN / f"out{count}", count), 15,
                        pairing="order")
        run = median_run([PIPELINE, "learn", str(job), "--quiet"])
        learned = json.loads((LEARN / f"pairs{count}" / "report.json").read_text())["pairs"]
        if learned != count:
            raise RuntimeError(f"the fit of {count} pairs learned from {learned}")
        out[str(count)] = {**run, "seconds_per_pair": run["seconds"] / count}
        print(f"{count} pairs: {out[str(count)]}", flush=True)
    peaks = [case["peak_rss_mib"] for case in out.values()]
    out["peak_spread"] = max(peaks) / min(peaks)
    return out


def huge_pair(side: int) -> tuple[Path, Path]:
    """A ``side``² gray mosaic of the photographs (uint16) and its 15×15 gaussian (float32, valid), 512² file tiles."""
    folder = LEARN / f"huge{side}"
    inputs, targets = folder / "inputs", folder / "targets"
    if (targets / "huge.tif").is_file():
        return inputs, targets
    inputs.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    tiles, cells = load_samples(), side // 2048
    image = np.empty((side, side), dtype=np.uint16)
    for index in range(cells * cells):
        row, col = divmod(index, cells)
        gray_mosaic = mosaic(tiles, index).astype(np.float64) @ [0.299, 0.587, 0.114]
        image[row * 2048:(row + 1) * 2048, col * 2048:(col + 1) * 2048] = np.round(gray_mosaic * 257)
    tifffile.imwrite(inputs / "huge.tif", image, tile=(512, 512), photometric="minisblack")
    target = signal.oaconvolve(image.astype(np.float32), gaussian(15)[::-1, ::-1].astype(np.float32), mode="valid")
    tifffile.imwrite(targets / "huge.tif", target.astype(np.float32), tile=(512, 512), photometric="minisblack")
    return inputs, targets


def huge_cases(sides: tuple[int, ...]) -> dict:
    out: dict = {}
    for side in sides:
        inputs, targets = huge_pair(side)
        run = median_run([PIPELINE, "learn", str(learn_job(f"huge-fit{side}", inputs, targets, 15)), "--quiet"])
        report = json.loads((LEARN / f"huge-fit{side}" / "report.json").read_text())
        error = float(np.abs(np.load(LEARN / f"huge-fit{side}" / "kernel.npy") - gaussian(15)).max() / gaussian(15).max())
        input_mib = side * side * 2 / 2**20
        out[f"{side}x{side}"] = {**run, "pieces": report["pieces"], "input_mib": input_mib,
                                 "target_float64_mib": (side - 14) ** 2 * 8 / 2**20, "kernel_error": error}
        print(f"huge {side}²: {out[f'{side}x{side}']}", flush=True)
    return out


def torch_case(folder: Path, seconds: float, lr: float, crop: int = 128, batch: int = 8) -> dict:
    """PyTorch Conv2d(1, 1, 15) + Adam to within 1% of lstsq's loss on noisy targets, against lstsq on them."""
    from pipeline.learn_config import LearnConfig
    from pipeline.learn_pairs import pair_shape, pair_sources, piece_arrays, pieces
    from pipeline.learning import accumulate

    inputs = collection_files(folder)
    targets = write_targets(inputs, gaussian(15), LEARN / f"t15-noisy-{len(inputs)}", noise=NOISE)
    job = learn_job("noisy", folder, targets, 15, bias=True)
    lstsq = median_run([PIPELINE, "learn", str(job), "--quiet"])
    report = json.loads((LEARN / "noisy" / "report.json").read_text())
    best = report["rmse"][0] ** 2
    # the normal equations of the pairs, for the torch loop to check its loss exactly without a pass
    config = LearnConfig.model_validate(yaml.safe_load(job.read_text()))
    total = sum(accumulate(*piece_arrays(piece, config), (15, 15), bias=True)
                for pair in pair_sources(config)[0] for piece in pieces(pair, pair_shape(pair, config), config, 1 << 40))
    np.savez(LEARN / "noisy-parts.npz", gram=total.gram, cross=total.cross, y_sq=total.y_sq, count=total.count)
    (WORK / "torch_learn.py").write_text(TORCH_TRAIN, encoding="utf-8")
    argv = [sys.executable, str(WORK / "torch_learn.py"), str(folder), str(targets), str(LEARN / "noisy-parts.npz"),
            repr(best * (1 + TORCH_TOLERANCE)), str(seconds), "15", repr(lr), str(crop), str(batch)]
    run = measure(argv, cwd=str(WORK))
    torch = json.loads(run.output.splitlines()[-1])
    return {"lstsq_s": lstsq["seconds"], "lstsq_mse": best, "lstsq_peak_rss_mib": lstsq["peak_rss_mib"],
            "torch": torch, "torch_process_s": run.seconds, "torch_peak_rss_mib": run.peak_rss_mib,
            "training_over_lstsq": torch["training_s"] / lstsq["seconds"],
            "process_over_lstsq": run.seconds / lstsq["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch (Conv2d + Adam) to lstsq's loss")
    parser.add_argument("--torch-seconds", type=float, default=1800.0, help="training time the torch case may take")
    parser.add_argument("--torch-lr", type=float, default=0.05, help="Adam's initial step (halved when the loss stalls)")
    parser.add_argument("--cases", default="ratio,collection,huge", help="comma-separated: ratio, collection, huge")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
    folder = ensure_collection(args.images)
    LEARN.mkdir(parents=True, exist_ok=True)
    cases = set(args.cases.split(","))
    results_path = RESULTS / ("learn-quick.json" if args.quick else "learn.json")
    results: dict = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["images"] = args.images
    if "ratio" in cases:
        results["ratio"] = ratio_cases(folder, args.repeats)
    if "collection" in cases:
        results["collection"] = collection_cases(folder, (2, 8, 32) if args.quick else (12, 48, 192))
    if "huge" in cases:
        results["huge"] = huge_cases((2048, 4096) if args.quick else (4096, 8192))
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not importable: the PyTorch reference is not measured")
        else:
            results["torch"] = torch_case(folder, args.torch_seconds, args.torch_lr)
            print(json.dumps(results["torch"], indent=2), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
