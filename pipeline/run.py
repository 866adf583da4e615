"""One job, end to end: config → plan → batches → store, safe to kill and rerun.

A run holds the store's lock, decides what is left to do from the store's ledger, and writes the
remaining images batch by batch, recording each batch in the ledger only after its chunks are on
disk. So a rerun of the same job (or ``--resume``) finishes what a killed run left, and a daily
``--append`` processes only files the store has not seen.
"""

from __future__ import annotations

import logging
import math
import os
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
from pipeline.plan import JobPlan, build_plan, list_sources
from pipeline.sinks.ledger import file_stats, mark_done, mark_unreadable, pending_batches, recorded_stats
from pipeline.sinks.layout import shard_shape
from pipeline.sinks.lock import StoreLock
from pipeline.sinks.zarr_store import (
    StoreLayout,
    create_grouped_root,
    record_groups,
    stored_groups,
    StoredResult,
    append_sources,
    check_not_inside_inputs,
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
from pipeline.sources.frames import source_file
from pipeline.sources.shapes import group_by_shape

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
    shape: tuple[int, ...]  # of the result; () when grouped by shape
    dtype: str
    seconds: float
    groups: dict[str, int] | None = None  # input.shapes: group — images per shape group

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def as_event(self) -> dict[str, Any]:
        """The fields of the final ``end`` event and summary line."""
        return {
            "status": "complete",
            **{k: v for k, v in asdict(self).items() if k != "seconds" and (k != "groups" or v)},
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
    size = max(1, min(MAX_AUTO_BATCH, BATCH_MEMORY // image_bytes, max(4 * workers, by_count)))
    # Whole shards per batch, so that a batch never leaves a shard for the next one to rewrite.
    per_shard = (shard_shape(config.output.shards, plan.chunks) or (1,))[0]
    return math.ceil(size / per_shard) * per_shard


@dataclass(frozen=True)
class Part:
    """One result store a run writes: the whole output, or one shape group of it."""

    config: PipelineConfig  # output.path is this part's store
    plan: JobPlan
    pending: np.ndarray  # per image: still to write


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
        check_not_inside_inputs(path, config.input.paths)
        if config.input.shapes == "group":
            parts, header_failures = _prepare_groups(config, exists=exists, append=append, reporter=reporter)
        else:
            parts, header_failures = [Part(config, *_prepare(config, exists=exists, append=append, reporter=reporter))], 0
        written = unreadable = 0
        current = path
        try:
            with open_executor(config.execution) as executor:
                sizes = [batch_size(part.config, part.plan, executor.workers) for part in parts]
                _report_start(config, parts, sizes, executor, reporter)
                for part, size in zip(parts, sizes):
                    current = part.config.output.path
                    counts = _write_batches(part.config, part.plan, part.pending, size, executor, reporter)
                    written, unreadable = written + counts[0], unreadable + counts[1]
                    if current != path:
                        set_status(current, "complete", finished=utc_now())
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            reason = str(exc).strip().split("\n")[0] or type(exc).__name__
            for store in dict.fromkeys((current, path)):
                set_status(store, status, finished=utc_now(), error=reason)
            if isinstance(exc, OSError) and not isinstance(exc, PipelineError):  # disk full, permissions
                raise OutputError(
                    f"cannot write store {path!r}: {exc.strerror or exc}; nothing unwritten is marked "
                    f"written — free space or fix permissions and rerun to resume"
                ) from None
            raise
        set_status(path, "complete", finished=utc_now())
    images = sum(len(part.plan.sources) for part in parts)
    grouped = config.input.shapes == "group"
    summary = RunSummary(
        store=path,
        images=images + header_failures,
        processed=written,
        skipped=images - written - unreadable,
        unreadable=unreadable + header_failures,
        shape=() if grouped else parts[0].plan.shape,
        dtype=parts[0].plan.dtype,
        seconds=time.perf_counter() - started,
        groups={Path(part.config.output.path).name: len(part.plan.sources) for part in parts} if grouped else None,
    )
    reporter.end(**summary.as_event())
    return summary


def _report_start(config: PipelineConfig, parts: list[Part], sizes: list[int], executor: Executor, reporter: Reporter) -> None:
    images = sum(len(part.plan.sources) for part in parts)
    pending = sum(int(part.pending.sum()) for part in parts)
    batches = sum(len(list(pending_batches(~part.pending, size))) for part, size in zip(parts, sizes))
    reporter.start(
        store=config.output.path,
        images=images,
        pending=pending,
        done=images - pending,
        batches=batches,
        batch_size=sizes[0] if len(set(sizes)) == 1 else sizes,
        scheduler=config.execution.scheduler,
        dashboard=executor.dashboard,
    )


def _prepare_groups(config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter) -> tuple[list[Part], int]:
    """input.shapes: group — one part per image shape, each its own store inside the output.

    Returns the parts and how many files were set aside because their headers could not be read.
    """
    path = config.output.path
    split = group_by_shape(list_sources(config), color=config.input.color, skip_unreadable=config.input.on_error == "skip")
    fresh = not exists or config.output.overwrite or stored_status(path) == "creating"
    if fresh:
        create_grouped_root(
            path, {"version": __version__, "config": config.model_dump(mode="json"), "started": utc_now()}
        )
    else:
        if stored_groups(path) is None:
            raise OutputError(
                f"store {path!r} holds one result, not one per image shape; pass --overwrite to replace it "
                f"with a grouped store, or choose another output.path"
            )
    members = {name: os.path.join(path, name) for name in split.groups}
    for name, sources in split.groups.items():
        if not fresh and stored_status(members[name]) is None and not append:
            raise OutputError(
                f"{len(sources)} input files of a new shape are not in store {path!r} (first: {sources[0]!r}); "
                f"pass --append to add them, or --overwrite to recompute everything"
            )
    if not fresh:
        set_status(path, "running", resumed=utc_now())
    for source, reason in split.unreadable:
        reporter.warning(f"skipped: {reason}", source=source)
    record_groups(path, split.shapes, split.unreadable)
    parts = []
    for name, sources in split.groups.items():
        member = config.model_copy(update={"output": config.output.model_copy(update={"path": members[name]})})
        exists = stored_status(members[name]) is not None
        plan, pending = _open_or_create(member, exists=exists, append=append, reporter=reporter, listed=sources)
        parts.append(Part(member, plan, pending))
    narrowing = parts[0].plan.narrowing()
    if narrowing:
        reporter.warning(narrowing)
    return parts, len(split.unreadable)


def _prepare(config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter) -> tuple[JobPlan, np.ndarray]:
    """Create, resume or extend the store; return the plan and a per-image 'still to do' mask."""
    plan, pending = _open_or_create(config, exists=exists, append=append, reporter=reporter)
    narrowing = plan.narrowing()
    if narrowing:
        reporter.warning(narrowing)
    return plan, pending


def _open_or_create(
    config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter, listed: list[str] | None = None
) -> tuple[JobPlan, np.ndarray]:
    path = config.output.path
    listed = list_sources(config) if listed is None else listed
    if exists and not config.output.overwrite and stored_status(path) != "creating":
        if stored_groups(path) is not None:
            raise OutputError(
                f"store {path!r} holds one result per image shape (input.shapes: group); run the job with "
                f"input.shapes: group, pass --overwrite to replace it, or choose another output.path"
            )
        stored = open_result(path)
        known = stored.sources
        seen = set(known)
        new = [source for source in listed if source not in seen]
        # One plan over the store's images and the new ones; it must be the stored job's.
        plan = build_plan(config, known + new)
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
        ome=config.output.format != "zarr",
        levels=config.output.levels,
        shards=shard_shape(config.output.shards, plan.chunks),
        ome_version="0.4" if config.output.format == "ome-0.4" else "0.5",
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
    now = file_stats([source_file(sources[i]) for i in indices])
    changed = [sources[i] for i, old, new in zip(indices, recorded[indices], now) if (old != new).any()]
    if changed:
        reporter.warning(
            f"{len(changed)} source files changed since they were processed (first: {changed[0]!r}); "
            f"their stored results are kept — pass --overwrite to recompute",
            changed=changed[:100],
        )


def _write_batches(
    config: PipelineConfig, plan: JobPlan, pending: np.ndarray, size: int, executor: Executor, reporter: Reporter
) -> tuple[int, int]:
    """Write every pending image, batch by batch; return (written, skipped as unreadable)."""
    path = config.output.path
    batches = list(pending_batches(~pending, size))
    total = int(pending.sum())
    # Workers may run in another directory (tcp:// schedulers): they get the absolute path.
    target = open_result(os.path.abspath(path), mode="r+")
    written = unreadable = 0
    for number, (start, stop) in enumerate(batches):
        began = time.perf_counter()
        stats = file_stats([source_file(source) for source in plan.sources[start:stop]])
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

    A file that fails to decode fails its whole batch; it is recorded as unreadable (every frame of
    it, for a multi-frame file) and the batch is computed again without it (chunks already written
    are simply written again, with the same bytes).
    """
    # Tasks see absolute paths (workers may run elsewhere), so errors name files absolutely.
    positions: dict[str, list[int]] = {}
    for index in range(start, stop):
        source = plan.sources[index]
        for name in {source, source_file(source)}:
            positions.setdefault(os.path.abspath(name), []).append(index)
    excluded: set[int] = set()
    while True:
        ranges = _ranges_without(start, stop, excluded)
        writes = [
            [write_lazily(level, store, start=a) for level, store in zip(plan.levels(a, b), level_arrays(target.group))]
            for a, b in ranges
        ]
        # Ranges around a skipped image may share a shard: written one after the other, never at once.
        together = writes if target.array.shards is not None else [[w for levels in writes for w in levels]]
        sizes = [b - a for a, b in ranges] if target.array.shards is not None else [stop - start - len(excluded)]
        try:
            for group, images in zip(together, sizes):
                executor.compute(*group, on_progress=lambda share, images=images: reporter.advance(share * images))
            return len(excluded)
        except InputError as exc:
            named = os.path.abspath(exc.path) if exc.path else ""
            failed = [index for index in positions.get(named, []) if index not in excluded]
            if config.input.on_error != "skip" or not failed:
                raise
            for index in failed:
                excluded.add(index)
                mark_unreadable(target.group, index, plan.sources[index], str(exc))
                reporter.warning(f"skipped: {exc}", source=plan.sources[index], index=index)


def _ranges_without(start: int, stop: int, excluded: set[int]) -> list[tuple[int, int]]:
    """Contiguous ranges of ``start:stop`` that leave out ``excluded``."""
    flags = np.ones(stop - start, dtype=bool)
    flags[[i - start for i in excluded]] = False
    return [(a + start, b + start) for a, b in pending_batches(~flags, stop - start)]
