"""GFLOP/s of each kernel-bank strategy (pipeline/steps/bank.py) next to sgemm's, and the cost model's constants.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bank_engines.py [--repeats R] [--threads 1,2]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bank_engines.py --constants

A stand-alone measuring script, not a test. OPENBLAS_CORETYPE=Haswell (set in some environments)
makes numpy's OpenBLAS use its Haswell kernels on AVX-512 machines, which are slower: unset it for
this command only; the kernel threadpoolctl reports is printed first.

Every case is one float32 block of 2048² pixels plus the kernel's halo and C channels, random
values, random weights and bias; each strategy is forced in turn and timed (best of R runs,
strategies interleaved so that a busy machine slows them alike; at one thread in CPU seconds too,
which other processes disturb less). GFLOP/s counts the multiply-adds of a direct correlation,
2·K·C·kh·kw per output pixel, whatever the strategy does; "% sgemm" compares it with sgemm on the
same shapes — (K × C·kh·kw) @ (C·kh·kw × 65536), what a perfect im2col would run at — and each
table's header gives sgemm on 65536×75 @ 75×16; "model s" is the cost model's estimate. Library
threads are capped with threadpoolctl and cv2.setNumThreads, as the pipeline caps them per task,
and freed blocks are kept for reuse (pipeline.allocator), as in its workers.

``--constants`` fits the cost model's constants (bank.py ``COST_CONSTANTS``) instead: each strategy
runs on 7 to 12 banks at one thread, timed in CPU seconds (less disturbed by other processes than
wall time), and non-negative least squares fits the seconds per output position to the model's
terms (``bank.cost_terms``), weighting relative errors; it prints the constants and each bank's
measured and fitted time.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.allocator import keep_freed_blocks  # noqa: E402
from pipeline.steps import bank  # noqa: E402

SIDE = 2048
CASES = [(8, 1, 3), (16, 3, 5), (16, 16, 3), (4, 1, 15), (8, 3, 31)]  # (K, C, kernel side)


def _block(channels: int, spatial: tuple[int, ...], dtype, rng) -> np.ndarray:
    return rng.uniform(-1, 1, (channels, *spatial)).astype(dtype)


def _plans(out_channels: int, channels: int, kernel: tuple[int, ...], dtype, rng) -> dict[str, bank.BankStrategy]:
    weights, bias = rng.standard_normal((out_channels, channels, *kernel)), rng.standard_normal(out_channels)
    return {s: bank.choose_bank_strategy(weights, bias, dtype=dtype, strategy=s) for s in bank.BANK_STRATEGIES}


def _best(functions: dict[str, Callable[[], object]], repeats: int, clock=time.perf_counter) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, the functions interleaved in each round."""
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            began = clock()
            function()
            best[name] = min(best[name], clock() - began)
    return best


def sgemm_rate(rows: int, inner: int, columns: int, clock=time.perf_counter, repeats: int = 20) -> float:
    """GFLOP/s of numpy's float32 ``(rows × inner) @ (inner × columns)``, best of ``repeats``."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, inner)).astype(np.float32)
    b = rng.standard_normal((inner, columns)).astype(np.float32)
    out = np.empty((rows, columns), np.float32)
    seconds = _best({"sgemm": lambda: np.matmul(a, b, out=out)}, repeats, clock)["sgemm"]
    return 2 * rows * inner * columns / seconds / 1e9


def run_cases(threads: int, repeats: int) -> None:
    """The table for one library thread count; one thread is timed in CPU seconds too (busy machines)."""
    rng = np.random.default_rng(0)
    clocks = {"wall": time.perf_counter} | ({"cpu": time.process_time} if threads == 1 else {})
    print(f"\n## {threads} thread(s); sgemm 65536×75 @ 75×16: "
          + ", ".join(f"{sgemm_rate(65536, 75, 16, clock):.1f} GFLOP/s ({name})" for name, clock in clocks.items()))
    print(f"{'bank':>11} {'strategy':>16} {'clock':>5} {'seconds':>8} {'GFLOP/s':>8} {'% sgemm':>8} {'model s':>8}")
    for out_channels, channels, m in CASES:
        plans = _plans(out_channels, channels, (m, m), np.float32, rng)
        block = _block(channels, (SIDE + 2 * (m // 2),) * 2, np.float32, rng)
        pixels = block.shape[1] * block.shape[2]
        flops = 2 * out_channels * channels * m * m * pixels
        runs = max(1, repeats // 2) if out_channels * channels * m * m > 10_000 else repeats  # seconds a run
        chosen = bank.choose_bank_strategy(plans["direct"].weights, plans["direct"].bias, dtype=np.float32).strategy
        name = f"{channels}→{out_channels} {m}×{m}"
        for clock_name, clock in clocks.items():
            seconds = _best({s: (lambda p=p: bank.correlate_bank(block, p)) for s, p in plans.items()}, runs, clock)
            reference = sgemm_rate(out_channels, channels * m * m, 65536, clock)
            for strategy, plan in plans.items():
                rate = flops / seconds[strategy] / 1e9
                print(f"{name:>11} {plan.describe():>16} {clock_name:>5} {seconds[strategy]:8.3f} {rate:8.1f} "
                      f"{100 * rate / reference:7.0f}% {plan.cost() * pixels:8.3f}{'  <- auto' * (strategy == chosen)}")
            print(f"{name:>11} {'sgemm same shapes':>16} {clock_name:>5} {'':>8} {reference:8.1f}")


# Banks the constants are fitted on, per strategy: (K, C, kernel); 2-D on 2048², 3-D on 64×256×256.
FIT_BANKS = {
    "direct": [(1, 1, (3, 3)), (1, 1, (5, 5)), (4, 1, (3, 3)), (2, 3, (5, 5)), (8, 1, (3, 3)), (4, 4, (3, 3)),
               (2, 1, (15, 15)), (16, 3, (5, 5)), (16, 1, (3, 3)), (2, 8, (3, 3)), (2, 2, (3, 3, 3)),
               (1, 2, (5, 5, 5))],
    "gemm": [(2, 1, (3, 3)), (4, 1, (3, 3)), (8, 1, (3, 3)), (16, 1, (5, 5)), (2, 8, (3, 3)), (16, 3, (5, 5)),
             (16, 16, (3, 3)), (4, 1, (15, 15)), (32, 8, (3, 3)), (8, 3, (7, 7)), (64, 16, (3, 3))],
    "fft": [(1, 1, (15, 15)), (4, 1, (15, 15)), (3, 3, (15, 15)), (8, 3, (31, 31)), (2, 2, (21, 21)),
            (2, 2, (3, 3, 3)), (1, 2, (9, 9, 9))],
}
VOLUME = (64, 256, 256)


# What bank.COST_CONSTANTS prices each of bank.cost_terms' terms at, in order.
NAMES = {
    "direct": ["per OpenCV tap", "per scipy tap", "per pair", "per output channel"],
    "gemm": ["per position", "per lowered value", "per flop", "per output value"],
    "fft": ["per transform", "per pair"],
}


def fit_constants(repeats: int) -> None:
    """Non-negative least squares of CPU seconds per output position on the model's terms (relative)."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        print(f"\n## {np.dtype(dtype).name}, one thread, CPU seconds per output position")
        for strategy, banks in FIT_BANKS.items():
            rows, measured = [], []
            for out_channels, channels, kernel in banks:
                plan = _plans(out_channels, channels, kernel, dtype, rng)[strategy]
                spatial = VOLUME if len(kernel) == 3 else (SIDE,) * 2
                block = _block(channels, tuple(n + 2 * (m // 2) for n, m in zip(spatial, kernel)), dtype, rng)
                seconds = _best({"run": lambda: bank.correlate_bank(block, plan)}, repeats, time.process_time)["run"]
                rows.append(bank.cost_terms(plan.weights, plan.pairs, plan.dtype)[strategy])
                measured.append(seconds / math.prod(block.shape[1:]))
            # relative errors: the small banks, where strategies are close, count as much as the big ones
            measured = np.array(measured)
            constants, _ = nnls(np.array(rows) / measured[:, None], np.ones(len(measured)))
            print(f"  {strategy:>6} ({', '.join(NAMES[strategy])}): ({', '.join(f'{v:.2g}' for v in constants)})")
            for (out_channels, channels, kernel), row, seconds in zip(banks, rows, measured):
                shape = "×".join(map(str, kernel))
                fitted = np.dot(row, constants)
                print(f"         {channels}→{out_channels} {shape}: measured {seconds:.3g}, fitted {fitted:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated library thread counts")
    parser.add_argument("--constants", action="store_true", help="fit the cost model's constants instead")
    args = parser.parse_args()
    keep_freed_blocks()  # as the pipeline's workers do: freed blocks are reused, not page-faulted again
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if name in os.environ:
            print(f"warning: {name}={os.environ[name]} is set; numpy's OpenBLAS may run slower kernels")
    blas = [f"{i['internal_api']} {i['version']} {i.get('architecture', '?')} ({Path(i['filepath']).name})"
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"BLAS: {'; '.join(blas)}; OpenCV {cv2.__version__}; numpy {np.__version__}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.constants:
        with threadpool_limits(1):
            cv2.setNumThreads(1)
            fit_constants(args.repeats)
        return
    for threads in (int(t) for t in args.threads.split(",")):
        with threadpool_limits(threads):
            cv2.setNumThreads(threads)
            run_cases(threads, args.repeats)


if __name__ == "__main__":
    main()
