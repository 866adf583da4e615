"""What a job will do, before it does it: the lazy result, its stages, and what they will cost.

``run`` executes a JobPlan batch by batch; ``pipeline plan`` prints one. Building it decodes
nothing: only the first image is opened, for its shape and type, and the graph of a batch is built
only when that batch runs, so a million files never sit in one graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np

from pipeline.budget import BlockBudget, whole_image_budget, worker_budget
from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.execution import resolve_workers
from pipeline.sources.frames import frame_sources
from pipeline.sources.shapes import group_by_shape
from pipeline.sources.images import ImageSpec, declared_dtype, declared_shape, fits_inside, list_images, probe, stack_images
from pipeline.steps.cast import cast_to
from pipeline.steps.chain import Stage, Step, build_steps, chain, leading_reach
from pipeline.steps.normalize import unit_range_to
from pipeline.steps.pyramid import pyramid
from pipeline.storage import file_size


@dataclass(frozen=True)
class JobPlan:
    config: PipelineConfig
    sources: tuple[str, ...]
    spec: ImageSpec
    compute_dtype: str
    steps: tuple[Step, ...]
    stages: tuple[Stage, ...]  # shapes are those of the whole collection
    image_shape: tuple[int, ...]  # the result of one image: ([c,] y, x)
    dtype: str  # of the stored result
    source_shapes: tuple[tuple[int, ...], ...] = ()  # each image's own shape, when padded

    @property
    def chunks(self) -> tuple[int, ...]:
        """The store's chunk: one image, one tile of one, or one slice of a volume."""
        return store_chunks(self.spec, self.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.sources), *self.image_shape)

    @property
    def axes(self) -> tuple[str, ...]:
        return self.spec.axes

    @property
    def step_provenance(self) -> list[dict[str, Any]]:
        """Each step's provenance, with the strategy, fusion and halo chosen for it."""
        records = [dict(step.provenance) for step in self.steps]
        for stage in self.stages:
            for member, strategy in zip(stage.steps, stage.strategies):
                records[member].update(strategy=strategy, fused_steps=list(stage.steps), halo=list(stage.halo))
        return records

    @property
    def fingerprint(self) -> str:
        """What makes two runs write the same values for the same file: a rerun may resume only then.

        The kernels' actual matrices count (a kernel file may change), the input list does not
        (``--append`` adds to it) and neither do the scheduler, paths or overwrite flag.
        """
        config = self.config.model_dump(mode="json")
        identity = {
            "steps": [
                {k: v for k, v in step.items() if k not in ("strategy", "fused_steps", "halo")}
                for step in self.step_provenance
            ],
            "color": self.config.input.color_mode,
            "dtype": self.dtype,
            "codec": config["output"]["codec"],
            "compute_dtype": self.compute_dtype,
            "image_shape": list(self.image_shape),
            "levels": config["output"]["levels"],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def narrowing(self) -> str | None:
        """A warning when integer output cannot hold the input's range and nothing rescales it."""
        out = np.dtype(self.dtype)
        last_normalizes = bool(self.steps) and self.steps[-1].unit_range
        if out.kind not in "ui" or last_normalizes:
            return None
        source = declared_dtype(self.spec.reference, self.spec.storage_options)
        if source.kind in "ui" and np.iinfo(source).max <= np.iinfo(out).max and np.iinfo(source).min >= np.iinfo(out).min:
            if not any(step.convolution is not None for step in self.steps):
                return None  # nothing can leave the input's range
        return (
            f"output.dtype {out} is narrower than what the steps can produce from {source} input: "
            f"values outside {np.iinfo(out).min}..{np.iinfo(out).max} are clipped; add '- normalize: minmax' "
            f"as the last step or choose a wider output.dtype"
        )

    def levels(self, start: int = 0, stop: int | None = None) -> list[da.Array]:
        """The result for images ``start:stop`` and its halved resolution levels (output.levels)."""
        return pyramid(self.result(start, stop), self.config.output.levels)

    def result(self, start: int = 0, stop: int | None = None) -> da.Array:
        """The lazy result for images ``start:stop``, one chunk per image, in the output dtype."""
        return _lazy_result(self.config, self.sources[start:stop], self.spec, self.steps, self.compute_dtype)[0]

    def describe(self) -> dict[str, Any]:
        """What `pipeline plan` shows: each stage's strategy, halo, shape and chunks, and the estimates."""
        stages = [
            {
                "steps": list(stage.steps),
                "what": stage.description,
                "strategy": list(stage.strategies) or ["-"],
                "halo": list(stage.halo),
                "shape": list(stage.shape),
                "chunks": list(stage.chunks),
            }
            for stage in self.stages
        ]
        return {"stages": stages, **self.estimates(), "compute_dtype": self.compute_dtype}

    def estimates(self) -> dict[str, Any]:
        """Task count, peak memory per worker and bytes moved, for `pipeline plan`."""
        workers = planned_workers(self.config)
        item = np.dtype(self.compute_dtype).itemsize
        block = int(np.prod(self.spec.chunks)) * item
        largest = max([block] + [int(np.prod(stage.chunks)) * item for stage in self.stages])
        # A task holds the decoded block, its float copy, an input and output per kernel, the cast.
        written = int(np.prod(task_chunks(self.spec, self.shape)[1:])) * np.dtype(self.dtype).itemsize
        per_task = block + 2 * largest + written
        first_file = file_size(self.sources[0], self.spec.storage_options)
        (one_image,) = dask.optimize(self.result(0, 1))
        return {
            "images": len(self.sources),
            "tasks": len(one_image.__dask_graph__()) * len(self.sources),
            "workers": workers,
            "peak_memory_per_task": per_task,
            "peak_memory_all_workers": per_task * workers,
            "memory_budget_per_worker": worker_budget(self.config.execution.memory_budget, workers),
            "bytes_read_estimate": first_file * len(self.sources),
            "bytes_written_uncompressed": int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize,
        }


def compute_dtype(config: PipelineConfig) -> str:
    """float32 unless asked otherwise, or unless the output type holds more than float32 can."""
    chosen = config.execution.compute_dtype
    if chosen != "auto":
        return chosen
    return "float64" if config.output.dtype in ("float64", "int32", "uint32") else "float32"


def list_sources(config: PipelineConfig) -> list[str]:
    """The job's images: its files, or each frame of them when the first file holds several."""
    files = list_images(config.input.paths, config.input.storage_options)
    if config.input.layout == "volume":  # a multi-page file is one (z, y, x) image
        return files
    return frame_sources(files, _probe_first_readable(config, files).frames)


def build_plans(config: PipelineConfig) -> dict[str, JobPlan]:
    """The plans of a job: ``{"": plan}``, or one per image shape with ``input.shapes: group``."""
    if config.input.shapes != "group":
        return {"": build_plan(config)}
    split = group_by_shape(list_sources(config), config.input)
    return {name: build_plan(config, sources) for name, sources in split.groups.items()}


def build_plan(
    config: PipelineConfig, sources: Sequence[str] | None = None, *, stored_chunks: tuple[int, ...] | None = None
) -> JobPlan:
    """List (unless given) and probe the inputs, build the steps; raises Input/KernelError early.

    ``stored_chunks``, the chunks of a store being resumed or extended, fix the tiles and slabs.
    """
    sources = tuple(list_sources(config) if sources is None else sources)
    dtype = compute_dtype(config)
    # normalize rescales each image as a whole (all channels together, keeping colour balance)
    steps = tuple(build_steps(config.steps, image_axes=1))
    workers = planned_workers(config)
    budget = BlockBudget(
        bytes=worker_budget(config.execution.memory_budget, workers),
        itemsize=np.dtype(dtype).itemsize,
        halo=leading_reach(steps),
        whole=whole_image_budget(config.execution.memory_budget, workers, resumed=stored_chunks is not None),
    )
    spec = _probe_first_readable(config, sources, budget, stored_chunks)
    source_shapes: tuple[tuple[int, ...], ...] = ()
    if config.input.shapes == "pad":
        spec, source_shapes = _padded_spec(config, spec, sources)
    one_image, stages = _lazy_result(config, sources[:1], spec, steps, dtype)
    stages = tuple(replace(stage, shape=(len(sources), *stage.shape[1:])) for stage in stages)
    return JobPlan(
        config, sources, spec, dtype, steps, stages, tuple(one_image.shape[1:]), str(one_image.dtype), source_shapes
    )


def _padded_spec(
    config: PipelineConfig, spec: ImageSpec, sources: Sequence[str]
) -> tuple[ImageSpec, tuple[tuple[int, ...], ...]]:
    """Every image padded to the largest: this reads every file's header (not its pixels)."""
    if spec.volume or spec.tile is not None:
        raise InputError("input.shapes: pad works on whole 2-D images (not volumes or tiled TIFFs)")
    shapes = [declared_shape(source, config.input.color_mode, config.input.storage_options) for source in sources]
    # Channels come from the first image; y and x from the largest of all.
    largest = (*spec.shape[:-2], *(max(shape[axis] for shape in shapes) for axis in (-2, -1)))
    for source, shape in zip(sources, shapes):
        if not fits_inside(shape, largest):
            raise InputError(
                f"image {source!r} has shape {shape}, which padding cannot match to {largest} "
                f"(a different number of channels)",
                source,
            )
    return replace(spec, shape=largest, pad_value=config.input.pad_value), tuple(shapes)


def planned_workers(config: PipelineConfig) -> int:
    """The workers a run will have, as far as the config says (a remote cluster may differ)."""
    return 1 if config.execution.scheduler == "sync" else resolve_workers(config.execution.workers)


def _probe_first_readable(
    config: PipelineConfig,
    sources: Sequence[str],
    budget: BlockBudget = BlockBudget(),
    stored_chunks: tuple[int, ...] | None = None,
) -> ImageSpec:
    """The spec from the first file; with ``on_error: skip``, from the first that can be read."""
    candidates = sources if config.input.on_error == "skip" else sources[:1]
    for source in candidates:
        try:
            return probe(
                source,
                color=config.input.color_mode,
                max_pixels=config.input.max_pixels,
                tile=config.input.tile,
                layout=config.input.layout,
                storage_options=config.input.storage_options,
                budget=budget,
                stored_chunks=stored_chunks,
            )
        except InputError:
            if source is candidates[-1]:
                raise
    raise InputError("input.paths: no images")


def _lazy_result(
    config: PipelineConfig, sources: Sequence[str], spec: ImageSpec, steps: Sequence[Step], dtype: str
) -> tuple[da.Array, tuple[Stage, ...]]:
    images = stack_images(sources, spec, dtype=dtype)

    def with_halo(depth: dict[int, int]) -> da.Array:
        return stack_images(sources, spec, dtype=dtype, halo=depth)

    # Tiles and slabs can be read again with their halo; whole images have no neighbours to read.
    haloed = with_halo if spec.tile is not None or spec.volume else None
    chained = chain(images, steps, spatial_ndim=spec.spatial_ndim, haloed=haloed)
    scale = unit_range_to(np.dtype(config.output.dtype)) if chained.unit_range else 1.0
    result = cast_to(chained.array, config.output.dtype, scale=scale)
    # Whole store chunks per task; valid/full on tiles or slabs may leave ragged chunks to realign.
    return result.rechunk(task_chunks(spec, result.shape)), chained.stages


def store_chunks(spec: ImageSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk of a new store for a result of ``shape``: one image, one tile of one, one slice of a volume.

    A volume's slabs are sized by the memory budget, which may differ on the next run: one slice
    per chunk lets any slab write whole chunks.
    """
    if spec.volume:
        return (1, 1, *shape[2:])
    return task_chunks(spec, shape)


def task_chunks(spec: ImageSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk one task computes and writes: one image, one tile of one, one slab of a volume."""
    if spec.volume:
        return (1, min(spec.chunks[0], shape[1]), *shape[2:])
    if spec.tile is None:
        return (1, *shape[1:])
    return (1, *shape[1:-2], *(min(t, n) for t, n in zip(spec.tile, shape[-2:])))
