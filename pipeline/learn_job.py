"""One learn job end to end: pair the collections, fit the kernel over every pair, write what to apply.

``lstsq`` accumulates the normal equations of every pair (``learning.normal_equations``: no design
matrix) in ONE pass, batch by batch, each batch a Dask tree reduction on the run's scheduler, then
solves them (``learning.solve``). ``sgd``/``adam`` start from a seeded kernel and descend the
squared error over mini-batches of pairs, the gradients computed as tasks too. Either way the
output folder receives ``kernel.npy`` (and ``bias.npy``), ``job.yaml`` applying them with
``pipeline run``, ``report.json`` and ``kernel.png``.

A pair is read whole (one task per pair): the targets either have the inputs' size, only the
positions whose window lies inside the image counting, or the ``valid`` size (smaller by the
kernel's extent less one), as ``scipy.signal.correlate(..., mode="valid")`` writes them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import dask
import numpy as np

from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.events import Reporter
from pipeline.execution import open_executor
from pipeline.config import InputConfig
from pipeline.learn_config import LearnConfig
from pipeline.learning import Adam, NormalParts, SGD, accumulate, init_weights, loss_and_gradient, solve, tile_window
from pipeline.pixels import convert_pixels
from pipeline.sources.images import read_image
from pipeline.sources.listing import list_images
from pipeline.sources.volume import read_slices, stack_shape
from pipeline.storage import absolute
from pipeline.steps.strategies import NUMPY_PAD_MODES

FILES = ("kernel.npy", "bias.npy", "job.yaml", "report.json", "kernel.png")
# Warn when the normal matrix is this badly conditioned: the data barely determine the kernel.
ILL_CONDITIONED = 1e8


@dataclass(frozen=True)
class Pair:
    input: str
    target: str


@dataclass(frozen=True)
class LearnSummary:
    folder: str
    pairs: int
    method: str
    weights: np.ndarray
    bias: np.ndarray | None
    report: dict[str, Any]
    seconds: float


def pair_sources(config: LearnConfig) -> tuple[list[Pair], str]:
    """The (input, target) pairs and how they were paired: by file name, or by sorted order."""
    inputs = list_images(config.inputs.paths, config.inputs.storage_options)
    targets = list_images(config.targets.paths, config.targets.storage_options)
    stems = {Path(path).stem: path for path in targets}
    by_name = len(stems) == len(targets) and all(Path(path).stem in stems for path in inputs)
    how = config.pairing if config.pairing != "auto" else ("names" if by_name else "order")
    if how == "names":
        missing = [path for path in inputs if Path(path).stem not in stems]
        if missing:
            raise InputError(f"targets: no target named like {missing[0]!r} ({len(missing)} inputs without one); "
                             f"name them alike or set pairing: order", missing[0])
        return [Pair(path, stems[Path(path).stem]) for path in inputs], "names"
    if len(inputs) != len(targets):
        raise InputError(
            f"inputs and targets do not pair: {len(inputs)} input files but {len(targets)} target files "
            f"(paired by sorted order; the first unpaired: {(inputs + targets)[min(len(inputs), len(targets))]!r})"
        )
    return [Pair(a, b) for a, b in zip(inputs, targets)], "order"


def read_pair(pair: Pair, config: LearnConfig) -> tuple[np.ndarray, np.ndarray]:
    """x (C, *spatial) and y (K, *spatial) in float64; a valid-sized target is placed on the input's grid."""
    x, y = _read(pair.input, config.inputs), _read(pair.target, config.targets)
    kernel = tuple(config.kernel.shape)
    spatial = x.shape[1:]
    if len(kernel) != len(spatial):
        raise ConfigError(f"kernel.shape {list(kernel)} has {len(kernel)} axes but the images have {len(spatial)}")
    if any(m > n for m, n in zip(kernel, spatial)):
        raise ConfigError(f"kernel.shape {list(kernel)} is larger than the image {list(spatial)} of {pair.input!r}")
    if not np.isfinite(y).all():
        raise InputError(f"target {pair.target!r} holds NaN or infinite values; a fit needs finite targets", pair.target)
    valid = tuple(n - m + 1 for n, m in zip(spatial, kernel))
    if y.shape[1:] == valid and valid != spatial:
        full = np.zeros((y.shape[0], *spatial))
        full[(slice(None), *(slice(m // 2, m // 2 + v) for m, v in zip(kernel, valid)))] = y
        y = full
    elif y.shape[1:] != spatial:
        raise InputError(
            f"target {pair.target!r} has shape {list(y.shape[1:])} but its input {pair.input!r} has {list(spatial)}; "
            f"a target has the input's size or the valid size {list(valid)}", pair.target,
        )
    if config.kernel.mode == "same":  # every position counts: the border rule extends the input
        pads = [(0, 0)] + [(m // 2, m - 1 - m // 2) for m in kernel]
        x = np.pad(x, pads, mode=NUMPY_PAD_MODES[config.kernel.boundary])
        y = np.pad(y, pads)
    return x, y


def _read(path: str, settings: InputConfig) -> np.ndarray:
    """One image (C, y, x) — or one volume (1, z, y, x) with ``layout: volume`` — in float64."""
    if settings.layout == "volume":
        depth = stack_shape(path)[0]
        slices = [convert_pixels(plane, color="gray", dtype="float64", scale=settings.scale) for plane in read_slices(path, 0, depth)]
        return np.stack(slices)[np.newaxis]
    image = read_image(path, color=settings.color_mode, dtype="float64", scale=settings.scale, storage_options=settings.storage_options)
    return image[np.newaxis] if settings.color_mode == "gray" else image


def _window(x: np.ndarray, kernel: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]:
    spatial = x.shape[1:]
    own = tuple(slice(0, n) for n in spatial)
    window = tile_window(spatial, kernel, own)
    return window.x, own, window.valid


def pair_parts(pair: Pair, config: LearnConfig) -> NormalParts:
    """The normal-equation parts of one pair (a task)."""
    x, y = read_pair(pair, config)
    kernel = tuple(config.kernel.shape)
    reads, own, valid = _window(x, kernel)
    return accumulate(x[(slice(None), *reads)], y[(slice(None), *own)], kernel, bias=config.kernel.bias, valid_region=valid)


def pair_gradient(pair: Pair, config: LearnConfig, weights: np.ndarray, bias: np.ndarray | None) -> Any:
    x, y = read_pair(pair, config)
    kernel = tuple(config.kernel.shape)
    reads, own, valid = _window(x, kernel)
    return loss_and_gradient(x[(slice(None), *reads)], y[(slice(None), *own)], weights, bias,
                             activation=config.kernel.activation, valid_region=valid)


def _tree_sum(values: Sequence[Any]) -> Any:
    """A pairwise (tree) sum of delayed values: its depth grows with the log of their number."""
    values = list(values)
    while len(values) > 1:
        values = [dask.delayed(sum)(values[i : i + 2]) if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def learn(config: LearnConfig, *, reporter: Reporter | None = None) -> LearnSummary:
    """Fit the job's kernel and write its folder; raises PipelineError subclasses on user errors."""
    reporter = reporter or Reporter.silent()
    started = time.perf_counter()
    folder = Path(config.output.path)
    _check_folder(folder, config.output.overwrite)
    pairs, pairing = pair_sources(config)
    pairs = [Pair(absolute(p.input), absolute(p.target)) for p in pairs]
    x, y = read_pair(pairs[0], config)  # shapes and channels checked before any task runs
    channels, outputs = x.shape[0], y.shape[0]
    if config.kernel.channels is not None and tuple(config.kernel.channels) != (channels, outputs):
        raise ConfigError(
            f"kernel.channels {list(config.kernel.channels)} but the inputs have {channels} channels and the targets "
            f"{outputs} (input.color and targets.color decide them)"
        )
    shape = (outputs, channels, *config.kernel.shape)
    with open_executor(config.execution) as executor:
        batch = max(1, 4 * executor.workers)
        if config.method == "lstsq":
            weights, bias, fit = _least_squares(config, pairs, shape, executor, reporter, batch)
        else:
            weights, bias, fit = _descend(config, pairs, shape, executor, reporter)
    reporter.finish()
    report = {"method": config.method, "pairs": len(pairs), "pairing": pairing, "kernel_shape": list(shape),
              "mode": config.kernel.mode, "correlate": config.kernel.correlate, "bias": config.kernel.bias,
              "l2": config.kernel.l2, **fit, "inputs": [p.input for p in pairs[:20]], "targets": [p.target for p in pairs[:20]],
              "seconds": round(time.perf_counter() - started, 3)}
    stored = weights if config.kernel.correlate else _flipped(weights)
    from pipeline.learn_outputs import write_outputs

    write_outputs(folder, config, stored, bias, report, pairs[:3])
    return LearnSummary(str(folder), len(pairs), config.method, stored, bias, report, time.perf_counter() - started)


def _least_squares(config: LearnConfig, pairs: list[Pair], shape: tuple[int, ...], executor: Any, reporter: Reporter,
                   batch: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    total = NormalParts.zeros(config.kernel.shape, shape[1], shape[0], bias=config.kernel.bias)
    reporter.start(images=len(pairs), pending=len(pairs), done=0, batches=math.ceil(len(pairs) / batch),
                   batch_size=batch, scheduler=config.execution.scheduler, dashboard=executor.dashboard)
    for start in range(0, len(pairs), batch):
        began = time.perf_counter()
        chunk = pairs[start : start + batch]
        (parts,) = executor.results(_tree_sum([dask.delayed(pair_parts)(pair, config) for pair in chunk]))
        total = total + parts
        reporter.advance(len(chunk))
        _batch_line(reporter, start, len(chunk), len(pairs), began)
    solution = solve(total, l2=config.kernel.l2)
    if solution.underdetermined:
        raise InputError(
            f"the pairs cannot determine the kernel: the normal equations have rank {solution.rank} of "
            f"{solution.unknowns} unknowns (flat or too few images?); give more varied pairs, a smaller kernel, or kernel.l2 > 0"
        )
    if solution.condition > ILL_CONDITIONED:
        reporter.warning(f"the fit is ill-conditioned (condition number {solution.condition:.3g}): the data barely "
                         f"determine some directions of the kernel; kernel.l2 > 0 steadies it")
    fit = {"r2": solution.r2.tolist(), "rmse": solution.rmse.tolist(), "condition": solution.condition,
           "rank": solution.rank, "unknowns": solution.unknowns, "solver": solution.method, "positions": int(total.count)}
    return solution.weights, solution.bias, fit


def _descend(config: LearnConfig, pairs: list[Pair], shape: tuple[int, ...], executor: Any,
             reporter: Reporter) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    training = config.training
    weights, bias = init_weights(shape, training.seed, bias=config.kernel.bias)
    optimizer = Adam(training.learning_rate) if config.method == "adam" else SGD(training.learning_rate, training.momentum)
    order = np.random.default_rng(training.seed)
    losses: list[float] = []
    reporter.start(images=len(pairs) * training.epochs, pending=len(pairs) * training.epochs, done=0,
                   batches=training.epochs, batch_size=training.batch, scheduler=config.execution.scheduler,
                   dashboard=executor.dashboard)
    for epoch in range(training.epochs):
        began = time.perf_counter()
        shuffled = [pairs[i] for i in order.permutation(len(pairs))]
        epoch_loss = positions = 0.0
        for start in range(0, len(shuffled), training.batch):
            chunk = shuffled[start : start + training.batch]
            (step,) = executor.results(_tree_sum([dask.delayed(pair_gradient)(pair, config, weights, bias) for pair in chunk]))
            scale = 1.0 / max(step.count, 1)
            params = [weights] + ([bias] if bias is not None else [])
            grads = [step.weights * scale] + ([step.bias * scale] if bias is not None else [])
            updated = optimizer.step(params, grads)
            weights, bias = updated[0], (updated[1] if bias is not None else None)
            epoch_loss, positions = epoch_loss + step.loss, positions + step.count
            reporter.advance(len(chunk), loss=step.loss / max(step.count, 1))
        losses.append(epoch_loss / max(positions, 1))
        _batch_line(reporter, epoch * len(pairs), len(pairs), len(pairs) * training.epochs, began, loss=losses[-1])
        if _converged(losses, training.tolerance):
            break
    fit = {"loss": losses, "epochs": len(losses), "final_mse": losses[-1], "rmse": [math.sqrt(losses[-1])],
           "learning_rate": training.learning_rate, "seed": training.seed, "activation": config.kernel.activation}
    return weights, bias, fit


PATIENCE = 10  # epochs without a better loss before a descent stops


def _converged(losses: list[float], tolerance: float) -> bool:
    """No epoch of the last ``PATIENCE`` beat the best before them by more than ``tolerance`` of it (or the fit is exact)."""
    if losses[-1] == 0.0:
        return True
    if len(losses) <= PATIENCE:
        return False
    before = min(losses[:-PATIENCE])
    return min(losses[-PATIENCE:]) > before * (1 - tolerance)


def _batch_line(reporter: Reporter, start: int, images: int, total: int, began: float, *, loss: float | None = None) -> None:
    seconds = time.perf_counter() - began
    reporter.batch(start=start, stop=start + images, images=images, unreadable=0, done=start + images,
                   pending=total - start - images, seconds=round(seconds, 3), done_word="read", loss=loss,
                   images_per_second=round(images / seconds, 2) if seconds > 0 else None)


def _flipped(weights: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weights[(slice(None), slice(None), *(slice(None, None, -1),) * (weights.ndim - 2))])


def _check_folder(folder: Path, overwrite: bool) -> None:
    if folder.is_file():
        raise OutputError(f"output.path {str(folder)!r} is a file; give a folder for the fit")
    existing = [name for name in FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"output folder {str(folder)!r} already holds a fit ({', '.join(existing)}); pass --overwrite to replace it, "
            f"or choose another output.path"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {str(folder)!r}: {exc.strerror or exc}") from None
