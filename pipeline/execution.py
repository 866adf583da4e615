"""Which dask scheduler runs the graphs, with how many workers, and how library threads are capped.

Local schedulers (``sync``, ``threads``, ``processes``) run in this process or its children; the
distributed ones (``local`` = a LocalCluster, ``tcp://HOST:PORT`` = an existing scheduler, and
``slurm``/``pbs``/``sge`` through dask-jobqueue) are reached through a ``distributed.Client``.
Either way a run hands its batches to one ``Executor``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator

import dask
import zarr
from dask.callbacks import Callback

from pipeline.allocator import keep_freed_blocks
from pipeline.errors import ConfigError
from pipeline.jobqueue import LOOK_INTERVAL, JobKeeper, start_cluster
from pipeline.threads import library_threads, limit_library_threads

if TYPE_CHECKING:
    from pipeline.config import ExecutionConfig

# The local schedulers' get functions. Handing dask the function rather than its name spares the
# import of ``distributed`` (0.1 s of every run) that dask makes to look for a client by that name.
LOCAL_SCHEDULERS = {"sync": "dask.local:get_sync", "threads": "dask.threaded:get", "processes": "dask.multiprocessing:get"}
# Chunks one task encodes and writes at a time. Dask's workers already keep every core busy; zarr's
# own concurrency (10 chunks) on top held ten encoded slices per task of a volume's slab, about
# 100 MiB more at the peak, and was no faster.
ZARR_CHUNKS_AT_ONCE = 1


def _local_get(scheduler: str) -> Callable[..., Any]:
    module, name = LOCAL_SCHEDULERS[scheduler].split(":")
    return getattr(importlib.import_module(module), name)


def resolve_workers(workers: int | str) -> int:
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


def _set_up_process(threads: int) -> None:
    limit_library_threads(threads)
    keep_freed_blocks()
    zarr.config.set({"async.concurrency": ZARR_CHUNKS_AT_ONCE})


class TaskCounter(Callback):
    """Calls ``on_progress(fraction)`` as a local scheduler finishes each task of a graph."""

    def __init__(self, on_progress: Callable[[float], None]) -> None:
        super().__init__()
        self._on_progress = on_progress
        self._share = 0.0

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))
        self._share = 1.0 / max(total, 1)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self._on_progress(self._share)


class Executor:
    """Computes dask collections on the configured scheduler; made by ``open_executor``."""

    def __init__(self, scheduler: str, workers: int, client: Any = None, keeper: JobKeeper | None = None) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.client = client
        self.keeper = keeper

    @property
    def dashboard(self) -> str | None:
        """The dashboard's address, when the scheduler serves one."""
        if self.client is None or "dashboard" not in self.client.scheduler_info().get("services", {}):
            return None
        return self.client.dashboard_link

    def results(self, *collections: Any) -> tuple[Any, ...]:
        """Compute ``collections`` and return their values (small ones: a reduction's result)."""
        if self.client is not None:
            return tuple(self._gathered(self.client.compute(list(collections))))
        with dask.config.set({"scheduler": _local_get(self.scheduler), "num_workers": self.workers}):
            return dask.compute(*collections)

    def compute(self, *collections: Any, on_progress: Callable[[float], None] | None = None) -> None:
        """Compute ``collections``; ``on_progress`` receives fractions of the work as it finishes."""
        if self.client is not None:
            self._gathered(self.client.compute(list(collections)))  # lost workers' tasks are rerun elsewhere
            if on_progress is not None:
                on_progress(1.0)
            return
        options: dict[str, Any] = {"scheduler": _local_get(self.scheduler), "num_workers": self.workers}
        if self.scheduler == "processes":  # spawned workers start with fresh pools: set them up at start-up
            options["multiprocessing.initializer"] = partial(_set_up_process, library_threads(self.workers))
        with (
            dask.config.set(options),
            zarr.config.set({"async.concurrency": ZARR_CHUNKS_AT_ONCE}),
            TaskCounter(on_progress) if on_progress else ExitStack(),
        ):
            dask.compute(*collections)

    def _gathered(self, futures: list[Any]) -> list[Any]:
        if self.keeper is not None:  # batch jobs: look after them while the futures run
            from distributed import wait

            while True:
                try:
                    wait(futures, timeout=LOOK_INTERVAL)
                    break
                except TimeoutError:
                    if any(future.status == "error" for future in futures):
                        break  # gather raises it now, not when the rest has finished
                    self.keeper.check()
        return self.client.gather(futures)


@contextmanager
def open_executor(execution: ExecutionConfig) -> Iterator[Executor]:
    """Start or connect to the configured scheduler for the duration of a run."""
    scheduler = execution.scheduler
    if scheduler in LOCAL_SCHEDULERS:
        workers = 1 if scheduler == "sync" else resolve_workers(execution.workers)
        if scheduler != "processes":
            limit_library_threads(library_threads(workers))
            keep_freed_blocks()
        yield Executor(scheduler, workers)
        return
    with ExitStack() as stack:
        client, keeper = _client(execution, stack)
        stack.enter_context(client)
        if keeper is not None:
            keeper.start()  # the jobs submitted and a first worker joined
        # Distributed workers run one task per thread: one library thread per task.
        from pipeline.worker_plugin import LimitLibraryThreads

        client.register_plugin(LimitLibraryThreads(1), name="pipeline-limit-threads")
        workers = keeper.workers if keeper is not None else len(client.scheduler_info().get("workers", {}))
        yield Executor(scheduler, workers, client, keeper)


def _client(execution: ExecutionConfig, stack: ExitStack) -> tuple[Any, JobKeeper | None]:
    """A client of the configured distributed scheduler, and the keeper of its batch jobs if any."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("execution.scheduler: distributed schedulers need the 'distributed' package") from None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # distributed logs every connection at INFO: keep cron output to what the run reports
        logging.getLogger("distributed").setLevel(logging.ERROR)
    scheduler = execution.scheduler
    if scheduler.startswith("tcp://"):
        try:
            return Client(scheduler, timeout=execution.connect_timeout), None
        except OSError as exc:
            raise ConfigError(f"execution.scheduler: cannot reach {scheduler}: {exc}") from None
    keeper = None
    with warnings.catch_warnings():  # "port 8787 in use": it picks another, and we print the link
        warnings.simplefilter("ignore", UserWarning)
        if scheduler == "local":
            cluster = LocalCluster(
                n_workers=resolve_workers(execution.workers),
                threads_per_worker=execution.threads_per_worker,
                memory_limit=execution.memory_limit,
                processes=True,
            )
        else:
            cluster = start_cluster(execution)
            keeper = JobKeeper(cluster, execution)
    stack.enter_context(cluster)  # closing a jobqueue cluster cancels its jobs
    return Client(cluster), keeper
