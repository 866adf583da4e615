"""The YAML job file as immutable pydantic models: parsed and validated once, trusted downstream.

Relative paths (inputs, output, kernel files) are taken relative to the current working directory,
like every other command-line tool, so ``--set output.path=out/x.zarr`` means what it says.
Inputs and output may be fsspec URLs; ``file://`` URLs become local paths here, and a dump of the
config (what a store's provenance records) never holds a secret-looking storage option.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, TypeVar, Union

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from pipeline.budget import parse_size
from pipeline.errors import ConfigError
from pipeline.pixels import Color, GrayFrom, color_mode
from pipeline.job_file import apply_override, expand_environment, read_yaml
from pipeline.sinks.layout import SPACE_UNITS
from pipeline.sources.images import DEFAULT_MAX_PIXELS
from pipeline.storage import local_or_url, redact_options, refuse_embedded_password, without_userinfo
from pipeline.step_kinds import (  # noqa: F401 (the step models are part of the job file's models)
    MAX_STEPS,
    STEP_KINDS,
    ActivationSpec,
    ActivationStep,
    ConvolveSpec,
    ConvolveStep,
    Frozen,
    LayerSpec,
    LayerStep,
    NormalizeStep,
    PoolSpec,
    PoolStep,
    PositiveCount,
    StepConfig,
    StepKind,
    step_kind,
)

ModelT = TypeVar("ModelT", bound=BaseModel)
OutputDType = Literal["float32", "float64", "uint8", "uint16", "uint32", "int8", "int16", "int32"]
Codec = Literal["blosc-lz4", "blosc-zstd", "zstd", "none"]
SCHEDULER_NAMES = ("sync", "threads", "processes", "local", "slurm", "pbs", "sge")
SpaceUnit = Literal[SPACE_UNITS]  # type: ignore[valid-type]


STORAGE_OPTIONS_HELP = (
    "fsspec options for URL paths (endpoint_url, anon, client_kwargs, ...); credentials come from the "
    "environment, and secret-looking options are never recorded"
)


def _location(path: str) -> str:
    """A local path, or a URL without a password in it; ``file://`` URLs become local paths."""
    return local_or_url(refuse_embedded_password(path))


class InputConfig(Frozen):
    paths: Union[str, list[str]] = Field(
        description="glob, directory, single file, or a list of them; sorted naturally"
    )
    color: Literal["gray", "keep", "rgb"] = Field(
        "gray",
        description="gray: ITU-R BT.601 luma, alpha dropped; keep: the channels each file stores; rgb: 3 channels "
        "for every file (gray replicated), so gray and colour photographs share a collection",
    )
    gray_from: GrayFrom = Field(
        "luma",
        description="color: gray from a JPEG: luma, the luma plane the file stores (BT.601 of the original "
        "pixels, rounded; no chroma decoded, about twice as fast); rgb, decoded to RGB, then BT.601 (as stores "
        "written before this option; a store keeps the way its inputs were read)",
    )
    alpha: Optional[Literal["keep", "drop"]] = Field(
        None,
        description="an alpha channel: kept as a channel or dropped; default keep with color: keep, drop with "
        "color: rgb (keep then adds an opaque alpha to files without one)",
    )
    scale: Literal["native", "unit"] = Field(
        "native",
        description="native: values on their type's scale (0-255, 0-65535), every file of one bit depth; unit: each "
        "image divided by its type's maximum (0-1), so 8- and 16-bit files share a collection",
    )

    on_error: Literal["fail", "skip"] = Field(
        "fail", description="an unreadable image: fail the run, or skip it (listed in the store with its reason)"
    )
    shapes: Literal["strict", "pad", "group"] = Field(
        "strict",
        description="images of different sizes: strict fails naming the file; pad pads each to the largest; "
        "group writes one result per distinct shape",
    )
    pad_value: float = Field(0.0, description="the value padding adds with shapes: pad")
    layout: Literal["images", "volume"] = Field(
        "images", description="images: each file one 2-D image; volume: each multi-page TIFF one (z, y, x) stack"
    )
    tile: Union[Literal["auto", "whole"], PositiveCount] = Field(
        "auto",
        description="read huge TIFFs by tiles: auto (TIFFs beyond a worker's share of execution.memory_budget, "
        "by the largest tiles that fit), whole, or a tile size",
    )
    allow_incomplete: bool = Field(
        False,
        description="read a store written by this pipeline that is not complete (running, failed): images not "
        "yet written read as its fill value",
    )
    max_pixels: PositiveCount = Field(
        DEFAULT_MAX_PIXELS, description="refuse images whose header declares more pixels (decompression bombs)"
    )

    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_HELP)

    @property
    def color_mode(self) -> Color:
        """How the sources treat channels: gray, keep, opaque (kept, alpha dropped), rgb or rgba."""
        return color_mode(self.color, self.alpha)

    @field_validator("paths")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not all(value)):
            raise ValueError("give at least one path, directory or glob")
        return _location(value) if isinstance(value, str) else [_location(entry) for entry in value]

    @field_serializer("storage_options")
    def _redacted(self, options: dict[str, Any]) -> dict[str, Any]:
        return redact_options(options)


class OutputConfig(Frozen):
    path: str = Field(description="Zarr store to create: a directory, or an fsspec URL (s3://bucket/x.zarr)")
    dtype: OutputDType = Field(
        "float32", description="integer outputs are rounded and clipped to the type's range, never wrapped"
    )
    overwrite: bool = Field(False, description="replace an existing store written by this tool")
    codec: Codec = Field("blosc-lz4", description="chunk compression; blosc-lz4 (+shuffle) is the fastest to write")
    levels: Annotated[int, Field(ge=1, le=8, strict=True)] = Field(
        1, description="resolution levels written with the result: each halves y and x (2x2 mean), for viewers"
    )
    format: Literal["ome", "ome-0.4", "zarr"] = Field(
        "ome",
        description="ome: OME-NGFF 0.5 metadata, Zarr v3 (opens in napari, ome-zarr-py); ome-0.4: OME-NGFF 0.4 "
        "in a Zarr v2 store, for readers that need it; zarr: the arrays only",
    )
    shards: Union[None, PositiveCount, list[PositiveCount]] = Field(
        None,
        description="pack chunks into shard files: N images per shard, or a shard shape of whole chunks; "
        "writes are cut at shard edges so no two tasks write one shard",
    )

    images_per_chunk: Union[Literal["auto"], PositiveCount] = Field(
        "auto",
        description="whole images per store chunk (and per task); auto = one per chunk, or several small ones "
        "together up to 1 MiB (one when shards are set)",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_HELP)
    pixel_size: Optional[list[Annotated[float, Field(gt=0)]]] = Field(
        None, description="physical size of a pixel per space axis ([y, x] or [z, y, x]), in unit: the OME-NGFF scale"
    )
    unit: Optional[SpaceUnit] = Field(None, description="length unit of pixel_size and the space axes (OME-NGFF), e.g. micrometer")

    @model_validator(mode="after")
    def _shards_need_zarr_v3(self) -> OutputConfig:
        if self.shards is not None and self.format == "ome-0.4":
            raise ValueError("output.shards needs Zarr v3; OME-NGFF 0.4 (output.format: ome-0.4) is Zarr v2 — use format ome")
        return self

    @field_validator("path")
    @classmethod
    def _local_or_url(cls, value: str) -> str:
        return _location(value)

    @field_serializer("storage_options")
    def _redacted(self, options: dict[str, Any]) -> dict[str, Any]:
        return redact_options(options)


class ExecutionConfig(Frozen):
    scheduler: str = Field(
        "threads",
        description="sync | threads | processes | local (a LocalCluster) | tcp://HOST:PORT | slurm | pbs | sge",
    )
    workers: Union[Literal["auto"], PositiveCount] = Field(
        "auto", description="parallel workers (threads, processes or LocalCluster workers); auto = CPU count"
    )
    threads_per_worker: PositiveCount = Field(1, description="threads of each LocalCluster worker")
    memory_limit: str = Field("auto", description="memory limit of each LocalCluster worker, e.g. 4GiB")
    memory_budget: str = Field(
        "auto",
        description="memory the workers' tiles and slabs may hold together, e.g. 1GiB; each worker gets an equal "
        "share and huge images are read by the largest tiles (volumes by the deepest slabs) that fit it; "
        "auto = 96MiB per worker",
    )
    batch_size: Union[Literal["auto"], PositiveCount] = Field(
        "auto", description="images per batch: the unit of graph size, progress and resume"
    )
    cluster: dict[str, Any] = Field(
        default_factory=dict, description="options passed to the dask-jobqueue cluster (cores, memory, queue, ...)"
    )
    jobs: PositiveCount = Field(1, description="dask-jobqueue jobs to start")
    connect_timeout: float = Field(
        30.0, gt=0,
        description="seconds to wait for a tcp:// scheduler, or (slurm, pbs, sge) for a worker: the first one, "
        "and again whenever a run has none left",
    )
    compute_dtype: Literal["auto", "float32", "float64"] = Field(
        "auto", description="float type of the computation; auto = float64 for 32/64-bit outputs, else float32"
    )

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _a_size(cls, value: Any) -> str:
        if value != "auto":
            parse_size(value)  # raises ValueError with the accepted units
        return str(value)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value in SCHEDULER_NAMES or (value.startswith("tcp://") and len(value) > len("tcp://")):
            return value
        close = difflib.get_close_matches(value, SCHEDULER_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown scheduler {value!r}; {hint}use one of {', '.join(SCHEDULER_NAMES)} or tcp://HOST:PORT")


class PipelineConfig(Frozen):
    input: InputConfig
    steps: tuple[StepConfig, ...] = Field(default=(), max_length=MAX_STEPS, description=f"applied in order; at most {MAX_STEPS}")
    output: OutputConfig
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @field_validator("steps", mode="before")
    @classmethod
    def _not_too_many(cls, value: Any) -> Any:
        # Before the steps are validated one by one: a job of 10,000 steps is refused at once.
        if isinstance(value, (list, tuple)) and len(value) > MAX_STEPS:
            raise ValueError(f"a job has at most {MAX_STEPS} steps; this one has {len(value)}")
        return value


# Which model holds the keys below a given parent key, to suggest the closest valid key.
_MODELS_BY_PARENT: dict[str, type[BaseModel]] = {
    "": PipelineConfig,
    "input": InputConfig,
    "output": OutputConfig,
    "execution": ExecutionConfig,
    "convolve": ConvolveSpec,
    "layer": LayerSpec,
    "activation": ActivationSpec,
    "pool": PoolSpec,
}


__all__ = ["PipelineConfig", "apply_override", "expand_environment", "load_config", "read_yaml", "validate_config"]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a YAML job file, apply ``dotted.key=value`` overrides, and validate the result once."""
    raw = read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], *, source: str = "config") -> PipelineConfig:
    return validate_model(PipelineConfig, raw, source=source)


def validate_model(model: type[ModelT], raw: dict[str, Any], *, source: str = "config") -> ModelT:
    """``raw`` as ``model`` (a run's or a learn job's), or one ConfigError listing every problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # A misspelt key also makes the key it meant missing: the unknown key is the news, so it comes first.
        errors = sorted(exc.errors(include_url=False), key=lambda error: error["type"] != "extra_forbidden")
        problems = _merge_union_branches(_describe(error, model) for error in errors)
        more = len(problems) - 1
        summary = problems[0] + (f" (and {more} more problem{'s' * (more > 1)}; run 'pipeline validate')" if more else "")
        raise ConfigError(f"{source}: {summary}", problems) from None


# Pydantic's messages in our words, by error type (ctx fills the braces); sequences are stored as
# tuples (immutable), but in YAML they are lists.
_MESSAGES = {
    "missing": "required", "dict_type": "expected a mapping", "string_type": "expected a string",
    "list_type": "expected a list", "tuple_type": "expected a list", "finite_number": "expected a finite number",
    "int_type": "expected a whole number", "int_parsing": "expected a whole number", "int_from_float": "expected a whole number",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false", "literal_error": "expected {expected}",
    "greater_than": "expected a number greater than {gt}", "greater_than_equal": "expected a number of at least {ge}",
    "less_than": "expected a number less than {lt}", "less_than_equal": "expected a number of at most {le}",
}


def _describe(error: dict[str, Any], root: type[BaseModel] = BaseModel) -> str:
    loc = _clean_loc(error["loc"], error["type"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_suggest(loc, root)}"
    if kind == "value_error":  # our validators' own messages (KernelError among them)
        message = str(ctx["error"])
    elif kind == "model_type":
        model = next((m for m in _MODELS_BY_PARENT.values() if m.__name__ == ctx.get("class_name")), None)
        fields = f" ({', '.join(model.model_fields)})" if model else ""
        message = f"expected a mapping of {loc[-1] if loc else 'job'} options{fields}"
    else:
        message = _MESSAGES.get(kind, "").format(**ctx) or error["msg"].replace("Input should be ", "expected ")
    if kind != "missing" and "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return without_userinfo(f"{key}: {message}")  # a URL's password is never echoed back


# How pydantic names the members of a union in an error's path ("str", "list[str]",
# "constrained-int", "literal['auto']", "function-after[...]"): never a key the user wrote.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|[a-z]+(-[a-z]+)+|[a-z-]+\[.*\])$")


def _clean_loc(loc: tuple[Any, ...], error_type: str) -> list[Any]:
    # Tagged unions also put the tag into the path (steps.0.convolve.convolve.kernel).
    cleaned: list[Any] = []
    last = len(loc) - 1
    for position, part in enumerate(loc):
        if cleaned and part == cleaned[-1] and part in STEP_KINDS:
            continue
        user_key = error_type == "extra_forbidden" and position == last
        if isinstance(part, str) and not user_key and _UNION_MEMBER.match(part):
            continue
        cleaned.append(part)
    return cleaned


def _merge_union_branches(problems: Iterable[str]) -> tuple[str, ...]:
    """One line per key: a value that fits no member of a union fails once per member."""
    merged: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for problem in problems:
        key, _, message = problem.partition(": ")
        message, sep, value = message.partition(" (got ")
        if sep:
            got[key] = f" (got {value}"
        if message not in merged.setdefault(key, []):
            merged[key].append(message)
    return tuple(f"{key}: {_either(messages)}{got.get(key, '')}" for key, messages in merged.items())


def _either(messages: list[str]) -> str:
    """``expected 'auto' or a whole number``; a number takes in the whole numbers."""
    if "expected a number" in messages and "expected a whole number" in messages:
        messages = [message for message in messages if message != "expected a whole number"]
    if len(messages) > 1 and all(message.startswith("expected ") for message in messages):
        return "expected " + " or ".join(message.removeprefix("expected ") for message in messages)
    return " or ".join(messages)


def _suggest(loc: list[Any], root: type[BaseModel]) -> str:
    parents = [part for part in loc[:-1] if isinstance(part, str)]
    model = _MODELS_BY_PARENT.get(parents[-1]) if parents else root
    if parents and parents[-1] in getattr(root, "model_fields", {}) and parents[-1] not in _MODELS_BY_PARENT:
        annotation = root.model_fields[parents[-1]].annotation  # a section of another job file (learn's kernel)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return ""
    valid = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}valid keys: {', '.join(valid)})"
