"""One learn job end to end: pair the collections, fit the kernel over every pair, write what to apply.

``lstsq`` accumulates the normal equations of every piece of every pair (``learning.normal_equations``:
no design matrix) in ONE pass, batch by batch, each batch a Dask tree reduction on the run's
scheduler, then solves them (``learning.solve``). ``sgd``/``adam`` start from a seeded kernel and
descend the squared error over mini-batches of pairs, the gradients of their pieces computed as
tasks too. Either way the output folder receives ``kernel.npy`` (and ``bias.npy``), ``job.yaml``
applying them with ``pipeline run``, ``report.json`` and ``kernel.png``.

A piece is a pair read whole, or one tile (one slab) of a huge pair (``learn_pairs``): the tasks
hold one piece each, so memory follows the piece, not the image or the collection.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import dask
import numpy as np

from pipeline.budget import worker_budget
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.events import Reporter
from pipeline.execution import open_executor, resolve_workers
from pipeline.learn_config import LearnConfig
from pipeline.learn_outputs import write_outputs
from pipeline.learn_pairs import Pair, Piece, pair_shape, pair_sources, piece_arrays, pieces
from pipeline.learning import Adam, LossGradient, NormalParts, SGD, accumulate, init_weights, loss_and_gradient, solve
from pipeline.storage import absolute

FILES = ("kernel.npy", "bias.npy", "job.yaml", "report.json", "kernel.png")
# Warn when the normal matrix is this badly conditioned: the data barely determine the kernel.
ILL_CONDITIONED = 1e8


@dataclass(frozen=True)
class LearnSummary:
    folder: str
    pairs: int
    method: str
    weights: np.ndarray
    bias: np.ndarray | None
    report: dict[str, Any]
    seconds: float


def piece_parts(piece: Piece, config: LearnConfig) -> NormalParts:
    """The normal-equation parts of one piece (a task)."""
    x, y = piece_arrays(piece, config)
    return accumulate(x, y, config.kernel.shape, bias=config.kernel.bias)


def piece_gradient(piece: Piece, config: LearnConfig, weights: np.ndarray, bias: np.ndarray | None) -> LossGradient:
    x, y = piece_arrays(piece, config)
    return loss_and_gradient(x, y, weights, bias, activation=config.kernel.activation)


def plan_pieces(config: LearnConfig, pairs: Sequence[Pair], budget: int) -> tuple[tuple[int, int], list[list[Piece]]]:
    """(C, K) and each pair's pieces, from the headers: every pair must have the first one's channels."""
    shapes = [pair_shape(pair, config) for pair in pairs]
    channels, outputs = shapes[0].channels, shapes[0].outputs
    if config.kernel.channels is not None and tuple(config.kernel.channels) != (channels, outputs):
        raise ConfigError(
            f"kernel.channels {list(config.kernel.channels)} but the inputs have {channels} channels and the targets "
            f"{outputs} (input.color and targets.color decide them)"
        )
    for pair, shape in zip(pairs, shapes):
        if (shape.channels, shape.outputs) != (channels, outputs):
            raise InputError(f"pair ({pair.input!r}, {pair.target!r}) has {shape.channels} input and {shape.outputs} "
                             f"target channels but the first pair {channels} and {outputs}; give every pair the same channels",
                             pair.input)
    return (channels, outputs), [pieces(pair, shape, config, budget) for pair, shape in zip(pairs, shapes)]


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
    workers = 1 if config.execution.scheduler == "sync" else resolve_workers(config.execution.workers)
    # shapes and channels checked from the headers before any task runs
    (channels, outputs), planned = plan_pieces(config, pairs, worker_budget(config.execution.memory_budget, workers))
    shape = (outputs, channels, *config.kernel.shape)
    with open_executor(config.execution) as executor:
        if config.method == "lstsq":
            weights, bias, fit = _least_squares(config, planned, shape, executor, reporter, max(1, 4 * executor.workers))
        else:
            weights, bias, fit = _descend(config, planned, shape, executor, reporter)
    reporter.finish()
    tasks = sum(len(found) for found in planned)
    report = {"method": config.method, "pairs": len(pairs), "pairing": pairing, "kernel_shape": list(shape),
              "mode": config.kernel.mode, "correlate": config.kernel.correlate, "bias": config.kernel.bias,
              "l2": config.kernel.l2, **fit, "pieces": tasks, "pairs_read_whole": sum(not found[0].by_region for found in planned),
              "inputs": [p.input for p in pairs[:20]], "targets": [p.target for p in pairs[:20]],
              "seconds": round(time.perf_counter() - started, 3)}
    stored = weights if config.kernel.correlate else _flipped(weights)
    write_outputs(folder, config, stored, bias, report, pairs[:3])
    return LearnSummary(str(folder), len(pairs), config.method, stored, bias, report, time.perf_counter() - started)


def _batches(planned: list[list[Piece]], tasks: int) -> list[tuple[int, list[list[Piece]]]]:
    """(index of the first pair, the pairs' pieces) of consecutive pairs holding about ``tasks`` pieces."""
    batches: list[tuple[int, list[list[Piece]]]] = []
    first, held = 0, 0
    for index, found in enumerate(planned):
        held += len(found)
        if held >= tasks or index == len(planned) - 1:
            batches.append((first, planned[first : index + 1]))
            first, held = index + 1, 0
    return batches


def _least_squares(config: LearnConfig, planned: list[list[Piece]], shape: tuple[int, ...], executor: Any,
                   reporter: Reporter, batch: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    total = NormalParts.zeros(config.kernel.shape, shape[1], shape[0], bias=config.kernel.bias)
    batches = _batches(planned, batch)
    reporter.start(images=len(planned), pending=len(planned), done=0, batches=len(batches),
                   batch_size=batch, scheduler=config.execution.scheduler, dashboard=executor.dashboard)
    for start, chunk in batches:
        began = time.perf_counter()
        tasks = [dask.delayed(piece_parts)(piece, config) for found in chunk for piece in found]
        (parts,) = executor.results(_tree_sum(tasks))
        total = total + parts
        reporter.advance(len(chunk))
        _batch_line(reporter, start, len(chunk), len(planned), began)
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


def _descend(config: LearnConfig, planned: list[list[Piece]], shape: tuple[int, ...], executor: Any,
             reporter: Reporter) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    training, count = config.training, len(planned)
    weights, bias = init_weights(shape, training.seed, bias=config.kernel.bias)
    optimizer = Adam(training.learning_rate) if config.method == "adam" else SGD(training.learning_rate, training.momentum)
    order = np.random.default_rng(training.seed)
    losses: list[float] = []
    reporter.start(images=count * training.epochs, pending=count * training.epochs, done=0,
                   batches=training.epochs, batch_size=training.batch, scheduler=config.execution.scheduler,
                   dashboard=executor.dashboard)
    for epoch in range(training.epochs):
        began = time.perf_counter()
        shuffled = [planned[i] for i in order.permutation(count)]
        epoch_loss = positions = 0.0
        for start in range(0, count, training.batch):
            chunk = shuffled[start : start + training.batch]
            tasks = [dask.delayed(piece_gradient)(piece, config, weights, bias) for found in chunk for piece in found]
            (step,) = executor.results(_tree_sum(tasks))
            scale = 1.0 / max(step.count, 1)
            params = [weights] + ([bias] if bias is not None else [])
            grads = [step.weights * scale] + ([step.bias * scale] if bias is not None else [])
            updated = optimizer.step(params, grads)
            weights, bias = updated[0], (updated[1] if bias is not None else None)
            epoch_loss, positions = epoch_loss + step.loss, positions + step.count
            reporter.advance(len(chunk), loss=step.loss / max(step.count, 1))
        losses.append(epoch_loss / max(positions, 1))
        _batch_line(reporter, epoch * count, count, count * training.epochs, began, loss=losses[-1])
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
