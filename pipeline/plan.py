"""What a job will do, before it does it: the lazy result, its stages, and what they will cost.

``run`` executes a JobPlan; ``pipeline plan`` prints one. Building it decodes nothing: only the
first image is opened, for its shape and type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from pipeline.config import PipelineConfig
from pipeline.execution import resolve_workers
from pipeline.sources.images import open_collection
from pipeline.steps.cast import cast_to
from pipeline.steps.chain import Stage, build_steps, chain
from pipeline.steps.normalize import unit_range_to


@dataclass(frozen=True)
class JobPlan:
    config: PipelineConfig
    result: da.Array
    axes: tuple[str, ...]
    sources: tuple[str, ...]
    compute_dtype: str
    stages: tuple[Stage, ...]
    steps: tuple[dict[str, Any], ...]  # provenance of each step, with the strategy chosen for it
    input_chunk: tuple[int, ...]

    def estimates(self) -> dict[str, Any]:
        """Task count, peak memory per worker and bytes moved, for `pipeline plan`."""
        workers = resolve_workers(self.config.execution.workers)
        compute_item = np.dtype(self.compute_dtype).itemsize
        block = int(np.prod(self.input_chunk)) * compute_item
        largest = max([block] + [int(np.prod(stage.chunks)) * compute_item for stage in self.stages])
        # A task holds the decoded image, its float copy, and an input and output per fused kernel.
        per_task = block + 2 * largest + int(np.prod(self.result.chunksize)) * self.result.dtype.itemsize
        first_file = os.path.getsize(self.sources[0]) if os.path.exists(self.sources[0]) else 0
        (optimized,) = dask.optimize(self.result)
        return {
            "images": len(self.sources),
            "tasks": len(optimized.__dask_graph__()),
            "workers": 1 if self.config.execution.scheduler == "sync" else workers,
            "peak_memory_per_task": per_task,
            "peak_memory_all_workers": per_task * (1 if self.config.execution.scheduler == "sync" else workers),
            "bytes_read_estimate": first_file * len(self.sources),
            "bytes_written_uncompressed": int(self.result.nbytes),
        }


def compute_dtype(config: PipelineConfig) -> str:
    """float32 unless asked otherwise, or unless the output type holds more than float32 can."""
    chosen = config.execution.compute_dtype
    if chosen != "auto":
        return chosen
    return "float64" if config.output.dtype in ("float64", "int32", "uint32") else "float32"


def build_plan(config: PipelineConfig) -> JobPlan:
    """Source → steps → cast, lazily; raises InputError/KernelError for what cannot work."""
    dtype = compute_dtype(config)
    collection = open_collection(config.input.paths, color=config.input.color, dtype=dtype)
    image_axes = collection.array.ndim - collection.spatial_ndim
    steps = build_steps(config.steps, spatial_ndim=collection.spatial_ndim, image_axes=image_axes)
    chained = chain(collection.array, steps, spatial_ndim=collection.spatial_ndim)
    scale = unit_range_to(np.dtype(config.output.dtype)) if chained.unit_range else 1.0
    result = cast_to(chained.array, config.output.dtype, scale=scale)
    # One chunk per image in the store; valid/full on tiled data may leave ragged chunks.
    result = result.rechunk((1,) + result.shape[1:])
    provenance = [dict(step.provenance) for step in steps]
    for stage in chained.stages:
        for member, strategy in zip(stage.steps, stage.strategies):
            provenance[member]["strategy"] = strategy
            provenance[member]["fused_steps"] = list(stage.steps)
            provenance[member]["halo"] = list(stage.halo)
    return JobPlan(
        config=config,
        result=result,
        axes=collection.axes,
        sources=collection.sources,
        compute_dtype=dtype,
        stages=chained.stages,
        steps=tuple(provenance),
        input_chunk=tuple(collection.array.chunksize),
    )
