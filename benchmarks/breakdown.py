"""Where an image's time goes in the many-small-images case: a py-spy profile, sorted into rows.

    python benchmarks/breakdown.py                 # 4,000 PNGs (the small_files.py collection)
    python benchmarks/breakdown.py --images 40000 --rounds 3

Each round runs the same ``pipeline run`` as ``small_files.py`` twice in fresh processes: once
unprofiled, for its wall and CPU time (user + system, from ``os.wait4``), and once under
``py-spy record --nonblocking`` (in the ``bench`` extra), for where that CPU goes. Samples of
threads that wait (an idle pool worker, a condition, the event loop's ``select``, the lock's
heartbeat between beats) are left out; the others are sorted by the rules in ``ROWS`` (first
match wins: imports anywhere in the stack, then the innermost frame that names a known part) and
scaled so that the rows add up to the unprofiled run's CPU time per image. Native code is counted
in the Python frame that called it (py-spy without ``--native``), so zlib inside Pillow is decode
and blosc inside numcodecs is a write.

Writes benchmarks/results/breakdown.json and prints the table for the README.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection import WORK  # noqa: E402
from measure import measure  # noqa: E402
from small_files import PIPELINE, ensure_small, job  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))

# A sample is waiting when its innermost frame is one of these: nothing runs on that thread.
WAITING = re.compile(
    r"^(_worker \(concurrent/futures/thread\.py:81\)"  # an idle pool worker, blocked on its queue
    r"|\S+\.select \(selectors\.py"  # the event loop, between events
    r"|Condition\.wait |Event\.wait |Thread\.join |_wait_for_tstate_lock |Queue\.get "
    r"|Lock\.acquire |_SemaphoreBase|sleep )"
)

# Rows, in order: a sample goes to the first row whose pattern matches (imports: any frame;
# the others: the innermost frame with a file matching any row's pattern, then that row).
IMPORTS = "start-up imports (and a read's first Pillow import)"
ROWS: list[tuple[str, re.Pattern]] = [
    ("decode and header checks (Pillow: the file's open, zlib, the pixel copy)",
     re.compile(r"\((PIL|imageio|pipeline/sources/(decode|headers|frames|image_libraries))[/.]")),
    ("zarr writes (compression, one chunk file per group of images, zarr for edge chunks and metadata)",
     re.compile(r"\((zarr|numcodecs|pipeline/sinks)/")),
    ("convolve and cast", re.compile(r"\((scipy|pipeline/steps/|pipeline/pixels\.py|pipeline/ndfilters\.py)")),
    ("reading blocks", re.compile(r"\(pipeline/sources/")),
    ("listing, planning, batches, ledger", re.compile(r"\(pipeline/(job_plan|batches|budget|storage|jobs)\.py")),
    ("dask: graph building and ordering, scheduling, a task per group of images",
     re.compile(r"\((dask|toolz|tlz|cloudpickle)/|\(pipeline/(execution|threads)\.py")),
    ("the CLI, configuration, events, the interpreter", re.compile(r".")),
]


def sort_samples(raw: Path) -> tuple[Counter, int]:
    """Samples per row from py-spy's raw (collapsed) output, and the count of waiting samples."""
    rows: Counter = Counter()
    waiting = 0
    patterns = [pattern for _, pattern in ROWS]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or WAITING.match(frames[-1]):
            waiting += int(count)
            continue
        if "<frozen importlib._bootstrap>" in stack:
            rows[IMPORTS] += int(count)
            continue
        for frame in reversed(frames):
            hit = next((name for (name, _), pattern in zip(ROWS[:-1], patterns) if pattern.search(frame)), None)
            if hit:
                rows[hit] += int(count)
                break
        else:
            rows[ROWS[-1][0]] += int(count)
    return rows, waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--largest", type=int, default=40000, help="the collection the folder is a prefix of")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    folder = ensure_small(args.images, max(args.images, args.largest))
    out = WORK / "out" / f"breakdown-{args.images}.zarr"
    config = job(folder, out, WORK / "configs" / f"breakdown-{args.images}.yaml")
    argv = [PIPELINE, "run", str(config), "--overwrite", "--no-progress"]
    cpu, wall, samples, waiting = [], [], Counter(), 0
    for index in range(args.rounds):
        shutil.rmtree(out, ignore_errors=True)
        run = measure(argv, cwd=str(WORK))
        cpu.append(run.cpu_seconds)
        wall.append(run.seconds)
        shutil.rmtree(out, ignore_errors=True)
        raw = WORK / f"breakdown-{index}.txt"
        subprocess.run([PY_SPY, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw", "-o", str(raw),
                        "--", *argv], cwd=WORK, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows, idle = sort_samples(raw)
        samples.update(rows)
        waiting += idle
        print(f"round {index + 1}: {run.seconds:.2f} s wall, {run.cpu_seconds:.2f} s CPU unprofiled; "
              f"{sum(rows.values())} samples sorted, {idle} waiting", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    cpu_ms = statistics.median(cpu) * 1000 / args.images
    busy = sum(samples.values())
    order = [IMPORTS] + [name for name, _ in ROWS]
    table = {name: round(cpu_ms * samples[name] / busy, 3) for name in order if samples[name]}
    report = {"images": args.images, "rounds": args.rounds, "rate_hz": args.rate,
              "wall_s": wall, "cpu_s": cpu, "cpu_ms_per_image": round(cpu_ms, 3),
              "samples": dict(samples), "waiting_samples": waiting, "ms_per_image": table}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "breakdown.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\n| {args.images:,} images: median {statistics.median(wall):.2f} s wall, "
          f"{statistics.median(cpu):.2f} s CPU | CPU per image |\n|---|---|")
    for name, ms in sorted(table.items(), key=lambda item: -item[1]):
        print(f"| {name} | {ms:.2f} ms |")
    print(f"| **total** | **{cpu_ms:.2f} ms** |")


if __name__ == "__main__":
    main()
