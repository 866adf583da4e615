"""One protocol for every step: what it is called, records, reaches, makes of its input, and computes.

A step is built from its validated config (``build(spec)`` in its module, listed in config's table
of step kinds) and declares:

* its ``name`` (logs, errors, ``pipeline plan``) and ``provenance`` (what the store records);
* its ``reach``: the halo per spatial axis a block needs so that its samples are exact (0 for
  pointwise steps), for steps that keep the image's size;
* its ``output``: the per-image shape and axes it makes of its input's (``valid``/``full`` shrink or
  grow y and x, ``layer`` sets the channel axis, ``pool`` divides y and x);
* the ``value_range`` of its values for inputs in a range (so integer outputs are cast safely);
* whether it ``keeps_channels``: its output's channel c is still its input's channel c (so an
  input's channel names and colours still apply), or it makes new ones (a layer's feature maps);
* its ``block`` function: NumPy block → NumPy block, tested alone against an oracle;
* how it takes part in the graph (``fusion``): ``pointwise`` and ``neighbourhood`` steps run inside
  one overlapped pass with their neighbours; a ``resize`` step (its output's size differs) ends a
  pass; a ``whole`` step needs each image at once (``normalize``).

The chain (chain.py), not the step, decides how neighbouring steps share a pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import dask.array as da
import numpy as np

Fusion = Literal["pointwise", "neighbourhood", "resize", "whole"]


@dataclass(frozen=True)
class ImageShape:
    """One image's shape and axis names, the image axis left out: e.g. (3, 512, 512), ("c", "y", "x")."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    # Every image is always one block, whatever the tiling or memory budget (files only ever read
    # whole): engines whose bytes depend on where a block starts may then run (strategies' box).
    whole: bool = field(default=False, compare=False)

    @property
    def spatial_ndim(self) -> int:
        return sum(axis in ("z", "y", "x") for axis in self.axes)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1


class Step(ABC):
    """A step of a job: see the module docstring for what each member declares."""

    kind: ClassVar[str]
    fusion: ClassVar[Fusion] = "pointwise"
    # True when the step leaves every image in [0, 1], so an integer output spans its full range.
    unit_range: ClassVar[bool] = False
    # False when the output's channels are new ones (a layer's maps): the input's names no longer apply.
    keeps_channels: ClassVar[bool] = True

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def provenance(self) -> dict[str, Any]: ...

    def reach(self, spatial_ndim: int) -> tuple[int, ...]:
        """Samples a block needs on each side, per spatial axis (the last axis last)."""
        return (0,) * spatial_ndim

    def output(self, image: ImageShape) -> ImageShape:
        """The image this step makes of ``image``: the same, unless the step says otherwise."""
        return image

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        return low, high

    @abstractmethod
    def block(self, block: np.ndarray, image: ImageShape) -> np.ndarray:
        """The step on one block of images (leading image axis), whose per-image layout is ``image``."""

    def takes_raw(self, ndim: int, image: ImageShape, dtype: np.dtype) -> bool:
        """Whether ``block(..., compute=dtype)`` converts a block of raw integers (a volume's slab in
        the type its file stores) as it reads it, so that the first pass is handed them unconverted."""
        return False

    def check(self, image: ImageShape) -> None:
        """Refuse, with a ValueError or KernelError in the config's words, an input the step cannot take."""

    def strategy_of(self, ndim: int, image: ImageShape, dtype: np.dtype) -> tuple[str, bool]:
        """How the step computes blocks of ``ndim`` axes (for `pipeline plan`), and whether its bytes
        are the same whatever the block size."""
        return "-", True

    def strategy_record(self, ndim: int, image: ImageShape, dtype: np.dtype) -> dict[str, Any]:
        """What provenance adds to the strategy's name (a convolution's separable residual)."""
        return {}

    def apply(self, array: da.Array, image: ImageShape) -> da.Array:
        """The step on a lazy (image, …) array: the block function on every block.

        Right for steps whose blocks need nothing from their neighbours and keep the shape; others
        override it.
        """
        return array.map_blocks(self.block, image, dtype=array.dtype, meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def blockwise_chunks(array: da.Array, image: ImageShape, out: ImageShape, *, whole: int = 0) -> tuple[da.Array, tuple]:
    """The array (channel-like axes whose size the step changes taken whole) and the output's chunks.

    An axis that keeps its size keeps its chunks; one that changes (a layer's channels, or one of
    the last ``whole`` axes, which the caller computes whole) becomes one chunk of the new size.
    """
    images = array.ndim - len(image.shape)
    changed = {images + i for i, (n, m) in enumerate(zip(image.shape, out.shape)) if n != m or i >= len(image.shape) - whole}
    array = array.rechunk({axis: -1 for axis in changed if len(array.chunks[axis]) > 1})
    chunks = (*array.chunks[:images], *(
        (n,) if images + i in changed else array.chunks[images + i] for i, n in enumerate(out.shape)
    ))
    return array, chunks
