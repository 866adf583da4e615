"""A distributed WorkerPlugin, kept apart so that local runs never import ``distributed``."""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

from pipeline.threads import limit_library_threads


class LimitLibraryThreads(WorkerPlugin):
    """Cap OpenCV/BLAS threads on every worker, also on workers that join after a failure."""

    idempotent = True

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        limit_library_threads(self.threads)
