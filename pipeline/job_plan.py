"""What a job will do, before it does it: the lazy result, its stages, and what they will cost.

``run`` executes a JobPlan batch by batch; ``pipeline plan`` prints one. Building it decodes
nothing: only the first image is opened, for its shape and type, and the graph of a batch is built
only when that batch runs, so a million files never sit in one graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import dask
import dask.array as da
import numpy as np

from pipeline.budget import BlockBudget, whole_image_budget, worker_budget, working_set
from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.execution import resolve_workers
from pipeline.sources.arrays import ArrayInput, in_array_order, list_array_sources
from pipeline.sources.decode import OPENCV_SUFFIXES
from pipeline.sources.frames import frame_sources, is_array_entry
from pipeline.sources.shapes import group_by_shape
from pipeline.pixels import value_range
from pipeline.sources.images import ImageSpec, declared_shape, fits_inside, list_images, probe, stack_images
from pipeline.steps.cast import cast_to
from pipeline.steps.base import ImageShape, Step
from pipeline.steps.chain import Stage, build_steps, chain, leading_reach, output_range
from pipeline.steps.normalize import unit_range_to
from pipeline.steps.pyramid import pyramid
from pipeline.storage import file_size

# Small whole images are grouped, up to this many bytes of a chunk (in the compute dtype), into one
# task and one store chunk: a dask task and a chunk write each cost about a millisecond, several
# times the decoding of a thumbnail. 1 MiB chunks read back quickly one at a time, and larger ones
# measured no faster to write.
GROUP_BYTES = 1024 * 1024


@dataclass(frozen=True)
class JobPlan:
    config: PipelineConfig
    sources: tuple[str, ...]
    spec: ImageSpec
    compute_dtype: str
    steps: tuple[Step, ...]
    stages: tuple[Stage, ...]  # shapes are those of the whole collection
    image: ImageShape  # the result of one image: its shape and axes, as the steps made them
    dtype: str  # of the stored result
    source_shapes: tuple[tuple[int, ...], ...] = ()  # each image's own shape, when padded

    @property
    def chunks(self) -> tuple[int, ...]:
        """The store's chunk: small images several together, one image, one tile of one, or one slice of a volume.

        Shards already pack images into files: their chunks stay one image each, unless
        ``output.images_per_chunk`` says otherwise.
        """
        chunks = store_chunks(self.spec, self.image, self.steps)
        if self.config.output.shards is not None and self.config.output.images_per_chunk == "auto":
            return (1, *chunks[1:])
        return chunks

    @property
    def downscale(self) -> tuple[int, int]:
        """How much the steps divide y and x (pools and strides)."""
        return _downscale(self.steps)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.image.shape

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.sources), *self.image_shape)

    @property
    def axes(self) -> tuple[str, ...]:
        return ("image", *self.image.axes)

    @property
    def read_record(self) -> dict[str, Any]:
        """How the inputs are read, for the store's provenance: a rerun reads them the same way."""
        return {
            "tile": list(self.spec.tile) if self.spec.tile else None,
            "slab": self.spec.slab if self.spec.volume else None,
            "gray_from": self.spec.gray_from if self.spec.color == "gray" else None,
        }

    @property
    def step_provenance(self) -> list[dict[str, Any]]:
        """Each step's provenance, with the strategy, fusion and halo chosen for it."""
        records = [step.provenance() for step in self.steps]
        for stage in self.stages:
            details = stage.records or ({},) * len(stage.steps)
            for member, strategy, detail in zip(stage.steps, stage.strategies, details):
                records[member].update(strategy=strategy, fused_steps=list(stage.steps), halo=list(stage.halo), **detail)
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
                {k: v for k, v in step.items() if k not in ("strategy", "fused_steps", "halo", "separation")}
                for step in self.step_provenance
            ],
            "color": self.config.input.color_mode,
            # only when it is not the default, so stores written before the option resume
            **({"scale": self.config.input.scale} if self.config.input.scale != "native" else {}),
            "dtype": self.dtype,
            "codec": config["output"]["codec"],
            "compute_dtype": self.compute_dtype,
            "image_shape": list(self.image_shape),
            "levels": config["output"]["levels"],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def value_range(self) -> tuple[float, float]:
        """The values the result can take before the cast: the inputs' range carried through every step.

        Every file stores the first file's type (checked as each is read) or is scaled to [0, 1], so
        the first file's header bounds them all.
        """
        low, high = value_range(np.dtype(self.spec.dtype or "float64"), self.spec.scale)
        if self.spec.pad_value is not None:
            low, high = min(low, self.spec.pad_value), max(high, self.spec.pad_value)
        return output_range(self.steps, (low, high))

    def narrowing(self) -> str | None:
        """A warning when an integer output cannot hold what the steps can produce, and nothing rescales it."""
        out = np.dtype(self.dtype)
        if out.kind not in "ui" or (bool(self.steps) and self.steps[-1].unit_range):
            return None
        low, high = self.value_range()
        info = np.iinfo(out)
        # The cast rounds to the nearest integer before it clips (steps/cast.py): a bound within half
        # a unit of the limit loses nothing. That also absorbs the last bit of a kernel whose weights
        # sum to 1 in float64 only up to rounding (a gaussian's sum is 1.0000000000000002 with some
        # NumPy builds' summation order: 255.00000000000006 for uint8 input).
        if info.min - 0.5 < low and high < info.max + 0.5:
            return None
        source = np.dtype(self.spec.dtype or "float64")
        return (
            f"output.dtype {out} cannot hold what the steps can produce from {source} input ({_span(low, high)}): "
            f"values outside {info.min}..{info.max} are clipped; add '- normalize: minmax' as the last step or "
            f"choose a wider output.dtype"
        )

    def levels(self, start: int = 0, stop: int | None = None) -> list[da.Array]:
        """The result for images ``start:stop`` and its halved resolution levels (output.levels)."""
        return pyramid(self.result(start, stop), self.config.output.levels)

    def result(self, start: int = 0, stop: int | None = None) -> da.Array:
        """The lazy result for images ``start:stop``, in the output dtype: a chunk per task (per image, when large)."""
        return _lazy_result(self.config, self.sources[start:stop], self.spec, self.steps, self.compute_dtype, start)[0]

    def describe(self) -> dict[str, Any]:
        """What `pipeline plan` shows: each stage's strategy, halo, shape, chunks and output bytes, and the estimates.

        A stage's ``bytes`` are its output for the whole collection, uncompressed, in the compute dtype.
        """
        stages = [
            {
                "steps": list(stage.steps),
                "what": stage.description,
                "strategy": list(stage.strategies) or ["-"],
                "halo": list(stage.halo),
                "shape": list(stage.shape),
                "chunks": list(stage.chunks),
                "channels": stage.channels,
                "reproducible": stage.reproducible,
                "bytes": int(np.prod(stage.shape)) * np.dtype(self.compute_dtype).itemsize,
            }
            for stage in self.stages
        ]
        return {"stages": stages, **self.estimates(), "compute_dtype": self.compute_dtype, "read": self.reading()}

    def reading(self) -> str:
        """How the inputs are read, in a line: whole, by tiles (a set size rounded to file tiles), by slabs;
        for gray JPEGs, whether gray is their luma plane."""
        if self.spec.volume:
            return f"by slabs of {self.spec.chunks[0]} slices"
        if self.spec.tile is None:
            if self.spec.color == "gray" and self.spec.reference.lower().endswith(OPENCV_SUFFIXES):
                return "whole, gray " + ("from the JPEG luma plane" if self.spec.gray_from == "luma" else "from RGB (BT.601)")
            return "whole"
        tile = "x".join(map(str, self.spec.tile))
        setting = self.config.input.tile
        if isinstance(setting, int) and self.spec.tile != (setting, setting):
            return f"by tiles of {tile} (input.tile {setting} rounded down to whole file tiles)"
        return f"by tiles of {tile}"

    def estimates(self) -> dict[str, Any]:
        """Task count, peak memory per worker and bytes moved, for `pipeline plan`."""
        workers = planned_workers(self.config)
        item = np.dtype(self.compute_dtype).itemsize
        block = int(np.prod(self.spec.chunks)) * item
        largest = max([block] + [int(np.prod(stage.chunks)) * item for stage in self.stages])
        # A task holds the decoded block, its float copy, an input and output per kernel, the cast.
        group = self.spec.images_per_task
        written = int(np.prod(task_chunks(self.spec, self.image, self.steps))) * np.dtype(self.dtype).itemsize
        per_task = block * group + 2 * largest + written
        # An array's images are read as stored (uncompressed sizes: a store's chunk sizes are not listed).
        first_file = (
            int(np.prod(self.spec.shape)) * np.dtype(self.spec.dtype).itemsize
            if self.spec.array is not None
            else file_size(self.sources[0], self.spec.storage_options)
        )
        (one_group,) = dask.optimize(self.result(0, group))
        return {
            "images": len(self.sources),
            "tasks": len(one_group.__dask_graph__()) * -(-len(self.sources) // group),
            "workers": workers,
            "peak_memory_per_task": per_task,
            "peak_memory_all_workers": per_task * workers,
            "memory_budget_per_worker": worker_budget(self.config.execution.memory_budget, workers),
            "bytes_read_estimate": first_file * len(self.sources),
            "bytes_written_uncompressed": int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize,
        }


def _span(low: float, high: float) -> str:
    return "any value" if not (np.isfinite(low) and np.isfinite(high)) else f"{low:g}..{high:g}"


def compute_dtype(config: PipelineConfig) -> str:
    """float32 unless asked otherwise, or unless the output type holds more than float32 can."""
    chosen = config.execution.compute_dtype
    if chosen != "auto":
        return chosen
    return "float64" if config.output.dtype in ("float64", "int32", "uint32") else "float32"


def list_sources(config: PipelineConfig) -> list[str]:
    """The job's images: its files, or each frame of them when the first file holds several."""
    return list_inputs(config)[0]


def list_inputs(config: PipelineConfig) -> tuple[list[str], dict[str, ArrayInput]]:
    """The job's images, and the arrays they are images of, by entry (none for image files).

    Give both to ``build_plan``: an array's metadata is then read once per run, here.
    """
    entries = [config.input.paths] if isinstance(config.input.paths, str) else list(config.input.paths)
    named = [is_array_entry(entry) for entry in entries]
    if any(named):
        if not all(named):
            raise InputError(
                f"input.paths mixes arrays ({entries[named.index(True)]!r}) and image files "
                f"({entries[named.index(False)]!r}); list them in separate jobs"
            )
        if config.input.shapes != "strict":
            raise InputError(f"input.shapes: {config.input.shapes} applies to image files; arrays are read as they are")
        return list_array_sources(
            entries, volume=config.input.layout == "volume", options=config.input.storage_options,
            allow_incomplete=config.input.allow_incomplete,
        )
    files = list_images(config.input.paths, config.input.storage_options)
    if config.input.layout == "volume":  # a multi-page file is one (z, y, x) image
        return files, {}
    return frame_sources(files, _probe_first_readable(config, files).frames), {}


def build_plans(config: PipelineConfig) -> dict[str, JobPlan]:
    """The plans of a job: ``{"": plan}``, or one per image shape with ``input.shapes: group``."""
    if config.input.shapes != "group":
        return {"": build_plan(config)}
    split = group_by_shape(list_sources(config), config.input)
    return {name: build_plan(config, sources) for name, sources in split.groups.items()}


def build_plan(
    config: PipelineConfig, sources: Sequence[str] | None = None, *, recorded_read: dict[str, Any] | None = None,
    arrays: Mapping[str, ArrayInput] | None = None,
) -> JobPlan:
    """List (unless given) and probe the inputs, build the steps; raises Input/KernelError early.

    ``arrays`` are the arrays ``list_inputs`` resolved with the given ``sources`` (their metadata
    is not read again; an array missing from them is opened when its batch's graph is built).
    ``recorded_read``, what a store being resumed or extended recorded of how its inputs were read
    (``JobPlan.read_record``), fixes the tiles and where gray comes from (RGB for stores that
    recorded none: they were written before the luma plane was read): the store's own shape never
    decides how to read.
    """
    if sources is None:
        sources, arrays = list_inputs(config)
    sources = tuple(sources)
    dtype = compute_dtype(config)
    # normalize rescales each image as a whole (all channels together, keeping colour balance)
    steps = tuple(build_steps(config.steps))
    workers = planned_workers(config)
    budget = BlockBudget(
        bytes=worker_budget(config.execution.memory_budget, workers),
        itemsize=np.dtype(dtype).itemsize,
        halo=leading_reach(steps),
        whole=whole_image_budget(config.execution.memory_budget, workers, resumed=recorded_read is not None),
    )
    spec = _probe_first_readable(config, sources, budget, recorded_read, arrays)
    source_shapes: tuple[tuple[int, ...], ...] = ()
    if config.input.shapes == "pad":
        spec, source_shapes = _padded_spec(config, spec, sources)
    one_image, stages, image = _lazy_result(config, sources[:1], spec, steps, dtype)
    group = images_per_task(config, spec, image, dtype, sources=sources, budget=budget)
    if group > 1:
        spec = replace(spec, images_per_task=group)
        one_image, stages, image = _lazy_result(config, sources[:group], spec, steps, dtype)
    stages = tuple(replace(stage, shape=(len(sources), *stage.shape[1:])) for stage in stages)
    return JobPlan(config, sources, spec, dtype, steps, stages, image, str(one_image.dtype), source_shapes)


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


def images_per_task(
    config: PipelineConfig, spec: ImageSpec, image: ImageShape, dtype: str, *,
    sources: Sequence[str] = (), budget: BlockBudget | None = None,
) -> int:
    """Whole images per task and chunk: ``output.images_per_chunk``, or as many as fit GROUP_BYTES.

    Not bounded by the collection's size: a store that ``--append`` grows from a few images would
    keep their small chunks for good.

    An image is as large as the larger of its input and its result, in the compute dtype; images
    read by tiles or slabs are never grouped. A set ``execution.batch_size`` holds whole groups (a
    batch that ended inside one would leave it for the next batch to write again).

    Arrays of ``sources`` are grouped only when they are one array's images in order (image i is
    index i: the collection's grid is then the array's): a Zarr array by its chunk along the image
    axis, so that each task reads its stored chunks once and the store keeps them together (or by
    a divisor of it whose images fit a worker's ``budget``); a ``.npy`` stack, memory-mapped, as
    small files are. Other arrays (several arrays, or not from their first image) take one image
    per task unless ``output.images_per_chunk`` is set: no grid of groups would read each of their
    chunks once.
    """
    if spec.tile is not None or spec.volume:
        return 1
    chosen = config.output.images_per_chunk
    if chosen != "auto":
        return chosen
    array = spec.array
    if array is not None and not in_array_order(sources):
        return 1
    values = max(int(np.prod(spec.shape)), int(np.prod(image.shape)))
    itemsize = np.dtype(dtype).itemsize
    if array is None or array.kind == "npy":
        sizes = range(1, max(1, GROUP_BYTES // max(values * itemsize, 1)) + 1)
    else:
        stored = array.image_chunk
        sizes = [
            size for size in range(1, stored + 1) if stored % size == 0
            and (size == 1 or budget is None or working_set(size * values, size * values, itemsize) <= budget.bytes)
        ]
    batch = config.execution.batch_size
    return max(size for size in sizes if batch == "auto" or batch % size == 0)


def planned_workers(config: PipelineConfig) -> int:
    """The workers a run will have, as far as the config says (a remote cluster may differ)."""
    return 1 if config.execution.scheduler == "sync" else resolve_workers(config.execution.workers)


def _probe_first_readable(
    config: PipelineConfig,
    sources: Sequence[str],
    budget: BlockBudget = BlockBudget(),
    recorded_read: dict[str, Any] | None = None,
    arrays: Mapping[str, ArrayInput] | None = None,
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
                recorded_tile=recorded_read["tile"] if recorded_read is not None else "unset",
                scale=config.input.scale,
                allow_incomplete=config.input.allow_incomplete,
                gray_from=config.input.gray_from if recorded_read is None else recorded_read.get("gray_from") or "rgb",
                arrays=arrays,
            )
        except InputError:
            if source is candidates[-1]:
                raise
    raise InputError("input.paths: no images")


def _lazy_result(
    config: PipelineConfig, sources: Sequence[str], spec: ImageSpec, steps: Sequence[Step], dtype: str, start: int = 0
) -> tuple[da.Array, tuple[Stage, ...], ImageShape]:
    """The result of ``sources``, image ``start`` of the collection first: groups of images keep to its grid."""
    images = stack_images(sources, spec, dtype=dtype, start=start)

    def with_halo(depth: dict[int, int], raw: bool = False) -> da.Array:
        return stack_images(sources, spec, dtype=dtype, halo=depth, raw=raw)

    # Tiles and slabs can be read again with their halo; whole images have no neighbours to read.
    haloed = with_halo if spec.tile is not None or spec.volume else None
    chained = chain(images, steps, image=ImageShape(spec.shape, spec.axes[1:], whole=spec.whole_only), haloed=haloed)
    scale = unit_range_to(np.dtype(config.output.dtype)) if chained.unit_range else 1.0
    result = cast_to(chained.array, config.output.dtype, scale=scale)
    # Whole store chunks per task; valid/full on tiles or slabs may leave ragged chunks to realign.
    chunks = (images.chunks[0], *task_chunks(spec, chained.image, steps)[1:])
    return result.rechunk(chunks), chained.stages, chained.image


def _downscale(steps: Sequence[Step]) -> tuple[int, int]:
    """How much the steps divide y and x (pools and strides): tiles of the result are that much smaller."""
    y = x = 1
    for step in steps:
        stride = getattr(step, "stride", (1,))  # layers' and pools' strides
        stride = (1,) * (2 - len(stride)) + tuple(stride)[-2:]
        y, x = y * stride[0], x * stride[1]
    return y, x


def store_chunks(spec: ImageSpec, image: ImageShape, steps: Sequence[Step] = ()) -> tuple[int, ...]:
    """The chunk of a new store: small images, one image, one tile of one, one slice of a volume (channels whole).

    A volume's slabs are sized by the memory budget, which may differ on the next run: one slice
    per chunk lets any slab write whole chunks.
    """
    chunks = task_chunks(spec, image, steps)
    return tuple(1 if name == "z" and spec.volume else size for name, size in zip(("image", *image.axes), chunks))


def task_chunks(spec: ImageSpec, image: ImageShape, steps: Sequence[Step] = ()) -> tuple[int, ...]:
    """The chunk one task computes and writes: small images, one image, one tile of one, one slab of a volume."""
    down = dict(zip(("y", "x"), _downscale(steps)))
    tile = dict(zip(("y", "x"), spec.tile or ()))
    chunks = [spec.images_per_task]
    for name, size in zip(image.axes, image.shape):
        if name == "z" and spec.volume:
            chunks.append(min(spec.chunks[0], size))
        elif name in tile:
            chunks.append(min(max(1, tile[name] // down[name]), size))
        else:
            chunks.append(size)
    return tuple(chunks)
