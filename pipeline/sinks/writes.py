"""Chunk writes as dask tasks: each writes whole zarr chunks (or one shard), so no lock is needed."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import zarr

from pipeline.sinks.chunk_files import chunk_writer
from pipeline.sinks.layout import aligned_chunks
from pipeline.sinks.ledger import Progress, record_progress


def write_lazily(result: da.Array, target: zarr.Array, *, start: int = 0, progress: Progress | None = None) -> da.Array:
    """The delayed write of ``result`` into ``target[start:]``, one task per dask chunk, without locks.

    Writing without a lock is safe only when no two tasks touch one zarr chunk (or shard), so
    every dask chunk must cover whole zarr chunks; anything else is refused rather than risk lost
    writes. A sharded array's writes are cut at shard edges, so each shard it touches is written by
    one task, and so are chunks of several images along the image axis: a shard or chunk begun by
    an earlier batch (``start`` inside it) is completed by one task of this one. Writes computed
    together must not share a shard or such a chunk (see batches._write_batch).
    Computing the returned (tiny) array writes the chunks.

    Every chunk is stored, even one that equals the fill value: zarr would otherwise compare each
    chunk it writes with the fill value first, on its one event-loop thread (about 2 ms for a
    2048² float32 chunk and a NaN fill). An all-NaN image is then a chunk on disk instead of a
    missing one; both read the same. (Whole chunks of a local store skip zarr's path altogether:
    see chunk_files.py.)

    ``progress``: where each task records, chunk of images by chunk of images, that its chunks are
    on disk (ledger.py), in column ``progress.column`` + the task's block among ``task_blocks``.
    """
    if hasattr(target, "with_config"):  # zarr >= 3.1; older ones keep comparing
        target = target.with_config({"write_empty_chunks": True})
    result = _aligned(result, target, start)
    if progress is not None and progress.blocks != _blocks_per_chunk_of_images(result):
        raise ValueError(f"the write's blocks {result.chunks[1:]} are not the {progress.blocks} the ledger's progress has")
    grid = target.shards or target.chunks
    for axis, (sizes, step) in enumerate(zip(result.chunks, grid)):
        edges = np.cumsum(sizes)[:-1] + (start if axis == 0 else 0)
        if np.any(edges % step):
            raise ValueError(f"dask chunks {sizes} along axis {axis} split zarr chunks of {step}")
    return result.map_blocks(
        _write_chunks,
        chunks=tuple((1,) * len(sizes) for sizes in result.chunks),
        dtype=bool,
        meta=np.empty((0,) * result.ndim, dtype=bool),
        target=target,
        start=start,
        progress=progress,
    )


def task_blocks(result: da.Array, target: zarr.Array) -> int:
    """How many tasks of ``write_lazily`` write each chunk of images: the blocks across the other axes."""
    return _blocks_per_chunk_of_images(_aligned(result, target, 0))


def _blocks_per_chunk_of_images(result: da.Array) -> int:
    return int(np.prod([len(sizes) for sizes in result.chunks[1:]], dtype=np.int64))


def _aligned(result: da.Array, target: zarr.Array, start: int) -> da.Array:
    """``result`` cut so that each block is whole chunks (or one shard) of ``target[start:]``."""
    if target.shards is not None:  # one task per shard it touches: cut the result at shard edges
        return result.rechunk(
            tuple(aligned_chunks(n, start if axis == 0 else 0, step) for axis, (n, step) in enumerate(zip(result.shape, target.shards)))
        )
    if np.any((np.cumsum(result.chunks[0])[:-1] + start) % target.chunks[0]) or start % target.chunks[0]:
        # groups of images that do not fall on the store's: one task per chunk of images
        return result.rechunk({0: aligned_chunks(result.shape[0], start, target.chunks[0])})
    return result


def _write_chunks(
    block: np.ndarray, *, target: zarr.Array, start: int, progress: Progress | None, block_info: dict
) -> np.ndarray:
    """Write a block zarr chunk by zarr chunk (or shard), each from a contiguous array of exactly its shape.

    zarr hands a value of another shape (a slab of several chunks) or a strided one (a tile cut
    from its halo) to its codecs through extra copies made on its single event-loop thread, which
    then serialises every worker's writes; this makes them here, in the worker, once.
    """
    origin = [begin for begin, _ in block_info[0]["array-location"]]
    origin[0] += start
    # A sharded array's block lies in one shard (write_lazily cut it so): written in one piece,
    # since each piece written into a shard rewrites the whole shard.
    steps = block.shape if target.shards is not None else target.chunks
    pieces = [aligned_chunks(n, o if target.shards is None else 0, step) for n, o, step in zip(block.shape, origin, steps)]
    direct = chunk_writer(target)  # whole chunks of a local store: encoded and written here (chunk_files.py)
    column = _block_column(block_info[0]) if progress is not None else 0
    spans = [list(zip(np.cumsum((0,) + piece[:-1]), piece)) for piece in pieces]
    for first, count in spans[0]:  # chunk of images by chunk of images, each recorded once on disk
        for sizes in itertools.product([(first, count)], *spans[1:]):
            local = tuple(slice(int(begin), int(begin) + size) for begin, size in sizes)
            region = tuple(slice(o + part.start, o + part.stop) for o, part in zip(origin, local))
            values = np.ascontiguousarray(block[local])
            if direct is not None and values.shape == steps and all(part.start % n == 0 for part, n in zip(region, steps)):
                direct(tuple(part.start // n for part, n in zip(region, steps)), values)
            else:
                target[region] = values
        if progress is not None:
            record_progress(progress, origin[0] + int(first), origin[0] + int(first) + int(count), column)
    return np.ones((1,) * block.ndim, dtype=bool)


def _block_column(info: dict) -> int:
    """The task's block among those of its chunk of images (row-major over the other axes)."""
    location, counts = info["chunk-location"][1:], info["num-chunks"][1:]
    return int(np.ravel_multi_index(location, counts)) if location else 0
