"""One job, end to end: config → plan → batches → store, safe to kill and rerun.

A run holds the store's lock, decides what is left to do from the store's ledger, and writes the
remaining images batch by batch, recording each batch in the ledger only after its chunks are on
disk. So a rerun of the same job (or ``--resume``) finishes what a killed run left, and a daily
``--append`` processes only files the store has not seen.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.events import Reporter
from pipeline.execution import Executor, open_executor
from pipeline.plan import JobPlan, build_plan
from pipeline.sinks.ledger import file_stats, mark_done, mark_unreadable, pending_batches, recorded_stats
from pipeline.sinks.lock import StoreLock
from pipeline.sinks.zarr_store import (
    StoreLayout,
    StoredResult,
    append_sources,
    check_output_path,
    create_store,
    level_arrays,
    open_result,
    record_source_shapes,
    remove_partial_writes,
    set_status,
    stored_status,
    utc_now,
    write_lazily,
)
from pipeline.sources.images import list_images

log = logging.getLogger(__name__)

# Auto batches: enough of them to checkpoint often, few enough images each to bound the graph.
MAX_AUTO_BATCH = 512
MIN_BATCHES = 20
BATCH_MEMORY = 2 * 1024**3  # the results of one batch, were a scheduler to hold them all


@dataclass(frozen=True)
class RunSummary:
    store: str
    images: int
    processed: int
    skipped: int  # already written by an earlier run
    unreadable: int  # skipped now because their files could not be read (input.on_error: skip)
    shape: tuple[int, ...]
    dtype: str
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def as_event(self) -> dict[str, Any]:
        """The fields of the final ``end`` event and summary line."""
        return {
            "status": "complete",
            **{k: v for k, v in asdict(self).items() if k != "seconds"},
            "shape": list(self.shape),
            "failed": 0,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }


def batch_size(config: PipelineConfig, plan: JobPlan, workers: int) -> int:
    """The configured batch size, or one from the image count, the workers and a memory bound."""
    chosen = config.execution.batch_size
    if chosen != "auto":
        return chosen
    image_bytes = max(1, int(np.prod(plan.image_shape)) * np.dtype(plan.compute_dtype).itemsize)
    by_count = math.ceil(len(plan.sources) / MIN_BATCHES)
    return max(1, min(MAX_AUTO_BATCH, BATCH_MEMORY // image_bytes, max(4 * workers, by_count)))


def run(config: PipelineConfig, *, append: bool = False, reporter: Reporter | None = None) -> RunSummary:
    """Run a job, finish what an earlier run of it left, or (``append``) add new input files.

    Raises a PipelineError subclass on user errors; the store is then marked ``failed`` (or
    ``interrupted``) and a rerun resumes it.
    """
    reporter = reporter or Reporter.silent()
    started = time.perf_counter()
    path = config.output.path
    with StoreLock(path):
        # Checked under the lock: a store another run is creating is busy (exit 5), not foreign.
        exists = check_output_path(path)
        _check_not_inside_inputs(config)
        plan, pending = _prepare(config, exists=exists, append=append, reporter=reporter)
        try:
            with open_executor(config.execution) as executor:
                processed, unreadable = _write_batches(config, plan, pending, executor, reporter)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            reason = str(exc).strip().split("\n")[0] or type(exc).__name__
            set_status(path, status, finished=utc_now(), error=reason)
            if isinstance(exc, OSError) and not isinstance(exc, PipelineError):  # disk full, permissions
                raise OutputError(
                    f"cannot write store {path!r}: {exc.strerror or exc}; nothing unwritten is marked "
                    f"written — free space or fix permissions and rerun to resume"
                ) from None
            raise
        set_status(path, "complete", finished=utc_now())
    summary = RunSummary(
        store=path,
        images=len(plan.sources),
        processed=processed,
        skipped=len(plan.sources) - processed - unreadable,
        unreadable=unreadable,
        shape=plan.shape,
        dtype=plan.dtype,
        seconds=time.perf_counter() - started,
    )
    reporter.end(**summary.as_event())
    return summary


def _prepare(config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter) -> tuple[JobPlan, np.ndarray]:
    """Create, resume or extend the store; return the plan and a per-image 'still to do' mask."""
    plan, pending = _open_or_create(config, exists=exists, append=append, reporter=reporter)
    narrowing = plan.narrowing()
    if narrowing:
        reporter.warning(narrowing)
    return plan, pending


def _open_or_create(
    config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter
) -> tuple[JobPlan, np.ndarray]:
    path = config.output.path
    listed = list_images(config.input.paths)
    if exists and not config.output.overwrite and stored_status(path) != "creating":
        stored = open_result(path)
        known = stored.sources
        seen = set(known)
        new = [source for source in listed if source not in seen]
        # One plan over the store's images and the new ones; it must be the stored job's, and its
        # tiles or slabs must write whole chunks of the store, whatever budget this run has.
        plan = build_plan(config, known + new, stored_chunks=tuple(stored.array.chunks))
        _check_same_job(stored.provenance, plan, path)
        if new and not append:
            raise OutputError(
                f"{len(new)} input files are not in store {path!r} (first: {new[0]!r}); "
                f"pass --append to add them, or --overwrite to recompute everything"
            )
        _report_changed(stored, reporter)
        if new:
            append_sources(path, new)
            if plan.source_shapes:
                record_source_shapes(path, len(known), plan.source_shapes[len(known) :])
        remove_partial_writes(path)
        set_status(path, "running", resumed=utc_now())
        done = open_result(path).done
        return plan, ~done
    plan = build_plan(config, listed)
    layout = StoreLayout(
        shape=plan.shape,
        chunks=plan.chunks,
        dtype=plan.dtype,
        dimension_names=plan.axes,
        codec=config.output.codec,
        ome=config.output.format == "ome",
        levels=config.output.levels,
    )
    provenance = {
        "version": __version__,
        "config": config.model_dump(mode="json"),
        "fingerprint": plan.fingerprint,
        "steps": plan.step_provenance,
        "axes": list(plan.axes),
        "compute_dtype": plan.compute_dtype,
        "started": utc_now(),
    }
    create_store(path, layout, sources=plan.sources, provenance=provenance)
    if plan.source_shapes:
        record_source_shapes(path, 0, plan.source_shapes)
    return plan, np.ones(len(plan.sources), dtype=bool)


def _check_same_job(provenance: dict[str, Any], plan: JobPlan, path: str) -> None:
    if provenance.get("fingerprint") != plan.fingerprint:
        raise OutputError(
            f"store {path!r} was written by a different job (steps, kernels, colour, dtype or codec "
            f"differ); pass --overwrite to replace it, or choose another output.path"
        )


def _report_changed(stored: StoredResult, reporter: Reporter) -> None:
    """Files whose size or mtime differ from when they were processed: reported, not reused silently."""
    done = stored.done
    if not done.any():
        return
    sources = stored.sources
    recorded = recorded_stats(stored.group)
    indices = np.flatnonzero(done)
    now = file_stats([sources[i] for i in indices])
    changed = [sources[i] for i, old, new in zip(indices, recorded[indices], now) if (old != new).any()]
    if changed:
        reporter.warning(
            f"{len(changed)} source files changed since they were processed (first: {changed[0]!r}); "
            f"their stored results are kept — pass --overwrite to recompute",
            changed=changed[:100],
        )


def _check_not_inside_inputs(config: PipelineConfig) -> None:
    """A store inside an input folder would be listed as input by the next run of a glob."""
    store = Path(config.output.path).resolve()
    entries = [config.input.paths] if isinstance(config.input.paths, str) else config.input.paths
    for entry in entries:
        if glob.has_magic(entry):  # the folder part before the first wildcard
            prefix = re.split(r"[*?\[]", entry, maxsplit=1)[0]
            folder = (Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent).resolve()
        elif Path(entry).is_dir():
            folder = Path(entry).resolve()
        else:
            continue  # single files: nothing of the store can be listed as input
        if store == folder or folder in store.parents:
            raise OutputError(
                f"output.path {config.output.path!r} is inside the input folder {str(folder)!r}; "
                f"write the store elsewhere so it is never read back as input"
            )


def _write_batches(
    config: PipelineConfig, plan: JobPlan, pending: np.ndarray, executor: Executor, reporter: Reporter
) -> tuple[int, int]:
    """Write every pending image, batch by batch; return (written, skipped as unreadable)."""
    path = config.output.path
    size = batch_size(config, plan, executor.workers)
    batches = list(pending_batches(~pending, size))
    total = int(pending.sum())
    reporter.start(
        store=path,
        images=len(plan.sources),
        pending=total,
        done=len(plan.sources) - total,
        batches=len(batches),
        batch_size=size,
        scheduler=config.execution.scheduler,
        dashboard=executor.dashboard,
    )
    # Workers may run in another directory (tcp:// schedulers): they get the absolute path.
    target = open_result(os.path.abspath(path), mode="r+")
    written = unreadable = 0
    for number, (start, stop) in enumerate(batches):
        began = time.perf_counter()
        stats = file_stats(plan.sources[start:stop])
        skipped = _write_batch(config, plan, target, executor, reporter, start, stop)
        mark_done(target.group, start, stop, stats)
        written += stop - start - skipped
        unreadable += skipped
        seconds = time.perf_counter() - began
        reporter.batch(
            batch=number,
            start=start,
            stop=stop,
            images=stop - start,
            unreadable=skipped,
            done=written + unreadable,
            pending=total - written - unreadable,
            seconds=round(seconds, 3),
            images_per_second=round((stop - start) / seconds, 2) if seconds > 0 else None,
        )
        log.info("batch %d: images %d-%d written in %.2f s", number, start, stop - 1, seconds)
    return written, unreadable


def _write_batch(
    config: PipelineConfig, plan: JobPlan, target: Any, executor: Executor, reporter: Reporter, start: int, stop: int
) -> int:
    """Write images ``start:stop``; with ``on_error: skip`` leave out unreadable files, return how many.

    A file that fails to decode fails its whole batch; it is recorded as unreadable and the batch is
    computed again without it (chunks already written are simply written again, with the same bytes).
    """
    positions = {source: start + offset for offset, source in enumerate(plan.sources[start:stop])}
    excluded: set[int] = set()
    while True:
        ranges = _ranges_without(start, stop, excluded)
        writes = [
            write_lazily(level, store, start=a)
            for a, b in ranges
            for level, store in zip(plan.levels(a, b), level_arrays(target.group))
        ]
        count = stop - start - len(excluded)
        try:
            executor.compute(*writes, on_progress=lambda share: reporter.advance(share * count))
            return len(excluded)
        except InputError as exc:
            index = positions.get(exc.path or "")
            if config.input.on_error != "skip" or index is None or index in excluded:
                raise
            excluded.add(index)
            mark_unreadable(target.group, index, plan.sources[index], str(exc))
            reporter.warning(f"skipped: {exc}", source=plan.sources[index], index=index)


def _ranges_without(start: int, stop: int, excluded: set[int]) -> list[tuple[int, int]]:
    """Contiguous ranges of ``start:stop`` that leave out ``excluded``."""
    flags = np.ones(stop - start, dtype=bool)
    flags[[i - start for i in excluded]] = False
    return [(a + start, b + start) for a, b in pending_batches(~flags, stop - start)]
