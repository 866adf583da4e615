"""Config-driven, streaming batch convolution of image collections (Dask → Zarr).

The public API: ``load_job``, ``plan``, ``run`` and ``learn`` (jobs from Python, the functions the
CLI calls). Names are imported when first used, so ``import pipeline`` (and the CLI's start) stays fast.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("imageconv-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name → the module that owns it
_API = {
    "PipelineError": "pipeline.errors",
    "learn": "pipeline.jobs",
    "load_job": "pipeline.jobs",
    "plan": "pipeline.jobs",
    "run": "pipeline.jobs",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
