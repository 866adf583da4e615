"""Benchmark the pipeline against dask-image, plain per-image loops and the I/O floor, in one run.

    python benchmarks/run.py                 # 48 images, 3 repeats, all cases, plus the 10x memory case
    python benchmarks/run.py --quick         # 8 images, 1 repeat, no 10x case, no 31x31 scipy loop
    python benchmarks/run.py --only pipeline,floor --kernels 3x3
    python benchmarks/run.py --only huge,volume --large-scale 0.25 --repeats 1   # the large cases, shrunk

Writes benchmarks/results/results.json and results.png; see benchmarks/README.md. Exits 1 if a
case failed or wrote wrong results.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil
from rich.console import Console

from cases import CASES, CONVOLVING, KERNELS, command
from collection import WORK, collection_files, ensure_collection
import large
from measure import RunFailed, measure
import report
from verify import check_store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = WORK / "out"
SLOW_LIMIT_S = 600  # a single run predicted to take longer is timed on a subset and extrapolated
SUBSET = 8
LARGE_CASES = large.WORKLOADS  # huge, volume: one big image each, see large.py
ALL_CASES = [*CASES, "memory", *LARGE_CASES]
console = Console(width=None if sys.stdout.isatty() else 160)  # make and logs are not terminals: no 80-column wrap


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the pipeline (see benchmarks/README.md).")
    parser.add_argument("--images", type=int, default=48, help="collection size N (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per case and kernel (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: N=8, 1 repeat, no 10xN memory case, no 31x31 scipy loop, "
                             "no huge/volume cases unless --large or --only names them")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated cases among {', '.join(ALL_CASES)} (default all)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated among {', '.join(KERNELS)}")
    parser.add_argument("--large", action="store_true",
                        help="run the huge and volume cases even with --quick (a full run includes them)")
    parser.add_argument("--large-scale", type=float, default=1.0, metavar="S",
                        help="multiply the pixel counts of the huge image (side x sqrt(S)) and the volume "
                             "(depth x S) by S, e.g. 0.25 for a smoke test (default 1)")
    args = parser.parse_args()
    explicit = args.only is not None
    if args.quick:
        args.images, args.repeats = 8, 1
    args.only = _choices(args.only or ",".join(ALL_CASES), ALL_CASES, parser)
    if args.quick and not args.large and not explicit:  # --quick leaves them out unless asked for
        args.only = [case for case in args.only if case not in LARGE_CASES]
    args.kernels = _choices(args.kernels, list(KERNELS), parser)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    if not args.large_scale > 0:
        parser.error("--large-scale must be positive")
    return args


def _choices(text: str, allowed: list[str], parser: argparse.ArgumentParser) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        parser.error(f"unknown {unknown}; choose among {', '.join(allowed)}")
    return chosen


class Timed:
    """One case timed once per round; its last run's store is checked, then deleted.

    ``prepare`` may say the case is skipped; ``once`` runs it one time. Only one store is ever on
    disk: each run's is deleted after it, the last one after its check. Subclasses say what runs
    (``argv``), how its seconds scale (``factor``) and how its store is checked (``check``).
    """

    width = 12  # of the case's name in the progress lines
    factor = 1.0

    def __init__(self, case: str, label: str, row: dict, out: Path, args: argparse.Namespace) -> None:
        self.case, self.label, self.out, self.args = case, label, out, args
        self.row = {"case": case, "kernel": label, **row, "runs": [], "note": ""}
        self.done = False  # skipped or failed: no more rounds

    def prepare(self) -> None: ...

    def argv(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> dict:
        raise NotImplementedError

    def once(self, repeat: int, checks: list) -> None:
        shutil.rmtree(self.out, ignore_errors=True)  # no case pays for deleting an earlier store
        try:
            run = measure(self.argv(), cwd=str(ROOT))
            seconds = run.seconds * self.factor
            self.row["runs"].append({"seconds": seconds, "measured_seconds": run.seconds, "inner_seconds": run.inner_seconds,
                                     "peak_rss_mib": run.peak_rss_mib, "tree_rss_mib": run.tree_rss_mib})
            console.print(f"  {self.case:<{self.width}} {self.label:<6} run {repeat + 1}/{self.args.repeats}: "
                          f"{seconds:7.2f} s, peak RSS {run.peak_rss_mib:6.0f} MiB", highlight=False)
            if repeat == self.args.repeats - 1:
                self.row["summary"] = report.summarize(self.row["runs"])
                checks.append(self.check())
        except RunFailed as exc:
            self.fail(exc)
        finally:
            shutil.rmtree(self.out, ignore_errors=True)

    def fail(self, exc: Exception) -> None:
        _record_failure(self.row, f"{self.case} {self.label}", exc)
        self.done = True


class TimedCase(Timed):
    """A case (and kernel) of the collection; the 31x31 scipy loop may be timed on a subset."""

    def __init__(self, case: str, kernel: str | None, folder: Path, args: argparse.Namespace) -> None:
        label = kernel or "none"
        super().__init__(case, label, {"images": args.images}, OUT / f"{case}-{label}.zarr", args)
        self.kernel, self.folder = kernel, folder
        self.limit: int | None = None

    def prepare(self) -> None:
        if self.args.quick and self.case == "scipy-loop" and self.kernel == "31x31":
            self.row["note"], self.done = "skipped (--quick)", True
            return
        try:
            self.limit = _subset_if_slow(self.case, self.kernel, self.folder, self.out, self.args)
        except RunFailed as exc:
            self.fail(exc)
            return
        if self.limit:
            self.factor = self.args.images / self.limit
            self.row["note"] = (f"timed on {self.limit} of {self.args.images} images, "
                                f"seconds ×{self.factor:.2f} (extrapolated)")

    def argv(self) -> list[str]:
        return command(self.case, self.kernel, str(self.folder), str(self.out), limit=self.limit)

    def check(self) -> dict:
        files = collection_files(self.folder)
        return check_store(self.case, self.kernel, str(self.out), files[: self.limit] if self.limit else files).to_dict()


def interleaved(jobs: list, repeats: int, checks: list) -> None:
    """Round r runs every job once, in turn: a change in the shared machine's speed during the
    benchmark then touches every case alike, and the ratios of medians compare the same rounds."""
    for job in jobs:
        job.prepare()
    for repeat in range(repeats):
        for job in jobs:
            if not job.done:
                job.once(repeat, checks)


def bench_case(case: str, kernel: str | None, folder: Path, args: argparse.Namespace, checks: list) -> dict:
    """Time one case and kernel ``repeats`` times on its own, then check what its last run wrote."""
    job = TimedCase(case, kernel, folder, args)
    interleaved([job], args.repeats, checks)
    return job.row


def _record_failure(row: dict, what: str, exc: Exception) -> None:
    """A failed case stays in the table, marked, with its error; the benchmark goes on."""
    row["note"] = f"FAILED: {str(exc).splitlines()[-1][:120]}"
    row["error"] = str(exc)
    console.print(f"[red]  {what} failed:[/red] {exc}", highlight=False)


def _subset_if_slow(case: str, kernel: str | None, folder: Path, out: Path, args: argparse.Namespace) -> int | None:
    """Only the 31x31 scipy loop may be extrapolated, and only if one full run would pass 10 minutes."""
    if case != "scipy-loop" or kernel != "31x31" or args.images <= SUBSET:
        return None
    probe = measure(command(case, kernel, str(folder), str(out), limit=4), cwd=str(ROOT))
    predicted = probe.seconds * args.images / 4
    shutil.rmtree(out, ignore_errors=True)
    console.print(f"  scipy-loop 31x31: 4-image probe {probe.seconds:.1f} s, full run predicted {predicted:.0f} s")
    return SUBSET if predicted > SLOW_LIMIT_S else None


def memory_case(results: list[dict], args: argparse.Namespace, checks: list) -> dict:
    """Peak RSS of the pipeline (3x3 edge) at N and at 10xN images (the N mosaics, each listed 10 times)."""
    if args.quick:
        return {"note": "10xN memory case skipped (--quick)", "ratio": None}
    base = report.find(results, "pipeline", "3x3")
    if base is None:
        row = bench_case("pipeline", "3x3", ensure_collection(args.images), args, checks)
        results.append(row)  # shown in the table like any other case
        base = row if row.get("summary") else None
    big = ensure_collection(10 * args.images, distinct=args.images)
    out = OUT / "memory-10n.zarr"
    shutil.rmtree(out, ignore_errors=True)
    console.print(f"  memory: pipeline 3x3 on {10 * args.images} images (one run)")
    try:
        run = measure(command("pipeline", "3x3", str(big), str(out)), cwd=str(ROOT))
        checks.append(check_store("pipeline", "3x3", str(out), collection_files(big)).to_dict() | {"case": "pipeline-10N"})
    except RunFailed as exc:
        return {"note": f"FAILED: {exc}", "ratio": None}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rss_n = base["summary"]["peak_rss_mib"] if base else None
    return {
        "images_n": args.images, "images_10n": 10 * args.images,
        "rss_n_mib": rss_n, "rss_10n_mib": run.peak_rss_mib, "tree_rss_10n_mib": run.tree_rss_mib,
        "seconds_10n": run.seconds, "ratio": run.peak_rss_mib / rss_n if rss_n else None,
    }


def large_cases(name: str, args: argparse.Namespace, checks: list) -> list[dict]:
    """One big image (see large.py): the floors, the pipeline, dask-image and libvips, in rounds."""
    workload = large.workloads(args.large_scale)[name]
    path, built = large.ensure_input(workload)
    with open(path, "rb") as source:  # every run then reads the file from the page cache
        while source.read(16 * 2**20):
            pass
    tile = large.store_tile(workload)
    console.print(f"[bold]{workload.describe()}[/bold], {path.stat().st_size / 2**20:.0f} MiB "
                  f"({'built now' if built else 'cached'}), {workload.float32_mib:.0f} MiB as float32"
                  + (f", tiles and store chunks {tile}x{tile}" if tile else
                     f", slabs of {large.slab_depth(workload)} slices, one slice per chunk"), highlight=False)
    jobs = [TimedLarge(workload, variant, tile, args) for variant in large.variants(workload)]
    interleaved(jobs, args.repeats, checks)
    return [job.row for job in jobs]


class TimedLarge(Timed):
    """A variant of a large workload; its store is about 0.5 GiB at full size."""

    width = 17

    def __init__(self, workload: large.Workload, variant: str, tile: int | None, args: argparse.Namespace) -> None:
        row = {"images": 1, "workload": workload.name, "input": workload.describe(), "shape": list(workload.shape),
               "float32_mib": workload.float32_mib}
        super().__init__(f"{workload.name}:{variant}", workload.kernel if variant in large.CONVOLVING else "none",
                         row, OUT / f"{workload.name}-{variant}.zarr", args)
        self.workload, self.variant, self.tile = workload, variant, tile

    def prepare(self) -> None:
        missing = large.libvips_missing() if self.variant == "libvips" else None
        if missing:
            self.row["note"], self.done = missing, True
            console.print(f"  {self.case:<{self.width}} {missing}", highlight=False)

    def argv(self) -> list[str]:
        return large.command(self.variant, self.workload, str(self.out), self.tile)

    def check(self) -> dict:
        check = large.check_store(self.workload, self.variant, str(self.out), self.tile).to_dict()
        return check | {"crops": large.describe_crops(self.workload, self.tile)}


def main() -> int:
    args = parse_args()
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    collection = [case for case in CASES if case in args.only]
    workloads = [name for name in LARGE_CASES if name in args.only]
    folder = None
    if collection or "memory" in args.only:
        folder = ensure_collection(args.images)
        for path in collection_files(folder):  # every case then reads the files from the page cache
            Path(path).read_bytes()
    console.print(f"[bold]benchmark[/bold]: " + (f"{args.images} images in {folder}, " if folder else "")
                  + (f"large cases {', '.join(workloads)} (scale {args.large_scale:g}), " if workloads else "")
                  + f"{args.repeats} repeat(s), {os.cpu_count()} cores, load average {load_before[0]:.2f}",
                  highlight=False)

    results, checks = [], []
    jobs = [TimedCase(case, kernel, folder, args) for case in collection
            for kernel in (args.kernels if case in CONVOLVING else [None])]
    interleaved(jobs, args.repeats, checks)
    results.extend(job.row for job in jobs)
    memory = memory_case(results, args, checks) if "memory" in args.only else None
    for name in workloads:
        results.extend(large_cases(name, args, checks))
    targets = report.ratios(results, memory)

    console.print()
    report.print_report(console, results, checks, targets, memory, args.images, args.repeats)
    document = {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": report.versions(),
        "pipeline_source": report.pipeline_source(),
        "settings": {"images": args.images, "repeats": args.repeats, "quick": args.quick,
                     "cases": args.only, "kernels": args.kernels, "loop_workers": 2,
                     "image": "2048x2048 RGB JPEG q90, gray float32, mode same, boundary reflect, blosc-lz4",
                     "large": args.large, "large_scale": args.large_scale,
                     "large_workloads": {name: large.workloads(args.large_scale)[name].settings() for name in workloads}},
        "results": results, "checks": checks, "targets": targets, "memory": memory,
    }
    report.write_json(RESULTS / "results.json", document)
    report.write_chart(RESULTS / "results.png", results,
                       (f"{args.images} images 2048x2048, " if collection else "")
                       + f"median of {args.repeats}, {os.cpu_count()} cores")
    console.print(f"wrote {RESULTS / 'results.json'} and {RESULTS / 'results.png'}", highlight=False)
    failed = [r for r in results if r.get("error")] + [c for c in checks if not c["ok"]]
    if memory and str(memory.get("note", "")).startswith("FAILED"):
        failed.append(memory)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
