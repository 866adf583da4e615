"""What ``convolve`` and ``layer`` share: a window slid over the image, with a mode, a border and a stride.

A windowed step computes one thing per block: the ``same``-sized correlation of the block with the
step's weights under a border rule (``same_block``). Every mode and stride reduces to it:

* ``same`` (stride 1) keeps it, and needs a halo of the window's reach: a ``neighbourhood`` step,
  fused with its neighbours into one overlapped pass by the chain;
* ``valid`` crops it to where the window lies inside the image, ``full`` computes it on the image
  padded with ``m - 1`` zeros first (the seed's definition, as scipy.signal), and a stride ``s``
  keeps every ``s``-th sample of the stride-1 result (PyTorch's definition): ``resize`` steps.

When an image is one block (the default), a resize is one blockwise task. Otherwise the image is
padded (``full``), filtered by an overlapped pass whose border rule the crop removes again, and
cropped and strided lazily: exact for any chunking.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import dask.array as da
import numpy as np

from pipeline.steps.base import Fusion, ImageShape, Step, blockwise_chunks


class WindowedStep(Step):
    """A step sliding weights of ``window`` (per spatial axis) over the image."""

    mode: str
    boundary: str
    cval: float
    stride: tuple[int, ...]

    @property
    @abstractmethod
    def window(self) -> tuple[int, ...]:
        """The window's size per spatial axis it filters (the last axes)."""

    @abstractmethod
    def same_block(self, block: np.ndarray, image: ImageShape, *, keep: tuple[slice, ...] | None = None,
                   periodic: bool = False, origin: tuple[int, ...] | None = None) -> np.ndarray:
        """The same-sized correlation of a block of images (leading image axis), ``keep`` of it.

        Under the step's border rule for ``same``; for ``valid``/``full`` under any rule (what it
        touches is cropped). ``periodic``: the block's halo came from the far side (``wrap``);
        ``origin``: where the block's first sample lies in the image.
        """

    @property
    def fusion(self) -> Fusion:  # type: ignore[override]
        return "neighbourhood" if self.mode == "same" and all(s == 1 for s in self.stride) else "resize"

    @property
    def wraps(self) -> bool:
        return self.mode == "same" and self.boundary == "wrap"

    def reach(self, spatial_ndim: int) -> tuple[int, ...]:
        own = tuple(m // 2 for m in self.window)
        return ((0,) * spatial_ndim + own)[-spatial_ndim:] if spatial_ndim >= len(own) else own[-spatial_ndim:]

    def output(self, image: ImageShape) -> ImageShape:
        """y and x (the axes the window covers) grown or shrunk by the mode, divided by the stride."""
        spatial = len(self.window)
        grown = {"same": lambda n, m: n, "valid": lambda n, m: n - m + 1, "full": lambda n, m: n + m - 1}[self.mode]
        stride = (1,) * (spatial - len(self.stride)) + tuple(self.stride)[-spatial:]
        sizes = tuple(-(-grown(n, m) // s) for n, m, s in zip(image.shape[-spatial:], self.window, stride))
        return ImageShape((*image.shape[:-spatial], *sizes), image.axes)

    def check(self, image: ImageShape) -> None:
        """``valid`` keeps only positions where the window fits: it must fit somewhere."""
        if len(self.window) > image.spatial_ndim:
            raise self.error(
                f"kernel has {len(self.window)} dimensions but the images have only {image.spatial_ndim} "
                f"spatial dimensions; use a kernel with at most {image.spatial_ndim}"
            )
        sizes = image.shape[-len(self.window):]
        if self.mode == "valid" and any(m > n for n, m in zip(sizes, self.window)):
            raise self.error(
                f"kernel of shape {tuple(self.window)} is larger than the image {tuple(sizes)} for mode 'valid' "
                f"(which keeps only positions where the kernel fits); use mode 'same' or 'full', or a smaller kernel"
            )

    @staticmethod
    def error(message: str) -> Exception:
        from pipeline.errors import KernelError

        return KernelError(message)

    def block(self, block: np.ndarray, image: ImageShape, keep: tuple[slice, ...] | None = None,
              periodic: bool = False, origin: tuple[int, ...] | None = None, compute: np.dtype | None = None
              ) -> np.ndarray:
        """The step on a whole block: pad for ``full``, the same-sized correlation, crop, stride.

        ``compute``: the block holds raw integers to be computed in that dtype (``takes_raw``, which
        only a ``same`` convolution says); ``same_block`` converts them as it reads them.
        """
        spatial = len(self.window)
        lead = block.ndim - spatial
        if compute is not None and self.mode != "same":
            block = block.astype(compute)
        if self.mode == "same":
            raw = {} if compute is None else {"compute": compute}
            out = self.same_block(block, image, keep=keep, periodic=periodic, origin=origin, **raw)
        else:
            if self.mode == "full":
                block = np.pad(block, ((0, 0),) * lead + tuple((m - 1, m - 1) for m in self.window))
            out = self.same_block(block, image, origin=origin)
            out = out[(Ellipsis, *(slice(m // 2, m // 2 + n - m + 1) for n, m in zip(block.shape[lead:], self.window)))]
        return out[(Ellipsis, *(slice(None, None, s) for s in self.stride))] if any(s > 1 for s in self.stride) else out

    def apply_resize(self, array: da.Array, image: ImageShape, overlapped) -> da.Array:
        """A resize on a lazy array: one task per block when images are whole, else pad, overlap, crop, stride.

        ``overlapped(array, steps, image)`` is the chain's overlapped pass, used for the filtering.
        """
        spatial = len(self.window)
        out = self.output(image)
        lead = array.ndim - spatial
        if all(len(chunks) == 1 for chunks in array.chunks[lead:]):
            array, chunks = blockwise_chunks(array, image, out, whole=spatial)
            return array.map_blocks(
                self.block, image, chunks=chunks, dtype=array.dtype, meta=np.empty((0,) * len(chunks), dtype=array.dtype)
            )
        if self.mode == "full":
            array = da.pad(array, ((0, 0),) * lead + tuple((m - 1, m - 1) for m in self.window), mode="constant")
        same = overlapped(array, [self.as_same()], image)
        sizes = array.shape[lead:]
        crop = tuple(slice(m // 2, m // 2 + n - m + 1) for n, m in zip(sizes, self.window)) if self.mode != "same" else ()
        result = same[(Ellipsis, *crop)] if crop else same
        return result[(Ellipsis, *(slice(None, None, s) for s in self.stride))] if any(s > 1 for s in self.stride) else result

    def as_same(self) -> WindowedStep:
        """This step's filtering alone (same size, stride 1): what a resize on chunked images overlaps."""
        return _Filtering(self)

    def describe_options(self) -> dict[str, Any]:
        return {"mode": self.mode, "boundary": self.boundary, "cval": self.cval, "stride": list(self.stride)}


class _Filtering(WindowedStep):
    """The same-sized correlation of a ``valid``/``full``/strided step, as a neighbourhood step."""

    kind = "filtering"

    def __init__(self, step: WindowedStep) -> None:
        self.step = step
        # a strided `same` step keeps its border rule (a `wrap` needs the far side's halo); what
        # valid/full touch beyond the image is cropped, so any rule does
        self.boundary, self.cval = (step.boundary, step.cval) if step.mode == "same" else ("reflect", 0.0)
        self.mode, self.stride = "same", (1,) * len(step.stride)

    @property
    def name(self) -> str:
        return self.step.name

    def provenance(self) -> dict[str, Any]:
        return self.step.provenance()

    @property
    def window(self) -> tuple[int, ...]:
        return self.step.window

    def output(self, image: ImageShape) -> ImageShape:
        filtered = self.step.output(image)  # the channels the step makes, at the input's size
        return ImageShape((*filtered.shape[: len(filtered.shape) - len(self.window)], *image.shape[-len(self.window):]), filtered.axes)

    def same_block(self, block: np.ndarray, image: ImageShape, *, keep: tuple[slice, ...] | None = None,
                   periodic: bool = False, origin: tuple[int, ...] | None = None) -> np.ndarray:
        return self.step.same_block(block, image, keep=keep, periodic=periodic, origin=origin)

    def strategy_of(self, ndim: int, image: ImageShape, dtype: np.dtype) -> tuple[str, bool]:
        return self.step.strategy_of(ndim, image, dtype)

    def strategy_record(self, ndim: int, image: ImageShape, dtype: np.dtype) -> dict[str, Any]:
        return self.step.strategy_record(ndim, image, dtype)
