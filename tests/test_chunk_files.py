"""Whole chunks written by the worker itself: the same files, byte for byte, as zarr writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec

from pipeline.sinks import chunk_files
from pipeline.sinks.chunk_files import chunk_writer
from pipeline.sinks.codecs import CODECS, V2_CODECS

SHAPE, CHUNKS = (3, 32, 48), (1, 16, 24)


def _pair(root: Path, dtype: str, codec: str, **extra) -> tuple[zarr.Array, zarr.Array]:
    group = zarr.open_group(root, mode="w", zarr_format=3)
    made = [
        group.create_array(name, shape=SHAPE, chunks=CHUNKS, dtype=dtype, compressors=CODECS[codec](), fill_value=0, **extra)
        for name in ("by_zarr", "by_worker")
    ]
    return made[0], made[1]


def _values(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    kind = np.dtype(dtype)
    if kind.kind == "f":  # smooth with noise, as filtered images are: compressible, not trivially so
        return (np.cumsum(rng.normal(size=SHAPE), axis=2) * 3).astype(kind)
    return rng.integers(0, min(np.iinfo(kind).max, 4000), size=SHAPE).astype(kind)


def _chunk_files(array: zarr.Array, root: Path) -> dict[str, bytes]:
    folder = root / array.path
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "zarr.json"}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_every_chunk_file_is_the_one_zarr_writes(tmp_path: Path, codec: str, dtype: str) -> None:
    by_zarr, by_worker = _pair(tmp_path, dtype, codec)
    values = _values(dtype)
    by_zarr[...] = values
    write = chunk_writer(by_worker)
    assert write is not None
    for index in np.ndindex(*(n // c for n, c in zip(SHAPE, CHUNKS))):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, CHUNKS))
        write(index, np.ascontiguousarray(values[region]))
    expected, got = _chunk_files(by_zarr, tmp_path), _chunk_files(by_worker, tmp_path)
    assert len(expected) == 3 * 2 * 2
    assert got == expected
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "by_worker")[...], values)


def test_a_big_endian_bytes_codec_stores_big_endian_bytes(tmp_path: Path) -> None:
    by_zarr, by_worker = _pair(tmp_path, "uint16", "zstd", serializer=BytesCodec(endian="big"))
    values = _values("uint16")
    by_zarr[:1, :16, :24] = values[:1, :16, :24]
    chunk_writer(by_worker)((0, 0, 0), values[:1, :16, :24].copy())
    assert _chunk_files(by_worker, tmp_path) == _chunk_files(by_zarr, tmp_path)
    np.testing.assert_array_equal(by_worker[:1, :16, :24], values[:1, :16, :24])


def test_a_value_of_another_shape_is_refused(tmp_path: Path) -> None:
    _, by_worker = _pair(tmp_path, "float32", "blosc-lz4")
    with pytest.raises(ValueError, match=r"shape \(1, 16, 24\).*\(1, 16, 23\)"):
        chunk_writer(by_worker)((0, 0, 0), np.zeros((1, 16, 23), np.float32))


def test_sharded_v2_and_remote_arrays_are_left_to_zarr(tmp_path: Path) -> None:
    sharded = zarr.create_array(tmp_path / "s", shape=SHAPE, chunks=CHUNKS, shards=(1, 32, 48), dtype="uint8")
    v2 = zarr.create_array(tmp_path / "v2", shape=SHAPE, chunks=CHUNKS, dtype="uint8", zarr_format=2,
                           compressors=V2_CODECS["blosc-lz4"]())
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype="uint8")
    assert [chunk_writer(a) for a in (sharded, v2, in_memory)] == [None, None, None]


def test_a_write_cut_short_leaves_no_chunk_and_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, by_worker = _pair(tmp_path, "float32", "blosc-lz4")
    write = chunk_writer(by_worker)

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunk_files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write((0, 0, 0), np.ones(CHUNKS, np.float32))
    assert _chunk_files(by_worker, tmp_path) == {}
    monkeypatch.undo()
    write((0, 0, 0), np.ones(CHUNKS, np.float32))
    assert list(_chunk_files(by_worker, tmp_path)) == ["c/0/0/0"]
    np.testing.assert_array_equal(by_worker[:1, :16, :24], 1)
