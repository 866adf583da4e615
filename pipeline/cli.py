"""The ``pipeline`` command: thin commands that gather arguments, call one library function, print.

Errors a user can cause are raised deep as PipelineError subclasses and caught only here: one line
on stderr, the documented exit code, no traceback unless ``--debug``.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import __version__
from pipeline.arguments import parse_index, parse_params, parse_storage_options
from pipeline.errors import ConfigError, Interrupted, PipelineError, Terminated, scrub_secrets
from pipeline.events import counted

if TYPE_CHECKING:
    from pipeline.events import Reporter

app = typer.Typer(
    name="pipeline",
    help="Convolve large image collections: YAML config → lazy Dask arrays → overlapped convolution → Zarr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class LogFormat(StrEnum):
    plain = "plain"
    json = "json"


class ExportFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    tiff = "tiff"


class ExportNormalize(StrEnum):
    auto = "auto"
    minmax = "minmax"
    percentile = "percentile"
    none = "none"


@contextmanager
def reported_errors(reporter: Reporter | None = None) -> Iterator[None]:
    """Turn errors into one line and an exit code; ``--debug`` shows the traceback instead."""
    try:
        yield
    except Interrupted as exc:  # what was written is safe: no "error:", the message says how to go on
        if reporter is not None and reporter.log_format == "json":
            reporter.error(str(exc), exc.exit_code)
        err.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except PipelineError as exc:
        if _state["debug"]:
            raise
        if reporter is not None and reporter.log_format == "json":
            reporter.error(_first_line(exc), exc.exit_code)
        # escaped: a message's [brackets] ('imageconv-pipeline[cluster]', file names) are text, not markup
        err.print(f"[red]error:[/red] {escape(_first_line(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # before a run started writing: nothing to resume
        err.print("interrupted", highlight=False)
        raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None
    except Exception as exc:
        if _state["debug"]:
            raise
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {escape(scrub_secrets(_first_line(exc)))} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _version(value: bool) -> None:
    if value:
        out.print(f"pipeline {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


ConfigArg = Annotated[Path, typer.Argument(help="YAML job file.", show_default=False)]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: dotted.key=value (repeatable; beats the file)."),
]


def _overrides(
    sets: list[str] | None,
    *,
    overwrite: bool | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """Flags become --set overrides so the merged result is validated once, flags last."""
    merged = list(sets or [])
    if overwrite is not None:
        merged.append(f"output.overwrite={str(overwrite).lower()}")
    if scheduler is not None:
        merged.append(f"execution.scheduler={scheduler}")
    if workers is not None:
        merged.append(f"execution.workers={workers}")
    if batch_size is not None:
        merged.append(f"execution.batch_size={batch_size}")
    return merged


@app.command()
def run(
    config: ConfigArg,
    set_: SetOption = None,
    overwrite: Annotated[
        Optional[bool], typer.Option("--overwrite/--no-overwrite", help="Replace an existing store.")
    ] = None,
    scheduler: Annotated[
        Optional[str],
        typer.Option(help="sync | threads | processes | local | tcp://HOST:PORT | slurm | pbs | sge."),
    ] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel workers (default: CPU count).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per batch (default: auto).")] = None,
    append: Annotated[
        bool, typer.Option("--append", help="Add input files the store has not seen (daily jobs).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Finish an interrupted run (also what a plain rerun of the same job does)."),
    ] = False,
    progress: Annotated[
        Optional[bool], typer.Option(
            "--progress/--no-progress", help="Progress bar (default: a bar on a terminal, a line per batch otherwise)."
        )
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(help="plain: a summary line; json: one JSON object per event on stdout.")
    ] = LogFormat.plain,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success (cron).")] = False,
) -> None:
    """Run a job: read the images, apply the steps, write the Zarr store; a rerun resumes it."""
    from pipeline.config import load_config
    from pipeline.events import Reporter
    from pipeline.job_run import run as run_job

    del resume  # resuming is what a rerun does; the flag lets scripts say so
    terminal = sys.stderr.isatty()
    # A terminal gets a bar; a log file (not a TTY) a line per batch, unless --no-progress.
    reporter = Reporter(
        log_format=log_format.value, quiet=quiet, progress=terminal if progress is None else progress,
        lines=progress is None and not terminal,
    )
    with reported_errors(reporter), _terminated_like_interrupted():
        overrides = _overrides(set_, overwrite=overwrite, scheduler=scheduler, workers=workers, batch_size=batch_size)
        run_job(load_config(config, overrides), append=append, reporter=reporter)


@contextmanager
def _terminated_like_interrupted() -> Iterator[None]:
    """SIGTERM (schedulers, ``kill``) stops a run as Ctrl-C does: status interrupted, a rerun resumes."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def validate(
    config: ConfigArg,
    set_: SetOption = None,
    headers: Annotated[
        int, typer.Option(min=0, help="Read the headers of at most this many input files (0: none).")
    ] = 10_000,
) -> None:
    """Check a job file and its inputs' headers: print every problem, or a short summary if it is valid."""
    from pipeline.config import load_config
    from pipeline.job_file import read_yaml
    from pipeline.sources.headers import survey_inputs
    from pipeline.steps.chain import build_steps

    try:
        if "targets" in read_yaml(config):  # a learn job: inputs and targets
            _validate_learn(config, _overrides(set_))
            return
        cfg = load_config(config, _overrides(set_))
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"{config}: {problem}" if not problem.startswith(str(config)) else problem, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    with reported_errors():
        survey = survey_inputs(cfg.input, limit=headers)
    problems = survey.problems(cfg.input)
    for problem in problems:
        err.print(f"{config}: input.paths: {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(3)
    with reported_errors():
        steps = ", ".join(step.name for step in build_steps(cfg.steps)) or "no steps"
    out.print(
        f"{config}: valid: {counted(survey.total, 'input file')} ({survey.summary()}); {steps}; output {cfg.output.path}",
        highlight=False,
    )


def _validate_learn(config: Path, overrides: list[str]) -> None:
    """A learn job file: its models, and the pairing of its collections (headers are read when it runs)."""
    from pipeline.learn_pairs import pair_sources
    from pipeline.learn_config import load_learn_config

    cfg = load_learn_config(config, overrides)
    with reported_errors():
        pairs, how = pair_sources(cfg)
    shape = "x".join(map(str, cfg.kernel.shape))
    out.print(f"{config}: valid learn job: {counted(len(pairs), 'pair')} (paired by {how}); {shape} kernel by {cfg.method}; "
              f"output {cfg.output.path}", highlight=False)


@app.command()
def plan(
    config: ConfigArg,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show what a job will do, without doing it: per stage the strategy, halo, chunks and output bytes
    (uncompressed, whole collection); tasks, memory, bytes read and written."""
    from pipeline.config import load_config
    from pipeline.job_plan import build_plans

    with reported_errors():
        plans = build_plans(load_config(config, _overrides(set_)))
        described = {name: job.describe() for name, job in plans.items()}
    if as_json:
        out.print_json(json.dumps(described[""] if "" in described else {"groups": described}))
        return
    for name, info in described.items():
        if name:
            out.print(f"[bold]group {name}[/bold]", highlight=False)
        table = Table("steps", "what", "strategy (engine)", "halo", "output shape", "channels", "chunk", "output bytes")
        for stage in info["stages"]:
            table.add_row(
                ",".join(map(str, stage["steps"])), stage["what"],
                ", ".join(stage["strategy"]) + ("" if stage["reproducible"] else " (bytes depend on the block size)"),
                str(tuple(stage["halo"])), str(tuple(stage["shape"])), str(stage["channels"]), str(tuple(stage["chunks"])),
                _size(stage["bytes"]),
            )
        out.print(table)
        mib = 1024 * 1024
        out.print(
            f"{counted(info['images'], 'image')}, {counted(info['tasks'], 'task')}, read {info['read']}, "
            f"compute dtype {info['compute_dtype']}; "
            f"peak memory ≈ {info['peak_memory_per_task'] / mib:.1f} MiB per task, "
            f"≈ {info['peak_memory_all_workers'] / mib:.1f} MiB for {counted(info['workers'], 'worker')} "
            f"(tiles and slabs sized for {info['memory_budget_per_worker'] / mib:.0f} MiB per worker); "
            f"read ≈ {info['bytes_read_estimate'] / mib:.1f} MiB, "
            f"write {info['bytes_written_uncompressed'] / mib:.1f} MiB before compression",
            highlight=False,
        )


def _size(count: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: ``48.0 KiB``."""
    value, unit = float(count), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


@app.command()
def schema() -> None:
    """Print the JSON schema of the job file (from the config models), for editors and validators."""
    from pipeline.config import PipelineConfig

    out.print_json(json.dumps(PipelineConfig.model_json_schema()))


@app.command()
def kernels(
    name: Annotated[Optional[str], typer.Argument(help="Show one kernel's full matrix.")] = None,
    param: Annotated[
        Optional[list[str]], typer.Option("--param", "-p", help="Kernel parameter key=value (repeatable).")
    ] = None,
) -> None:
    """List the built-in kernels with their parameters and matrices."""
    from pipeline.steps.kernels import BUILTINS, build_kernel

    with reported_errors():
        if name is not None:
            kernel = build_kernel(name, parse_params(param))
            out.print(f"{name} {dict(kernel.params) or ''} shape {kernel.weights.shape}", highlight=False)
            out.print(_format_matrix(kernel.weights), highlight=False)
            return
    table = Table("name", "parameters (defaults)", "matrix", "description", show_lines=True)
    for builtin in BUILTINS.values():
        weights = builtin.factory()
        matrix = _format_matrix(weights) if weights.size <= 25 else f"{weights.shape} (pipeline kernels {builtin.name})"
        params = ", ".join(f"{k}={v}" for k, v in builtin.defaults.items()) or "-"
        table.add_row(builtin.name, params, matrix, builtin.description)
    out.print(table)


StorageOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option",
        "-S",
        help="fsspec option for a store at a URL, key=value (repeatable; dotted keys nest, values are YAML), "
        "e.g. endpoint_url=http://localhost:9000 or anon=true. Credentials come from the environment.",
    ),
]


def _format_matrix(weights: np.ndarray) -> str:
    return np.array2string(weights, precision=4, suppress_small=True, max_line_width=200)


@app.command()
def inspect(
    store: Annotated[str, typer.Argument(help="Zarr store written by `pipeline run`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    sources: Annotated[int, typer.Option(help="How many source files to list.")] = 5,
    storage_option: StorageOption = None,
) -> None:
    """Show a store's shape, dtype, chunks, codec, status, steps and source files."""
    from pipeline.sinks.grouped import grouped_summary, stored_groups
    from pipeline.sinks.zarr_store import open_result

    with reported_errors():
        options = parse_storage_options(storage_option)
        if stored_groups(store, options):
            _inspect_groups(grouped_summary(store, options), as_json=as_json)
            return
        info = open_result(store, storage_options=options).summary(sources=sources)
    names, unreadable = info["sources"], info["unreadable"]
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for key in ("store", "status", "progress", "shape", "axes", "dtype", "chunks", "shards", "codec", "version", "started", "finished", "error"):
        if info[key] is not None:
            table.add_row(f"[bold]{key}", str(info[key]))
    for index, step in enumerate(info["steps"]):
        table.add_row(f"[bold]step {index}", _describe_step(step))
    listed = "" if len(names) == info["source_count"] else f" (first {len(names)} listed)" if names else " (none listed)"
    table.add_row("[bold]sources", counted(info["source_count"], "file") + listed)
    for index, name in enumerate(names):
        table.add_row("", f"{index}: {name}")
    for entry in unreadable[:sources]:
        table.add_row("[bold]unreadable", f"{entry['index']}: {entry['reason']}")
    out.print(table)


def _inspect_groups(info: dict, *, as_json: bool) -> None:
    """A store of shape groups (input.shapes: group): one row per group; inspect a group for more."""
    if as_json:
        out.print_json(json.dumps(info))
        return
    groups = counted(len(info["groups"]), "shape group")
    out.print(f"[bold]{info['store']}[/bold]: {info['status']}, {groups}", highlight=False)
    table = Table("group", "image shape", "images", "written", "status", "inspect with")
    for group in info["groups"]:
        table.add_row(
            group["group"], str(tuple(group["shape"])), str(group["images"]), str(group["written"]),
            group["status"], f"pipeline inspect {group['store']}",
        )
    out.print(table)
    for entry in info["unreadable"]:
        out.print(f"unreadable: {entry['reason']}", highlight=False)


def _describe_step(step: dict) -> str:
    kind = step.get("step")
    if kind == "convolve":
        kernel = step["kernel"]
        op = "correlate" if step.get("correlate") else "convolve"
        params = f" {kernel['params']}" if kernel.get("params") else ""
        return f"{op} {kernel['source']}{params} {tuple(kernel['shape'])} mode={step['mode']} boundary={step['boundary']}"
    if kind == "layer":
        weights = step["weights"]
        bias = "" if step.get("bias") is None else " + bias"
        stride = f" stride={step['stride']}" if any(s > 1 for s in step.get("stride", [1])) else ""
        return f"layer {weights['source']} {tuple(weights['shape'])}{bias} mode={step['mode']} boundary={step['boundary']}{stride}"
    if kind == "activation":
        extra = {key: step[key] for key in ("slope", "min", "max") if key in step}
        return f"activation {step['function']}" + (f" {extra}" if extra else "")
    if kind == "pool":
        return f"pool {step['function']} size={step['size']} stride={step['stride']} padding={step['padding']}"
    return f"{kind} {step.get('how', '')}"


@app.command()
def export(
    store: Annotated[str, typer.Argument(help="Zarr store written by `pipeline run`.")],
    outdir: Annotated[str, typer.Argument(help="Folder to write the images into.")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="Image format.")] = ExportFormat.png,
    normalize: Annotated[
        ExportNormalize, typer.Option(help="auto: stretch to 0-255 only what the format cannot hold.")
    ] = ExportNormalize.auto,
    index: Annotated[Optional[str], typer.Option(help="Images to write: N or START:STOP (default all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files already in the folder.")] = False,
    storage_option: StorageOption = None,
) -> None:
    """Write stored images back out as PNG, JPEG or TIFF files (images the store has no pixels for are left out)."""
    from pipeline.sinks.export import describe_left_out, export_images

    with reported_errors():
        exported = export_images(
            store, outdir, fmt=format.value, normalize=normalize.value, indices=parse_index(index),
            overwrite=overwrite, storage_options=parse_storage_options(storage_option),
        )
    left_out = f" ({describe_left_out(exported.left_out)})" if exported.left_out else ""
    wrote = counted(len(exported.written), f"{format.value} file")
    out.print(f"wrote {wrote} to {outdir}{left_out}", highlight=False, markup=False)  # names may hold [brackets]


@app.command()
def preview(
    store: Annotated[str, typer.Argument(help="Zarr store written by `pipeline run`.")],
    output: Annotated[str, typer.Option("--output", "-o", help="PNG file to write.")] = "preview.png",
    count: Annotated[int, typer.Option(min=1, help="How many images (columns).")] = 4,
    cell: Annotated[int, typer.Option(min=16, help="Size of each cell in pixels.")] = 256,
    storage_option: StorageOption = None,
) -> None:
    """Write a contact sheet: the first sources above their results (remote sources with the run's options)."""
    from pipeline.preview import contact_sheet

    with reported_errors():
        written = contact_sheet(store, output, count=count, cell=cell, storage_options=parse_storage_options(storage_option))
    out.print(f"wrote {written}", highlight=False)


def main() -> None:
    if "dask" not in sys.modules:
        sys.meta_path.insert(0, _DaskWithoutOptionalImports())  # type: ignore[arg-type]
    try:
        app()
    finally:
        # The interpreter's shutdown runs full garbage collections over every object the imports made
        # (dask, zarr, pydantic, typer: 0.2-0.4 s at the end of every command, measured). Nothing is
        # left to collect that matters once the command has returned: files are closed and the OS
        # frees the memory, so those objects are moved out of the collector's sight. Exit handlers
        # (logging's flush among them) still run as usual.
        gc.freeze()


class _DaskWithoutOptionalImports:
    """An import finder that keeps dask from importing, as it starts, optional modules the CLI never uses.

    dask imports each of these, when installed, only in a module body and inside ``try``/``except
    ImportError``; together 0.5-0.9 s of every command, most of it xarray's:

    - ``dask.array.core`` imports xarray (and pandas) to take a ``DataArray``'s own chunks in
      ``from_array``; the CLI never hands it one (0.4-0.8 s);
    - ``dask.array.chunk_types`` imports scipy.sparse to accept sparse matrices as chunks;
    - ``dask.array.fft`` imports scipy.fftpack to wrap its transforms (``da.fft`` is not used);
    - ``dask.system`` imports psutil for the CPU affinity, which on Linux it already reads from
      ``os.sched_getaffinity``;
    - ``dask.widgets`` imports jinja2 for the HTML shown in notebooks
    (the last four together about 60 ms). As ``dask.array`` starts, it also keeps dask from copying
    NumPy's docstrings (``_without_copied_docstrings``).

    Each import is refused only while that one module runs its body (its spec is ``_initializing``),
    and dask takes the refusal as "not installed"; every module imports as usual afterwards (the
    FFT strategy's scipy.fft, xarray for ``to_xarray``). The Python API (``import pipeline``) does
    not install it: a notebook may hand DataArrays or sparse chunks to dask.
    """

    REFUSED = {
        "xarray": "dask.array.core",
        "scipy.sparse": "dask.array.chunk_types",
        "scipy.fftpack": "dask.array.fft",
        "psutil": "dask.system",
        "jinja2": "dask.widgets.widgets",
    }

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "dask.array":
            _without_copied_docstrings()
        importer = self.REFUSED.get(name)  # every other import: one dict look-up
        starting = sys.modules.get(importer) if importer else None
        if starting is not None and getattr(getattr(starting, "__spec__", None), "_initializing", False):
            raise ModuleNotFoundError(f"{name} is not imported by {importer} in the CLI", name=name)
        return None


def _without_copied_docstrings() -> None:
    """Keep dask.array from copying NumPy's docstrings onto its functions as it starts (≈ 0.2 s).

    ``dask.utils.derived_from`` rewrites, for each of some 300 functions and every ufunc, the NumPy
    docstring it wraps, comparing both signatures; that is documentation only, which the CLI never
    shows. Called as ``dask.array`` starts to import: ``dask`` and ``dask.utils`` are loaded by then and
    the ``dask.array`` modules take the decorator by name from ``dask.utils`` as they run.
    """
    utils = sys.modules.get("dask.utils")
    if utils is not None and getattr(utils, "derived_from", None) is not None:
        utils.derived_from = _own_docstring


def _own_docstring(original_klass: object, version: object = None, ua_args: object = None, skipblocks: int = 0,
                   inconsistencies: object = None):
    """``dask.utils.derived_from`` that leaves the function as it is, its own docstring included."""
    return lambda method: method


@app.command()
def learn(
    config: ConfigArg,
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier fit in the output folder.")] = False,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Learn the kernel (or bank) that maps the inputs to the targets; write kernel.npy, job.yaml, report.json, kernel.png."""
    from pipeline.events import Reporter
    from pipeline.learn_job import learn as learn_kernel
    from pipeline.learn_config import load_learn_config

    terminal = sys.stderr.isatty()
    reporter = Reporter(quiet=quiet, progress=terminal if progress is None else progress, lines=progress is None and not terminal)
    with reported_errors(reporter), _terminated_like_interrupted():
        overrides = list(set_ or []) + (["output.overwrite=true"] if overwrite else [])
        summary = learn_kernel(load_learn_config(config, overrides), reporter=reporter)
    if quiet:
        return
    report = summary.report
    quality = (
        f"R² {', '.join(f'{v:.6f}' for v in report['r2'])}, RMSE {', '.join(f'{v:.3g}' for v in report['rmse'])}, "
        f"condition {report['condition']:.3g}"
        if summary.method == "lstsq"
        else f"loss {report['final_mse']:.6g} after {counted(report['epochs'], 'epoch')}"
    )
    out.print(
        f"learned a {'x'.join(map(str, report['kernel_shape'][2:]))} kernel "
        f"({report['kernel_shape'][0]} out, {report['kernel_shape'][1]} in) from {counted(summary.pairs, 'pair')} "
        f"(paired by {report['pairing']}, {summary.method}): {quality} in {summary.seconds:.1f} s → {summary.folder}",
        highlight=False,
    )
    out.print(_format_matrix(summary.weights if summary.weights.ndim > 4 or summary.weights.shape[:2] != (1, 1) else summary.weights[0, 0]), highlight=False)
