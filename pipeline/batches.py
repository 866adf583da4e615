"""Writing a plan's pending images batch by batch, each recorded in the ledger once it is on disk.

A batch is one dask computation: its chunk writes, each task recording its chunks of images in
the ledger's progress as they land, then the batch's ledger entry. With ``input.on_error: skip`` an
unreadable file is recorded and its batch computed again without it. Batches and writes never let
two tasks write one zarr chunk or shard at once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.errors import DepthMismatch, InputError, ShapeMismatch
from pipeline.events import Reporter
from pipeline.execution import Executor
from pipeline.job_plan import JobPlan
from pipeline.sinks.layout import shard_shape
from pipeline.sinks.ledger import (
    Progress, begin_batch, end_batch, mark_done, mark_unreadable, pending_batches, progress_array, settle_batch,
)
from pipeline.sinks.writes import task_blocks, write_lazily
from pipeline.sinks.zarr_store import level_arrays, open_result
from pipeline.pixels import check_depth
from pipeline.sources.frames import source_file
from pipeline.sources.images import declared_header
from pipeline.sources.shapes import other_shapes
from pipeline.storage import absolute, file_stats

log = logging.getLogger(__name__)

# Auto batches: enough of them to checkpoint often, few enough images each to bound the graph.
MAX_AUTO_BATCH = 512
MIN_BATCHES = 20
# ...and enough tasks each that the pause between two batches (the last task's tail, the ledger
# entry, the next graph) stays a small share: with 4 tasks a worker, 48 photographs took 10% longer
# in 6 batches than in one; with 16 a worker the tail is about 3% of a batch.
TASKS_PER_WORKER = 16
BATCH_MEMORY = 2 * 1024**3  # the results of one batch, were a scheduler to hold them all


def batch_size(config: PipelineConfig, plan: JobPlan, workers: int) -> int:
    """The configured batch size, or one from the image count, the workers and a memory bound."""
    chosen = config.execution.batch_size
    if chosen != "auto":
        return chosen
    group = plan.spec.images_per_task
    image_bytes = max(1, int(np.prod(plan.image_shape)) * np.dtype(plan.compute_dtype).itemsize)
    by_count = math.ceil(len(plan.sources) / MIN_BATCHES)
    # The graph's size is in tasks: small images grouped into tasks make larger batches.
    size = max(1, min(MAX_AUTO_BATCH * group, BATCH_MEMORY // image_bytes, max(TASKS_PER_WORKER * workers * group, by_count)))
    # Whole shards (chunks of images) per batch, so that a batch never leaves one for the next to rewrite.
    return math.ceil(size / write_unit(config, plan)) * write_unit(config, plan)


def write_unit(config: PipelineConfig, plan: JobPlan) -> int:
    """Images one task writes together: a shard's, a chunk's or a task's (a batch holds whole ones)."""
    shards = shard_shape(config.output.shards, plan.chunks)
    return math.lcm(shards[0] if shards else plan.chunks[0], plan.spec.images_per_task)


def write_batches(
    config: PipelineConfig, plan: JobPlan, pending: np.ndarray, size: int, executor: Executor, reporter: Reporter
) -> tuple[int, int]:
    """Write every pending image, batch by batch; return (written, skipped as unreadable)."""
    path = config.output.path
    batches = list(pending_batches(~pending, size, aligned=True))
    total = int(pending.sum())
    # Workers may run in another directory (tcp:// schedulers): they get the absolute path.
    target = open_result(absolute(path), mode="r+", storage_options=config.output.storage_options)
    stores = level_arrays(target.group)  # opened once: each is a read of its zarr.json
    settle_batch(target.group)  # what an interrupted batch finished is recorded before the next begins
    layout = _progress_layout(plan, stores, batches[0][0]) if batches else []
    progress = progress_array(target.group, sum(blocks for _, blocks in layout), stores[0].chunks[0]) if batches else None
    written = unreadable = 0
    for start, stop in batches:
        began = time.perf_counter()
        stats = file_stats([source_file(source) for source in plan.sources[start:stop]], config.input.storage_options)
        token = begin_batch(target.group, start, stop, stats)
        levels = [Progress(progress, column, blocks, token) for column, blocks in layout]
        skipped = _write_batch(config, plan, target, stores, levels, executor, reporter, start, stop)
        mark_done(target.group, start, stop)
        end_batch(target.group)
        written += stop - start - skipped
        unreadable += skipped
        seconds = time.perf_counter() - began
        reporter.batch(  # the reporter numbers batches across the run
            start=start,
            stop=stop,
            images=stop - start,
            unreadable=skipped,
            done=written + unreadable,
            pending=total - written - unreadable,
            seconds=round(seconds, 3),
            images_per_second=round((stop - start) / seconds, 2) if seconds > 0 else None,
        )
        log.info("batch: images %d-%d written in %.2f s", start, stop - 1, seconds)
    return written, unreadable


def _progress_layout(plan: JobPlan, stores: list[Any], first: int) -> list[tuple[int, int]]:
    """Per level, its first column in the ledger's progress and its tasks per chunk of images."""
    blocks = [task_blocks(level, store) for level, store in zip(plan.levels(first, first + 1), stores)]
    return [(int(sum(blocks[:level])), count) for level, count in enumerate(blocks)]


def _write_batch(
    config: PipelineConfig, plan: JobPlan, target: Any, stores: list[Any], progress: list[Progress],
    executor: Executor, reporter: Reporter, start: int, stop: int,
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
            positions.setdefault(absolute(name), []).append(index)
    excluded: set[int] = set()
    while True:
        ranges = _ranges_without(start, stop, excluded)
        writes = [
            [write_lazily(level, store, start=a, progress=kept) for level, store, kept in zip(plan.levels(a, b), stores, progress)]
            for a, b in ranges
        ]
        # Ranges around a skipped image may share a shard or a chunk of images: written one after
        # the other, never at once.
        shared = target.array.shards is not None or target.array.chunks[0] > 1
        together = writes if shared else [[w for levels in writes for w in levels]]
        sizes = [b - a for a, b in ranges] if shared else [stop - start - len(excluded)]
        try:
            for group, images in zip(together, sizes):
                executor.compute(*group, on_progress=lambda share, images=images: reporter.advance(share * images))
            return len(excluded)
        except InputError as exc:
            named = absolute(exc.path) if exc.path else ""
            failed = [index for index in positions.get(named, []) if index not in excluded]
            if isinstance(exc, ShapeMismatch) and config.input.on_error != "skip" and failed:
                raise _with_other_shapes(exc, config, plan, start, failed[0]) from None
            if isinstance(exc, DepthMismatch) and config.input.on_error != "skip":
                raise _first_of_another_depth(exc, plan, start, stop) from None
            if config.input.on_error != "skip" or not failed:
                raise
            for index in failed:
                excluded.add(index)
                mark_unreadable(target.group, index, plan.sources[index], str(exc))
                reporter.warning(f"skipped: {exc}", source=plan.sources[index], index=index)


def _with_other_shapes(exc: ShapeMismatch, config: PipelineConfig, plan: JobPlan, start: int, index: int) -> ShapeMismatch:
    """The mismatch, and the batch's first other images of other shapes (headers only), in order."""
    if plan.spec.tile is not None or plan.spec.volume:
        return exc
    rest = [source for position, source in enumerate(plan.sources[start:], start) if position != index]
    others, more = other_shapes(rest, plan.spec.shape, config.input)
    if not others:
        return exc
    listed = ", ".join(f"{source!r} {shape}" for source, shape in others)
    return ShapeMismatch(f"{exc}; also of other shapes: {listed}{', …' if more else ''}", exc.path)


def _first_of_another_depth(exc: DepthMismatch, plan: JobPlan, start: int, stop: int) -> InputError:
    """Tasks fail in any order: name the batch's first file (from the headers, in order) of another depth."""
    for source in plan.sources[start:stop]:
        try:
            check_depth(source, declared_header(source, plan.spec.storage_options)[1], plan.spec.depth, plan.spec.reference)
        except InputError as first:
            return first
    return exc


def _ranges_without(start: int, stop: int, excluded: set[int]) -> list[tuple[int, int]]:
    """Contiguous ranges of ``start:stop`` that leave out ``excluded``."""
    flags = np.ones(stop - start, dtype=bool)
    flags[[i - start for i in excluded]] = False
    return [(a + start, b + start) for a, b in pending_batches(~flags, stop - start)]
