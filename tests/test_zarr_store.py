"""The store: layout, provenance, status, and the rules for replacing what exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.errors import InputError, OutputError
from pipeline.sinks.zarr_store import (
    StoreLayout,
    check_output_path,
    create_store,
    describe_codec,
    open_result,
    set_status,
)

LAYOUT = StoreLayout(shape=(3, 4, 5), chunks=(1, 4, 5), dtype="float32", dimension_names=("image", "y", "x"), codec="blosc-lz4")
SOURCES = ("a/img1.png", "a/img2.png", "b/ü.png")


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "out.zarr")
    array = create_store(path, LAYOUT, sources=SOURCES, provenance={"version": "test", "steps": []})
    array[:] = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    return path


def test_layout_read_back_from_disk(store: str) -> None:
    group = zarr.open_group(store, mode="r")
    array = group["0"]
    assert array.shape == (3, 4, 5) and array.chunks == (1, 4, 5) and array.dtype == np.float32
    assert array.metadata.dimension_names == ("image", "y", "x")
    assert [str(s) for s in group["sources"][:]] == list(SOURCES)
    assert "lz4" in describe_codec(array) and "shuffle" in describe_codec(array)
    np.testing.assert_array_equal(array[:], np.arange(60, dtype=np.float32).reshape(3, 4, 5))


def test_append_grows_every_array(store: str) -> None:
    from pipeline.sinks.zarr_store import append_sources

    result = append_sources(store, ["c/new1.png", "c/new2.png"])
    stored = open_result(store)
    assert result.shape == (5, 4, 5) and stored.array.shape == (5, 4, 5)
    assert stored.sources == [*SOURCES, "c/new1.png", "c/new2.png"]
    assert stored.done.tolist() == [False] * 5
    np.testing.assert_array_equal(stored.array[:3], np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    assert stored.provenance["sources"]["count"] == 5


def test_partial_writes_are_removed(store: str) -> None:
    from pipeline.sinks.zarr_store import remove_partial_writes

    leftover = Path(store) / "0" / "c" / "1" / "0" / "0.abc123.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a chunk")
    assert remove_partial_writes(store) == 1 and not leftover.exists()
    assert open_result(store).array[1].sum() > 0


def test_status_is_running_until_marked(store: str) -> None:
    meta = json.loads((Path(store) / "zarr.json").read_text())
    assert meta["attributes"]["pipeline"]["status"] == "running"
    assert meta["attributes"]["pipeline"]["sources"] == {"array": "sources", "count": 3}
    set_status(store, "complete", finished="now")
    result = open_result(store)
    assert result.status == "complete" and result.provenance["finished"] == "now"
    assert result.provenance["version"] == "test"


@pytest.mark.parametrize("codec, name", [("zstd", "zstd"), ("blosc-zstd", "blosc"), ("none", "none")])
def test_codecs(tmp_path: Path, codec: str, name: str) -> None:
    layout = StoreLayout(**{**LAYOUT.__dict__, "codec": codec})
    array = create_store(str(tmp_path / "s.zarr"), layout, sources=SOURCES, provenance={})
    array[:] = 1.5
    assert describe_codec(zarr.open_array(str(tmp_path / "s.zarr" / "0"))).startswith(name)
    assert float(zarr.open_array(str(tmp_path / "s.zarr" / "0"))[2, 3, 4]) == 1.5


def test_an_existing_store_of_ours_is_reported(store: str, tmp_path: Path) -> None:
    assert check_output_path(store) is True
    assert check_output_path(str(tmp_path / "new.zarr")) is False


def test_never_writes_into_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a store written by this pipeline"):
        check_output_path(str(tmp_path))
    assert (tmp_path / "precious.txt").exists()


def test_empty_folder_is_fine(tmp_path: Path) -> None:
    assert check_output_path(str(tmp_path)) is False


def test_output_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        check_output_path(str(tmp_path / "x.zarr"))


def test_output_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, who may write anywhere: ask the permission check itself.
    asked: list[str] = []
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append(str(path)) or False)
    with pytest.raises(OutputError, match="not writable"):
        check_output_path(str(tmp_path / "new" / "x.zarr"))
    assert asked == [str(tmp_path)]


def test_overwrite_replaces_the_old_store(store: str) -> None:
    array = create_store(store, LAYOUT, sources=SOURCES[:1], provenance={})
    assert np.isnan(array[:]).all()  # nothing written yet reads as missing, not as black
    assert open_result(store).sources == [SOURCES[0]]


@pytest.mark.parametrize("make", ["missing", "plain folder"])
def test_open_result_rejects_non_stores(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x"
    if make == "plain folder":
        path.mkdir()
    with pytest.raises(InputError):
        open_result(str(path))


def test_writes_that_would_share_a_zarr_chunk_are_refused(tmp_path: Path) -> None:
    import dask.array as da

    from pipeline.sinks.writes import write_lazily

    target = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(4, 4), chunks=(2, 2), dtype="float32")
    with pytest.raises(ValueError, match="split zarr chunks"):
        write_lazily(da.ones((4, 4), chunks=(2, 1)), target)
    write_lazily(da.ones((4, 4), chunks=(2, 2)), target).compute()  # whole zarr chunks: fine
    assert target[:].sum() == 16


def test_groups_of_images_across_chunks_of_images_are_cut_at_the_chunks(tmp_path: Path) -> None:
    """Along the image axis a write is realigned instead: one task per chunk of images, begun mid-chunk or not."""
    import dask.array as da

    from pipeline.sinks.writes import write_lazily

    target = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(11, 3), chunks=(4, 3), dtype="float32")
    values = np.arange(33, dtype="float32").reshape(11, 3)
    write_lazily(da.from_array(values[:5], chunks=(3, 3)), target).compute(scheduler="threads", num_workers=4)
    write = write_lazily(da.from_array(values[5:], chunks=(1, 3)), target, start=5)  # completes chunk 4-7
    assert write.numblocks[0] == 2
    write.compute(scheduler="threads", num_workers=4)
    np.testing.assert_array_equal(target[:], values)


def test_blocks_of_many_chunks_are_written_chunk_by_chunk(tmp_path: Path) -> None:
    import dask.array as da

    from pipeline.sinks.writes import write_lazily

    values = np.arange(3 * 5 * 7, dtype="float32").reshape(3, 5, 7)
    # a strided view, as a tile cut from its halo: each zarr chunk must still get its own samples
    strided = da.from_array(np.pad(values, 1)[1:-1, 1:-1, 1:-1], chunks=(1, 4, 7))
    target = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(5, 5, 7), chunks=(1, 2, 3), dtype="float32")
    write_lazily(strided, target, start=2).compute()
    np.testing.assert_array_equal(target[2:], values)
    assert target.nchunks_initialized == 3 * 3 * 3


def test_inspect_trusts_the_ledger_over_a_forged_status(tmp_path: Path) -> None:
    from pipeline.sinks.zarr_store import StoreLayout, create_store, open_result

    store = str(tmp_path / "forged.zarr")
    layout = StoreLayout(shape=(3, 4, 5), chunks=(1, 4, 5), dtype="float32", dimension_names=("image", "y", "x"), codec="none")
    create_store(store, layout, sources=("a", "b", "c"), provenance={})
    set_status(store, "complete")
    summary = open_result(store).summary()
    assert summary["status"].startswith("incomplete (marked complete, but the ledger records 0/3 images done")
    assert summary["progress"] == "0/3 images written"
