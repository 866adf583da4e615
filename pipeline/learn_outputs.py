"""What a fit leaves in its folder: the kernel in the layout the steps read, a job applying it, a report, a picture.

* ``kernel.npy`` — one kernel (1 to 3 axes) for a ``convolve`` step when the fit maps one channel to
  one, else the (K, C, *kernel) bank for a ``layer`` step; ``bias.npy`` beside it when fitted;
* ``job.yaml`` — ``pipeline run`` applying it to the inputs' paths (edit them for new images), with
  the fit's mode, orientation (``correlate``) and, for a non-linear fit, its activation;
* ``report.json`` — the fit: R², RMSE, condition number and rank (lstsq) or the loss curve (sgd,
  adam), the method, the pairing and the data;
* ``kernel.png`` — the kernel(s) as images, next to a few inputs, targets and predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import imageio.v3 as iio
import numpy as np
import yaml
from scipy import signal

from pipeline.errors import OutputError
from pipeline.learn_pairs import example
from pipeline.sinks.export import to_displayable

if TYPE_CHECKING:
    from pipeline.learn_config import LearnConfig
    from pipeline.learn_pairs import Pair

CELL = 160


def write_outputs(folder: Path, config: LearnConfig, weights: np.ndarray, bias: np.ndarray | None,
                  report: dict[str, Any], examples: Sequence[Pair]) -> None:
    # one channel to one, no bias, no activation: a convolve step; else a layer with the whole bank
    single = weights.shape[:2] == (1, 1) and bias is None and config.kernel.activation is None
    kernel = weights[0, 0] if single else weights
    try:
        np.save(folder / "kernel.npy", kernel)
        if bias is not None:
            np.save(folder / "bias.npy", bias)
        (folder / "job.yaml").write_text(yaml.safe_dump(_job(folder, config, single, bias is not None), sort_keys=False), encoding="utf-8")
        (folder / "report.json").write_text(json.dumps(_plain(report), indent=2), encoding="utf-8")
        iio.imwrite(folder / "kernel.png", _picture(config, weights, bias, examples, report))
    except OSError as exc:
        raise OutputError(f"cannot write the fit into {str(folder)!r}: {exc.strerror or exc}") from None


def _job(folder: Path, config: LearnConfig, single: bool, has_bias: bool) -> dict[str, Any]:
    kernel = str((folder / "kernel.npy").resolve())
    options = {"mode": config.kernel.mode, "correlate": config.kernel.correlate}
    if config.kernel.mode == "same":
        options["boundary"] = config.kernel.boundary
    if single:
        steps: list[dict[str, Any]] = [{"convolve": {"kernel": kernel, **options}}]
    else:
        layer = {"weights": kernel, **({"bias": str((folder / "bias.npy").resolve())} if has_bias else {}), **options}
        steps = [{"layer": layer}]
    if config.kernel.activation:
        steps.append({"activation": config.kernel.activation})
    inputs = config.inputs.model_dump(mode="json", exclude_defaults=True)
    return {"input": inputs, "steps": steps, "output": {"path": str((folder / "result.zarr").resolve()), "dtype": "float64"}}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value.item() if isinstance(value, np.generic) else value


def _picture(config: LearnConfig, weights: np.ndarray, bias: np.ndarray | None, examples: Sequence[Pair],
             report: dict[str, Any]) -> np.ndarray:
    """Row 1: the kernels (first channel of each output, nearest-neighbour enlarged); then one row per
    example: input, target, prediction (the middle of each pair); for a descent, the loss curve in the last
    cell of row 1."""
    kernels = [weights[k, 0] if weights.ndim == 4 else weights[k, 0, weights.shape[2] // 2] for k in range(min(3, weights.shape[0]))]
    rows = [[_enlarged(kernel) for kernel in kernels] + ([_curve(report["loss"])] if "loss" in report else [])]
    for pair in examples:
        x, y = example(pair, config)  # the windows of the counted positions, and their targets
        correlation = weights if config.kernel.correlate else np.flip(weights, axis=tuple(range(2, weights.ndim)))
        prediction = sum(signal.correlate(x[c], correlation[0, c], mode="valid") for c in range(x.shape[0]))
        x = x[(slice(None), *(slice(m // 2, m // 2 + n) for m, n in zip(config.kernel.shape, y.shape[1:])))]
        prediction = prediction + (0.0 if bias is None else bias[0])
        if config.kernel.activation == "relu":
            prediction = np.maximum(prediction, 0)
        rows.append([_fitted(_middle(x[0]), "minmax"), _fitted(_middle(y[0])), _fitted(_middle(prediction))])
    width = max(len(row) for row in rows)
    sheet = np.full((len(rows) * CELL, width * CELL, 3), 32, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            h, w = cell.shape[:2]
            top, left = r * CELL + (CELL - h) // 2, c * CELL + (CELL - w) // 2
            sheet[top : top + h, left : left + w] = cell
    return sheet


def _middle(image: np.ndarray) -> np.ndarray:
    return image[image.shape[0] // 2] if image.ndim == 3 else image


def _gray(image: np.ndarray, stretch: str = "minmax") -> np.ndarray:
    pixels = to_displayable(np.nan_to_num(image.astype(np.float64)), fmt="png", normalize=stretch)
    return np.repeat(pixels[..., np.newaxis], 3, axis=-1)


def _enlarged(kernel: np.ndarray) -> np.ndarray:
    kernel = kernel if kernel.ndim == 2 else kernel[np.newaxis]
    scale = max(1, (CELL - 8) // max(kernel.shape))
    return cv2.resize(_gray(kernel), (kernel.shape[1] * scale, kernel.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _fitted(image: np.ndarray, stretch: str = "percentile") -> np.ndarray:
    """Targets and predictions between their 1st and 99th percentiles, as preview draws results."""
    image = image if image.ndim == 2 else image[np.newaxis]
    scale = (CELL - 8) / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(_gray(image, stretch), size, interpolation=cv2.INTER_AREA)


def _curve(losses: Sequence[float]) -> np.ndarray:
    """The loss per epoch on a log scale, white on dark grey."""
    canvas = np.full((CELL - 8, CELL - 8, 3), 48, dtype=np.uint8)
    values = np.log10(np.maximum(np.asarray(losses, dtype=np.float64), 1e-300))
    low, high = values.min(), values.max()
    span = high - low if high > low else 1.0
    points = [(int(i * (canvas.shape[1] - 1) / max(1, len(values) - 1)), int((high - v) / span * (canvas.shape[0] - 1))) for i, v in enumerate(values)]
    for a, b in zip(points, points[1:] or points):
        cv2.line(canvas, a, b, (255, 255, 255), 1)
    return canvas
