"""Whole chunks of a local Zarr v3 array, encoded in the writing worker and written straight to their files.

``array[region] = block`` hands each chunk to zarr's event loop, which passes it to a thread of its
own to compress and to another to write: three hand-overs per chunk, with two dask workers
waiting on one loop. On 48 photographs of 2048² (float32, blosc-lz4) that was half of the
workers' time, about 30 ms a chunk against 16 ms for the compression and the write themselves.
Here the worker compresses with the same numcodecs codec zarr would use and writes the file, so
the bytes on disk are the ones zarr writes (``tests/test_chunk_files.py`` compares them file by
file), and the array's metadata is untouched.

Only what is plainly the same is written this way: a chunk that lies wholly inside the array, of
an unsharded v3 array in a ``LocalStore``, whose codecs are ``bytes`` and at most one of
``blosc`` and ``zstd``. Anything else (edge chunks, which zarr pads with the fill value; shards;
Zarr v2; object stores) goes through zarr. A file is written under a temporary ``.partial`` name
and renamed, as zarr's ``LocalStore`` does, so a killed run leaves a whole chunk or none, and
``remove_partial_writes`` clears the rest.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
from zarr.storage import LocalStore

ChunkWriter = Callable[[tuple[int, ...], np.ndarray], None]
BLOSC_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def chunk_writer(array: zarr.Array) -> ChunkWriter | None:
    """``write(chunk_coords, values)`` for whole chunks of ``array``, or None where zarr must write.

    ``values`` must have the chunk's shape and the array's dtype.
    """
    store_path = array.store_path
    metadata = array.metadata
    if not isinstance(store_path.store, LocalStore) or metadata.zarr_format != 3 or array.shards is not None:
        return None
    codecs = metadata.codecs
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    compress = _compressor(codecs[1]) if len(codecs) == 2 else (lambda raw: raw)
    if compress is None:
        return None
    dtype = np.dtype(array.dtype)
    endian = codecs[0].endian
    if dtype.itemsize > 1:  # the byte order the bytes codec stores
        dtype = dtype.newbyteorder("<" if endian is None or endian.value == "little" else ">")
    folder = Path(store_path.store.root) / store_path.path if store_path.path else Path(store_path.store.root)
    chunks = tuple(array.chunks)

    def write(coords: tuple[int, ...], values: np.ndarray) -> None:
        if values.shape != chunks:
            raise ValueError(f"a chunk of shape {chunks} was written with shape {values.shape}")
        raw = np.ascontiguousarray(values, dtype=dtype)
        _put(folder / metadata.encode_chunk_key(coords), compress(memoryview(raw).cast("B")))

    return write


def _compressor(codec: object) -> Callable[[memoryview], bytes] | None:
    """The numcodecs codec zarr's own ``blosc``/``zstd`` codec wraps, from its stored configuration."""
    if isinstance(codec, BloscCodec):
        config = codec.to_dict()["configuration"]
        blosc = Blosc(
            cname=config["cname"], clevel=config["clevel"], shuffle=BLOSC_SHUFFLES[config["shuffle"]],
            blocksize=config["blocksize"], typesize=config["typesize"],
        )
        return blosc.encode
    if isinstance(codec, ZstdCodec):
        config = codec.to_dict()["configuration"]
        return Zstd(level=config["level"], checksum=config["checksum"]).encode
    return None


def _put(path: Path, data: bytes | memoryview) -> None:
    """Write a file whole or not at all: a temporary ``.partial`` file, then a rename."""
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        file = open(partial, "wb")
    except FileNotFoundError:  # the chunk's first file in its folder
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(partial, "wb")
    try:
        with file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
