"""The ``layer`` step: a bank of K kernels over C input channels into K output channels, plus a bias.

Weights are (K, C, kh, kw) — the layout of a PyTorch ``Conv2d.weight``, so
``np.save("w.npy", conv.weight.detach().numpy())`` works as it is — or (K, kh, kw) for gray input,
(K, C, kd, kh, kw) for volumes. Output channel k is the sum over c of the cross-correlation of
input channel c with ``weights[k, c]`` (``correlate: false`` flips the kernels: true convolution),
plus ``bias[k]``. Modes, borders and strides are those of ``convolve`` (windowed.py); how a bank
is computed (per-kernel OpenCV filters, im2col + BLAS, FFT) is chosen by bank.py's cost model.

Weights come from a ``.npy`` file, from one array of an ``.npz`` holding several (a state dict
saved with ``np.savez``: ``name: conv1`` picks ``conv1.weight`` and ``conv1.bias``), inline, or from
a built-in bank (banks.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline.errors import KernelError
from pipeline.steps.bank import Bands, BankStrategy, correlate_bank, choose_bank_strategy
from pipeline.steps.banks import BANKS, build_bank
from pipeline.steps.base import ImageShape
from pipeline.steps.convolve import kernel_range
from pipeline.steps.kernels import check_matrix, load_kernel_file
from pipeline.steps.windowed import WindowedStep

if TYPE_CHECKING:
    from pipeline.step_kinds import LayerSpec

# Weights with more values than this are recorded in provenance by their sha256, not in full.
RECORDED_VALUES = 4096


class LayerStep(WindowedStep):
    kind = "layer"
    adds_channels = True  # gray images get a channel axis (of 1) before the bank
    keeps_channels = False  # channel k is the k-th kernel's map, whatever the input's channels were

    def __init__(self, weights: np.ndarray, bias: np.ndarray | None, *, source: str, mode: str = "same",
                 boundary: str = "reflect", cval: float = 0.0, correlate: bool = True, stride: tuple[int, ...] = (1,),
                 strategy: str = "auto", any_channels: bool = False) -> None:
        self.any_channels = any_channels  # a built-in bank: on C channels it sees their mean
        self._set_weights(weights)
        self.bias = bias
        self.source = source
        self.mode, self.boundary, self.cval, self.stride = mode, boundary, cval, tuple(stride)
        self.correlate, self.strategy = correlate, strategy

    def _set_weights(self, weights: np.ndarray) -> None:
        self.weights = weights  # (K, C, *window), as given (correlation orientation when correlate)
        self._plans: dict[str, BankStrategy] = {}

    @property
    def _kernels(self) -> np.ndarray:
        """The weights in correlation orientation (flipped for ``correlate: false``)."""
        if self.correlate:
            return self.weights
        return np.ascontiguousarray(self.weights[(slice(None), slice(None), *(slice(None, None, -1),) * (self.weights.ndim - 2))])

    @property
    def name(self) -> str:
        return f"layer {self.source} ({self.weights.shape[0]} channels)"

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(self.weights.shape[2:])

    def provenance(self) -> dict[str, Any]:
        return {
            "step": "layer", "weights": _recorded(self.weights, self.source), "bias": None if self.bias is None else self.bias.tolist(),
            "correlate": self.correlate, **self.describe_options(),
        }

    def output(self, image: ImageShape) -> ImageShape:
        resized = super().output(image)
        channels = ("c",) if "c" not in image.axes else ()
        shape = (self.weights.shape[0], *resized.shape[-len(self.window):])
        axes = (*channels, *image.axes)
        return ImageShape(shape, axes[-len(shape):])

    def check(self, image: ImageShape) -> None:
        super().check(image)
        channels = image.channels
        if self.any_channels and self.weights.shape[1] != channels:  # the mean of the channels
            self._set_weights(np.repeat(self.weights[:, :1], channels, axis=1) / channels)
        if self.weights.shape[1] != channels:
            raise KernelError(
                f"weights of shape {list(self.weights.shape)} take {self.weights.shape[1]} input channels but the "
                f"images have {channels}; give weights of shape [{self.weights.shape[0]}, {channels}, "
                f"{', '.join(map(str, self.window))}] (or set input.color to match)"
            )
        if len(self.window) != image.spatial_ndim:
            raise KernelError(
                f"weights of shape {list(self.weights.shape)} have {len(self.window)} spatial axes but the images "
                f"have {image.spatial_ndim}; use (K, C, kh, kw) for images, (K, C, kd, kh, kw) for volumes"
            )

    def bank_strategy(self, dtype: np.dtype) -> BankStrategy:
        key = np.dtype(dtype).str
        if key not in self._plans:
            self._plans[key] = choose_bank_strategy(self._kernels, self.bias, dtype=np.dtype(dtype), strategy=self.strategy)
        return self._plans[key]

    def strategy_of(self, ndim: int, image: ImageShape, dtype: np.dtype) -> tuple[str, bool]:
        plan = self.bank_strategy(dtype)
        return plan.describe(), plan.reproducible

    def same_block(self, block: np.ndarray, image: ImageShape, *, keep: tuple[slice, ...] | None = None,
                   periodic: bool = False, origin: tuple[int, ...] | None = None) -> np.ndarray:
        """Each image of the block (image, C, *spatial) through the bank; ``keep`` cut from the result.

        ``origin`` lines the bank's BLAS calls up with the image, so tiles give the whole image's bytes.
        """
        plan, options = self._bank(block, periodic, origin)
        images = [correlate_bank(one, plan, **options) for one in block]
        # one image per block (the usual case) takes no copy: stacking 16 maps of 2048² costs 0.4 s
        out = images[0][np.newaxis] if len(images) == 1 else np.stack(images)
        if keep is None:
            return out
        return out[(keep[0], slice(None), *keep[2:])]

    def same_bands(self, block: np.ndarray, image: ImageShape, take: Callable[[int, int, np.ndarray], None], *,
                   rows: int = 1, reduce: Callable[[np.ndarray], np.ndarray] | None = None,
                   keep: tuple[slice, ...] | None = None, periodic: bool = False,
                   origin: tuple[int, ...] | None = None) -> None:
        """``same_block``'s result handed to ``take(index, first_row, band)`` band by band (bank.Bands),
        ``index`` counting the images kept; each band but the last a multiple of ``rows`` rows,
        shrunk by ``reduce`` (a max or min pool) first."""
        images = range(block.shape[0])[keep[0]] if keep else range(block.shape[0])
        window = tuple(keep[-len(self.window):]) if keep else ()
        plan, options = self._bank(block, periodic, origin)
        for index, one in enumerate(images):
            bands = Bands(lambda first, band, index=index: take(index, first, band), rows=rows, window=window, reduce=reduce)
            correlate_bank(block[one], plan, bands=bands, **options)

    def bands_without_negative_zeros(self, dtype: np.dtype) -> bool:
        """Whether the bands ``same_bands`` hands over hold no -0.0: BLAS sums from +0.0 and the
        bias added keeps it so (per-kernel filters and FFTs may make a -0.0)."""
        return self.bank_strategy(dtype).strategy == "gemm" and len(self.window) == 2

    def _bank(self, block: np.ndarray, periodic: bool, origin: tuple[int, ...] | None) -> tuple[BankStrategy, dict[str, Any]]:
        """The bank for a block's dtype and correlate_bank's options (border rule, where the block starts)."""
        edge = "reflect" if periodic or self.mode != "same" else self.boundary
        cval = self.cval if edge == "constant" else 0.0
        start = tuple(origin[-len(self.window):]) if origin else ()
        options = {"edge_mode": edge, "cval": cval, "start": start}
        return self.bank_strategy(block.dtype), options

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        outside = {"full": 0.0, "same": self.cval if self.boundary == "constant" else None}.get(self.mode)
        ranges = [
            kernel_range(self.weights[k], low, high, outside, 0.0 if self.bias is None else float(self.bias[k]))
            for k in range(self.weights.shape[0])
        ]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _recorded(weights: np.ndarray, source: str) -> dict[str, Any]:
    record: dict[str, Any] = {"source": source, "shape": list(weights.shape)}
    if weights.size <= RECORDED_VALUES:
        record["values"] = weights.tolist()
    else:
        record["sha256"] = hashlib.sha256(np.ascontiguousarray(weights, dtype="<f8").tobytes()).hexdigest()
    return record


def build(spec: LayerSpec) -> LayerStep:
    """The step of a validated ``layer:`` mapping: weights and bias loaded and checked."""
    weights, bias, source = _load(spec)
    if weights.ndim == 3:
        weights = weights[:, np.newaxis]  # (K, kh, kw): a bank for gray input
    if weights.ndim not in (4, 5):
        raise KernelError(
            f"layer weights have shape {list(weights.shape)}; give (K, C, kh, kw), (K, kh, kw) for gray images, "
            f"or (K, C, kd, kh, kw) for volumes"
        )
    if bias is not None and bias.shape != (weights.shape[0],):
        raise KernelError(f"layer bias has shape {list(bias.shape)} but the weights have {weights.shape[0]} output channels; give ({weights.shape[0]},)")
    stride = (spec.stride,) * (weights.ndim - 2) if isinstance(spec.stride, int) else tuple(spec.stride)
    if len(stride) != weights.ndim - 2:
        stride = (1,) * (weights.ndim - 2 - len(stride)) + stride
    return LayerStep(weights, bias, source=source, mode=spec.mode, boundary=spec.boundary, cval=spec.cval,
                     correlate=spec.correlate, stride=stride, strategy=spec.strategy, any_channels=source in BANKS)


def _load(spec: LayerSpec) -> tuple[np.ndarray, np.ndarray | None, str]:
    bias = None if spec.bias is None else _array(spec.bias, "layer bias")
    if not isinstance(spec.weights, str):
        return check_matrix(spec.weights, what="inline layer weights", max_ndim=5), bias, "inline"
    if spec.weights in BANKS:
        bank = build_bank(spec.weights, spec.params)
        return bank, bias, spec.weights
    if spec.weights.lower().endswith(".npz"):
        weights, bias = _from_npz(spec.weights, spec.name, bias)
        return weights, bias, f"{spec.weights}:{spec.name}" if spec.name else spec.weights
    if spec.weights.lower().endswith(".npy"):
        return load_kernel_file(spec.weights, max_ndim=5), bias, spec.weights
    raise KernelError(
        f"layer weights {spec.weights!r}: give a .npy or .npz file, an inline matrix, or a built-in bank ({', '.join(BANKS)})"
    )


def _array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, str):
        return load_kernel_file(value, max_ndim=1)
    return check_matrix(value, what=what, max_ndim=1)


def _from_npz(path: str, name: str | None, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``NAME.weight`` (and ``NAME.bias`` unless a bias is given) from a state dict saved as .npz."""
    file = Path(path)
    if not file.is_file():
        raise KernelError(f"layer weights file {path!r} does not exist (resolved against {Path.cwd()})")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError) as exc:
        raise KernelError(f"layer weights file {path!r} cannot be read: {exc}") from None
    wanted = f"{name}.weight" if name else None
    if wanted is None:
        weights = [key for key in arrays if key.endswith("weight")]
        if len(weights) != 1:
            raise KernelError(f"layer weights file {path!r} holds {', '.join(sorted(arrays))}; name the layer with name: (e.g. name: conv1)")
        wanted = weights[0]
        name = wanted[: -len("weight")].rstrip(".") or None
    if wanted not in arrays:
        raise KernelError(f"layer weights file {path!r} has no array {wanted!r}; it holds {', '.join(sorted(arrays))}")
    weights = check_matrix(arrays[wanted], what=f"{path}:{wanted}", max_ndim=5)
    key = f"{name}.bias" if name else "bias"
    if bias is None and key in arrays:
        bias = check_matrix(arrays[key], what=f"{path}:{key}", max_ndim=1)
    return weights, bias
