"""One job, end to end: config → source → steps → cast → sink. The only module that knows them all."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import dask.array as da
import numpy as np

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.execution import execute
from pipeline.sinks.zarr_store import StoreLayout, check_output_path, create_store, set_status, utc_now
from pipeline.sources.images import open_collection
from pipeline.steps.cast import cast_to
from pipeline.steps.chain import apply_steps, build_steps
from pipeline.steps.normalize import unit_range_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    store: str
    images: int
    shape: tuple[int, ...]
    dtype: str
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def compute_dtype(config: PipelineConfig) -> str:
    """float32 unless asked otherwise, or unless the output type holds more than float32 can."""
    chosen = config.execution.compute_dtype
    if chosen != "auto":
        return chosen
    return "float64" if config.output.dtype in ("float64", "int32", "uint32") else "float32"


def plan_result(config: PipelineConfig) -> tuple[da.Array, tuple[str, ...], tuple[str, ...], list[dict]]:
    """The lazy result array, its axes, its sources and each step's provenance; nothing is decoded."""
    collection = open_collection(
        config.input.paths, color=config.input.color, dtype=compute_dtype(config)
    )
    image_axes = collection.array.ndim - collection.spatial_ndim
    steps = build_steps(config.steps, spatial_ndim=collection.spatial_ndim, image_axes=image_axes)
    result, unit_range = apply_steps(collection.array, steps)
    scale = unit_range_to(np.dtype(config.output.dtype)) if unit_range else 1.0
    result = cast_to(result, config.output.dtype, scale=scale)
    # One chunk per image in the store; after valid/full cropping dask may hold ragged edges.
    result = result.rechunk((1,) + result.shape[1:])
    return result, collection.axes, collection.sources, [step.provenance for step in steps]


def run(config: PipelineConfig, *, progress: bool = False) -> RunSummary:
    """Run a validated job and return a summary; raises a PipelineError subclass on user errors."""
    started = time.perf_counter()
    output = config.output
    check_output_path(output.path, overwrite=output.overwrite)
    result, axes, sources, steps = plan_result(config)
    log.info("%d images %s → %s %s", len(sources), axes, output.path, result.shape)
    layout = StoreLayout(
        shape=result.shape,
        chunks=result.chunksize,
        dtype=str(result.dtype),
        dimension_names=axes,
        codec=output.codec,
    )
    provenance = {
        "version": __version__,
        "config": config.model_dump(mode="json"),
        "steps": steps,
        "axes": list(axes),
        "compute_dtype": compute_dtype(config),
        "started": utc_now(),
    }
    target = create_store(output.path, layout, sources=sources, provenance=provenance)
    try:
        writes = da.store(result, target, lock=False, compute=False)
        execute(
            writes,
            scheduler=config.execution.scheduler,
            workers=config.execution.workers,
            progress=progress,
        )
    except BaseException as exc:
        set_status(output.path, "failed", finished=utc_now(), error=str(exc) or type(exc).__name__)
        raise
    set_status(output.path, "complete", finished=utc_now())
    return RunSummary(
        store=output.path,
        images=len(sources),
        shape=tuple(result.shape),
        dtype=str(result.dtype),
        seconds=time.perf_counter() - started,
    )
