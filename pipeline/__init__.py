"""Config-driven, streaming batch convolution of image collections (Dask → Zarr)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imageconv-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_READERS = ("Result", "open_result")  # pipeline.results, imported on first use: it loads dask and zarr


def __getattr__(name: str):
    if name in _READERS:
        from pipeline import results

        return getattr(results, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
