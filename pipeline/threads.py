"""How many threads the compiled libraries (OpenCV, BLAS) may start inside one dask worker.

A leaf module: the local schedulers (execution.py) and the distributed workers' plugin
(worker_plugin.py) both cap the pools here, without importing each other.
"""

from __future__ import annotations

import os


def limit_library_threads(threads: int) -> None:
    """Cap the thread pools of the compiled libraries inside one dask worker.

    Dask already runs one task per core; OpenCV and BLAS each starting a pool per task on top
    of that would oversubscribe the cores (workers × library threads ≤ cores).
    """
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(threads)
    threadpool_limits(threads)


def library_threads(workers: int) -> int:
    """Library threads per task when ``workers`` tasks run at once on this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
