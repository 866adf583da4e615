"""Config-driven, streaming batch convolution of image collections (Dask → Zarr)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imageconv-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from pipeline.results import Result, open_result  # noqa: E402 (after __version__, which they record)
