"""Config-driven, streaming batch convolution of image collections (Dask → Zarr).

The public API: jobs from Python (``load_job``, ``plan``, ``run``, ``learn``: the functions the
CLI calls), the steps of a job as functions of NumPy and Dask arrays (``convolve``, ``correlate``,
``layer``, ``activation``, ``pool``, ``kernel``) and a drop-in for dask-image's
``ndfilters.convolve``/``correlate`` (``pipeline.ndfilters``), and ``open_result`` (a store as a
lazy array, or an xarray DataArray). Names are imported on first use, so
``import pipeline`` (and the CLI's start) stays quick.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("imageconv-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name → the module that defines it
_EXPORTS = {
    **{name: "pipeline.filters" for name in ("activation", "convolve", "correlate", "kernel", "layer", "pool")},
    **{name: "pipeline.jobs" for name in ("learn", "load_job", "plan", "run")},
    **{name: "pipeline.results" for name in ("Result", "open_result")},
    "PipelineError": "pipeline.errors",
}
_SUBMODULES = ("filters", "ndfilters")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return import_module(f"pipeline.{name}")
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
