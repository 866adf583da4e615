"""Reading a result back: the stored array, lazily, with what the store says about it.

:func:`open_result` gives a :class:`Result`: the array of one resolution level as a Dask array,
its axis names, the source of each image, the run's status (as the ledger bears it out) and its
provenance; :meth:`Result.to_xarray` labels it for xarray (an optional extra:
``pip install 'imageconv-pipeline[xarray]'``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import dask.array as da
import numpy as np

from pipeline.errors import InputError
from pipeline.sinks.grouped import member_path
from pipeline.sinks.layout import level_scale
from pipeline.sinks.zarr_store import dimension_names, level_arrays, stored_groups
from pipeline.sinks.zarr_store import open_result as open_stored
from pipeline.storage import local_or_url

if TYPE_CHECKING:
    import xarray

SPACE_AXES = ("z", "y", "x")


@dataclass(frozen=True, repr=False)
class Result:
    """One resolution level of a stored result (see :func:`open_result`).

    Attributes
    ----------
    path : str
        The store (or, for ``input.shapes: group``, the shape group's store) it was read from.
    data : dask.array.Array
        The values, read chunk by chunk only when computed.
    axes : tuple of str
        The name of each axis of ``data``: ``image``, then ``c``, ``z``, ``y``, ``x`` as present.
    sources : tuple of str
        The source file of each image, in the order of the ``image`` axis.
    status : str
        ``complete``, ``running``, ``failed``, or why a store marked complete is not.
    provenance : dict
        What the store records about the run: its config, steps, version and times.
    level : int
        Which resolution level this is (0: full resolution); ``levels`` says how many there are.
    scale : tuple of float
        The physical size of a pixel along each axis at this level (``output.pixel_size``, 1
        where none was given, doubled in y and x per level), in ``unit``.
    """

    path: str
    data: da.Array
    axes: tuple[str, ...]
    sources: tuple[str, ...]
    status: str
    provenance: dict[str, Any] = field(default_factory=dict)
    level: int = 0
    levels: int = 1
    scale: tuple[float, ...] = ()
    unit: str | None = None

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.data.shape))
        return (
            f"Result({self.path!r}, level {self.level} of {self.levels}, {shape} {self.data.dtype}, "
            f"axes {'/'.join(self.axes)}, {len(self.sources)} sources, {self.status})"
        )

    def to_xarray(self) -> xarray.DataArray:
        """The result as a lazy ``xarray.DataArray``, labelled as the store describes it.

        Its dims are :attr:`axes`; the ``sources`` coordinate runs along ``image``; the space axes
        (z, y, x) carry their physical position (index times :attr:`scale`, with ``units`` in
        their attributes, as the OME-NGFF metadata places them); the attributes are the
        provenance. Nothing is read until the values are used.

        Raises
        ------
        ImportError
            When xarray is not installed.
        """
        xr = _xarray()
        coords: dict[str, Any] = {"sources": (self.axes[0], np.asarray(self.sources, dtype=str))}
        for axis, size, step in zip(self.axes, self.data.shape, self.scale):
            if axis in SPACE_AXES:
                coords[axis] = (axis, np.arange(size) * step, {"units": self.unit} if self.unit else {})
        return xr.DataArray(self.data, dims=self.axes, coords=coords, name="result", attrs=dict(self.provenance))


def open_result(
    store: str | os.PathLike[str],
    *,
    level: int = 0,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Result:
    """Open a store written by ``pipeline run`` for reading.

    Parameters
    ----------
    store : str or path-like
        The store's path, or an fsspec URL (``s3://bucket/result.zarr``).
    level : int, optional
        The resolution level (``output.levels``): 0 is full resolution, each next one halves y
        and x.
    group : str, optional
        With ``input.shapes: group``, the shape group to read (e.g. ``"48x64"``); ``pipeline
        inspect`` lists them.
    storage_options : mapping, optional
        fsspec options for a URL (endpoint, credentials), as in ``output.storage_options``.

    Returns
    -------
    Result
        The level's values as a lazy Dask array, with its axes, sources, status and provenance;
        ``Result.to_xarray()`` gives an ``xarray.DataArray``.

    Raises
    ------
    InputError
        When the store, the group or the level does not exist, or the store is not one of ours.

    Examples
    --------
    >>> import tempfile, pipeline
    >>> store = tempfile.mkdtemp() + "/edges.zarr"
    >>> _ = pipeline.run({"input": {"paths": "data/samples/0[12]*.jpg"}, "output": {"path": store},
    ...                   "steps": [{"convolve": {"kernel": "edge"}}]})
    >>> result = pipeline.open_result(store)
    >>> result.axes, result.data.shape, result.status
    (('image', 'y', 'x'), (2, 512, 512), 'complete')
    >>> edges = result.to_xarray()
    >>> edges.dims, edges.sources.values[1].endswith("02-camera.jpg")
    (('image', 'y', 'x'), True)
    """
    path = local_or_url(os.fspath(store))
    if group is not None:
        groups = stored_groups(path, storage_options)
        if groups is None:
            raise InputError(f"store {path!r} holds one result, not shape groups; leave out group={group!r}")
        if group not in groups:
            raise InputError(f"store {path!r} has no shape group {group!r}; it has {', '.join(groups) or 'none yet'}")
        path = member_path(path, group)
    stored = open_stored(path, storage_options=storage_options)
    arrays = level_arrays(stored.group)
    if not 0 <= level < len(arrays):
        raise InputError(f"store {path!r} has no level {level}: it has levels 0 to {len(arrays) - 1} (output.levels)")
    array = arrays[level]
    axes = dimension_names(array) or tuple(stored.provenance.get("axes", ()))
    output = stored.provenance.get("config", {}).get("output", {})
    return Result(
        path=path,
        data=da.from_zarr(array),
        axes=axes,
        sources=tuple(stored.sources),
        status=stored.trusted_status,
        provenance=stored.provenance,
        level=level,
        levels=len(arrays),
        scale=tuple(level_scale(axes, output.get("pixel_size"), level)),
        unit=output.get("unit"),
    )


def _xarray() -> Any:
    try:
        import xarray
    except ImportError:
        raise ImportError(
            "Result.to_xarray needs xarray, which is not installed: pip install 'imageconv-pipeline[xarray]'"
        ) from None
    return xarray
