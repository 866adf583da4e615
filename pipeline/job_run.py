"""One job, end to end: config → plan → batches → store, safe to kill and rerun.

A run holds the store's lock, decides what is left to do from the store's ledger, and writes the
remaining images batch by batch, recording each batch in the ledger only after its chunks are on
disk. So a rerun of the same job (or ``--resume``) finishes what a killed run left, and a daily
``--append`` processes only files the store has not seen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.errors import Interrupted, OutputError, PipelineError, Terminated, scrub_secrets
from pipeline.events import Reporter
from pipeline.execution import Executor, open_executor
from pipeline.batches import batch_size, write_batches
from pipeline.channel_display import result_channels
from pipeline.job_plan import JobPlan, build_plan, list_inputs, list_sources
from pipeline.sinks.grouped import create_grouped_root, member_path, record_groups, stored_groups
from pipeline.sinks.layout import SPACE_UNITS, shard_shape
from pipeline.sinks.ledger import pending_batches, recorded_stats
from pipeline.sinks.lock import StoreLock
from pipeline.sinks.zarr_store import (
    StoreLayout,
    StoredResult,
    append_sources,
    check_output_path,
    create_store,
    dimension_names,
    mark_resumed,
    open_result,
    record_source_shapes,
    remove_partial_writes,
    set_status,
    stored_status,
    utc_now,
)
from pipeline.sources.frames import source_file
from pipeline.sources.shapes import group_by_shape
from pipeline.storage import entry_folder, explain, file_stats, is_remote, is_remote_failure, is_within

log = logging.getLogger(__name__)

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
    path, options = config.output.path, config.output.storage_options
    with StoreLock(path, options):
        # Checked under the lock: a store another run is creating is busy (exit 5), not foreign.
        exists = check_output_path(path, options)
        _check_not_inside_inputs(config)
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
                    counts = write_batches(part.config, part.plan, part.pending, size, executor, reporter)
                    written, unreadable = written + counts[0], unreadable + counts[1]
                    if current != path:
                        _complete(current, options)
        except BaseException as exc:
            for store in dict.fromkeys((current, path)):
                _record_failure(store, options, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(
                    f"interrupted: {_images_done(parts)}/{sum(len(part.plan.sources) for part in parts)} images "
                    f"written; rerun the same command to resume",
                    exit_code=143 if isinstance(exc, Terminated) else 130,
                ) from None
            if isinstance(exc, OSError) and not isinstance(exc, PipelineError):  # disk full, permissions
                raise OutputError(
                    f"cannot write store {path!r}: {exc.strerror or exc}; nothing unwritten is marked "
                    f"written — free space or fix permissions and rerun to resume"
                ) from None
            if is_remote_failure(exc):  # a lost connection, expired credentials
                raise OutputError(
                    f"cannot write store {path!r}: {explain(exc, options)}; nothing unwritten is marked "
                    f"written — rerun to resume"
                ) from None
            raise
        _complete(path, options)
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


def _finished(part: Part) -> bool:
    """A part whose store is complete and has nothing to write: a rerun leaves it untouched."""
    return not part.pending.any() and stored_status(part.config.output.path, part.config.output.storage_options) == "complete"


def _complete(path: str, options: dict[str, Any]) -> None:
    """Mark a store complete, unless it already is (a rerun with nothing to do changes no byte)."""
    if stored_status(path, options) != "complete":
        set_status(path, "complete", storage_options=options, finished=utc_now())


def _images_done(parts: list[Part]) -> int:
    """Images the ledgers of the parts record as done (written, or left out as unreadable)."""
    try:
        return sum(int(open_result(part.config.output.path, storage_options=part.config.output.storage_options).done.sum()) for part in parts)
    except Exception:  # a store that cannot be reached now: say what this run knew at its start
        return sum(int((~part.pending).sum()) for part in parts)


def _record_failure(path: str, options: dict[str, Any], exc: BaseException) -> None:
    """Mark a store failed (or interrupted) with the reason; a store that cannot be reached stays as it was."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    if isinstance(exc, KeyboardInterrupt):
        reason = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    else:
        reason = scrub_secrets(str(exc).strip().split("\n")[0] or type(exc).__name__, options)
    try:
        set_status(path, status, storage_options=options, finished=utc_now(), error=reason)
    except Exception:
        if not is_remote(path):
            raise


def _report_start(config: PipelineConfig, parts: list[Part], sizes: list[int], executor: Executor, reporter: Reporter) -> None:
    images = sum(len(part.plan.sources) for part in parts)
    pending = sum(int(part.pending.sum()) for part in parts)
    batches = sum(len(list(pending_batches(~part.pending, size, aligned=True))) for part, size in zip(parts, sizes))
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
    path, options = config.output.path, config.output.storage_options
    split = group_by_shape(list_sources(config), config.input)
    fresh = not exists or config.output.overwrite or stored_status(path, options) == "creating"
    if fresh:
        create_grouped_root(
            path, {"version": __version__, "config": config.model_dump(mode="json"), "started": utc_now()}, options
        )
    else:
        if stored_groups(path, options) is None:
            raise OutputError(
                f"store {path!r} holds one result, not one per image shape; pass --overwrite to replace it "
                f"with a grouped store, or choose another output.path"
            )
    members = {name: member_path(path, name) for name in split.groups}
    for name, sources in split.groups.items():
        if not fresh and stored_status(members[name], options) is None and not append:
            raise OutputError(
                f"{len(sources)} input files of a new shape are not in store {path!r} (first: {sources[0]!r}); "
                f"pass --append to add them, or --overwrite to recompute everything"
            )
    for source, reason in split.unreadable:
        reporter.warning(f"skipped: {reason}", source=source)
    # The root is running again before any group changes (a rerun with nothing to do leaves it as
    # it is, like every group), so it is never complete while one of its groups is not.
    resumed = not fresh and (
        stored_status(path, options) != "complete"
        or any(stored_status(member, options) is None for member in members.values())
        or record_groups(path, split.shapes, split.unreadable, options, dry_run=True)
    )
    if resumed:
        mark_resumed(path, storage_options=options)
    record_groups(path, split.shapes, split.unreadable, options)
    parts = []
    for name, sources in split.groups.items():
        member = config.model_copy(update={"output": config.output.model_copy(update={"path": members[name]})})
        exists = stored_status(members[name], options) is not None
        plan, pending = _open_or_create(member, exists=exists, append=append, reporter=reporter, listed=sources)
        parts.append(Part(member, plan, pending))
    if not fresh and not resumed and not all(_finished(part) for part in parts):
        mark_resumed(path, storage_options=options)  # a group's ledger had images left to write
    narrowing = parts[0].plan.narrowing()
    if narrowing:
        reporter.warning(narrowing)
    return parts, len(split.unreadable)


def _prepare(config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter) -> tuple[JobPlan, np.ndarray]:
    """Create, resume or extend the store; return the plan and a per-image 'still to do' mask."""
    plan, pending = _open_or_create(config, exists=exists, append=append, reporter=reporter)
    if plan.spec.array is not None and plan.spec.array.note:
        reporter.warning(plan.spec.array.note)
    narrowing = plan.narrowing()
    if narrowing:
        reporter.warning(narrowing)
    return plan, pending


def _open_or_create(
    config: PipelineConfig, *, exists: bool, append: bool, reporter: Reporter, listed: list[str] | None = None
) -> tuple[JobPlan, np.ndarray]:
    """The plan and the images still to write; a complete store with nothing new is left untouched."""
    path, options = config.output.path, config.output.storage_options
    # an array input's metadata, read when it is listed, is handed to the plan (read once per run)
    listed, arrays = list_inputs(config) if listed is None else (listed, {})
    if exists and not config.output.overwrite and stored_status(path, options) != "creating":
        if stored_groups(path, options) is not None:
            raise OutputError(
                f"store {path!r} holds one result per image shape (input.shapes: group); run the job with "
                f"input.shapes: group, pass --overwrite to replace it, or choose another output.path"
            )
        stored = open_result(path, storage_options=options)
        known = stored.sources
        seen = set(known)
        new = [source for source in listed if source not in seen]
        # One plan over the store's images and the new ones; it must be the stored job's, and it
        # reads the inputs as the store recorded (its tiles write whole chunks of the store).
        plan = build_plan(config, known + new, recorded_read=recorded_read(stored), arrays=arrays)
        _check_same_job(stored.provenance, plan, path)
        if new and not append:
            raise OutputError(
                f"{len(new)} input files are not in store {path!r} (first: {new[0]!r}); "
                f"pass --append to add them, or --overwrite to recompute everything"
            )
        _report_changed(stored, config, reporter)
        done = stored.done
        if not new and done.all() and stored.status == "complete":
            return plan, ~done  # nothing to do: not one byte of the store changes
        if stored.status == "complete":
            reporter.warning(
                f"store {path!r} says complete but its ledger records {int(done.sum())}/{done.size} images "
                f"written; the ledger is trusted and the other {int((~done).sum())} are written now"
            )
        if new:
            append_sources(path, new, options)
            if plan.source_shapes:
                record_source_shapes(path, len(known), plan.source_shapes[len(known) :], options)
        remove_partial_writes(path)
        mark_resumed(path, storage_options=options)
        return plan, ~open_result(path, storage_options=options).done
    plan = build_plan(config, listed, arrays=arrays)
    pixel_size, unit = output_scale(plan)
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
        pixel_size=pixel_size,
        unit=unit,
        channels=result_channels(plan),
    )
    provenance = {
        "version": __version__,
        "config": config.model_dump(mode="json"),
        "fingerprint": plan.fingerprint,
        "steps": plan.step_provenance,
        "axes": list(plan.axes),
        "compute_dtype": plan.compute_dtype,
        "read": plan.read_record,
        **({"input_array": plan.spec.array.describe()} if plan.spec.array is not None else {}),
        "started": utc_now(),
    }
    create_store(path, layout, sources=plan.sources, provenance=provenance, storage_options=options)
    if plan.source_shapes:
        record_source_shapes(path, 0, plan.source_shapes, options)
    return plan, np.ones(len(plan.sources), dtype=bool)


def output_scale(plan: JobPlan) -> tuple[tuple[float, ...] | None, str | None]:
    """The result's pixel size and unit: output.pixel_size, else those of an OME-Zarr or store read as input.

    An input's sizes are those of its pixels: pools and strides make the result's pixels larger.
    """
    output = plan.config.output
    if output.pixel_size:
        return tuple(output.pixel_size), output.unit
    array = plan.spec.array
    if array is None or not array.pixel_size or len(array.pixel_size) != sum(a in "zyx" for a in plan.image.axes):
        return None, output.unit
    down = plan.downscale
    size = (*array.pixel_size[:-2], array.pixel_size[-2] * down[0], array.pixel_size[-1] * down[1])
    return size, output.unit or (array.unit if array.unit in SPACE_UNITS else None)


def recorded_read(stored: StoredResult) -> dict[str, Any]:
    """How the store's inputs were read; for stores written before that was recorded, from their chunks."""
    record = stored.provenance.get("read")
    if isinstance(record, dict) and "tile" in record:
        return record
    chunks, shape = tuple(stored.array.chunks), tuple(stored.array.shape)
    tiled = "z" not in dimension_names(stored.array) and chunks[-2:] != shape[-2:]
    return {"tile": list(chunks[-2:]) if tiled else None}


def _check_same_job(provenance: dict[str, Any], plan: JobPlan, path: str) -> None:
    if provenance.get("fingerprint") != plan.fingerprint:
        raise OutputError(
            f"store {path!r} was written by a different job (steps, kernels, colour, dtype or codec "
            f"differ); pass --overwrite to replace it, or choose another output.path"
        )


def _report_changed(stored: StoredResult, config: PipelineConfig, reporter: Reporter) -> None:
    """Files deleted, or whose size or mtime differ, since they were processed: reported, not reused silently."""
    done = stored.done
    if not done.any():
        return
    sources = stored.sources
    recorded = recorded_stats(stored.group)
    indices = np.flatnonzero(done)
    now = file_stats([source_file(sources[i]) for i in indices], config.input.storage_options)
    gone = [sources[i] for i, old, new in zip(indices, recorded[indices], now) if (new == -1).all() and (old != -1).any()]
    changed = [sources[i] for i, old, new in zip(indices, recorded[indices], now) if (old != new).any() and (new != -1).any()]
    for listed, key in ((gone, "deleted"), (changed, "changed")):
        if listed:
            one = len(listed) == 1
            verb = ("was deleted" if one else "were deleted") if key == "deleted" else "changed"
            reporter.warning(
                f"{len(listed)} source file{'' if one else 's'} {verb} since {'it was' if one else 'they were'} "
                f"processed (first: {listed[0]!r}); {'its stored result is' if one else 'their stored results are'} "
                f"kept — pass --overwrite to recompute",
                **{key: listed[:100]},
            )


def _check_not_inside_inputs(config: PipelineConfig) -> None:
    """A store inside an input folder would be listed as input by the next run of a glob."""
    entries = [config.input.paths] if isinstance(config.input.paths, str) else config.input.paths
    for entry in entries:
        folder = entry_folder(entry, config.input.storage_options)  # None for single files
        if folder is not None and is_within(config.output.path, folder):
            raise OutputError(
                f"output.path {config.output.path!r} is inside the input folder {folder!r}; "
                f"write the store elsewhere so it is never read back as input"
            )
