"""Which dask scheduler runs the graph, with how many workers, and how progress is shown."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from functools import partial
from typing import Any

import dask
from dask.callbacks import Callback

SCHEDULERS = {"sync": "synchronous", "threads": "threads", "processes": "processes"}


def resolve_workers(workers: int | str) -> int:
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


class RichProgress(Callback):
    """A rich progress bar over the graph's tasks, with elapsed time and ETA (local schedulers)."""

    def __init__(self, description: str = "convolving") -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return super().__enter__()

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)
        self._progress.stop()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))
        self._progress.update(self._task, total=total, completed=len(state["finished"]))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self._progress.advance(self._task)


def show_progress(requested: bool | None) -> bool:
    """Progress bars only on a terminal unless asked for explicitly (cron logs stay clean)."""
    return sys.stderr.isatty() if requested is None else requested


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
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def execute(*collections: Any, scheduler: str, workers: int | str, progress: bool = False) -> None:
    """Compute dask collections (e.g. ``da.store(..., compute=False)``) on the chosen scheduler."""
    count = 1 if scheduler == "sync" else resolve_workers(workers)
    options: dict[str, Any] = {"scheduler": SCHEDULERS[scheduler], "num_workers": count}
    threads = library_threads(count)
    if scheduler == "processes":  # spawned workers start with fresh pools: cap them at start-up
        options["multiprocessing.initializer"] = partial(limit_library_threads, threads)
    else:
        limit_library_threads(threads)
    with dask.config.set(options), (RichProgress() if progress else nullcontext()):
        dask.compute(*collections)
