"""One job end to end through the library: results read back from disk against scipy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from scipy import ndimage, signal

from pipeline import __version__
from pipeline.config import validate_config
from pipeline.errors import InputError
from pipeline.job_plan import GROUP_BYTES, compute_dtype
from pipeline.job_run import run
from pipeline.steps.kernels import EDGE

RNG = np.random.default_rng(7)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(4):
        iio.imwrite(images / f"img{index}.png", RNG.integers(0, 256, size=(20, 24, 3), dtype=np.uint8))
    return images


def _gray(folder: Path) -> np.ndarray:
    rgb = np.stack([iio.imread(p).astype(np.float64) for p in sorted(folder.glob("*.png"))])
    return rgb @ np.array([0.299, 0.587, 0.114])


def _config(folder: Path, out: Path, steps: list[dict[str, Any]], **output: Any) -> Any:
    return validate_config(
        {
            "input": {"paths": str(folder)},
            "steps": steps,
            "output": {"path": str(out), **output},
            "execution": {"scheduler": "threads", "workers": 2},
        }
    )


def _stored(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    group = zarr.open_group(str(path), mode="r")
    return group["0"][:], dict(group.attrs["pipeline"])


def test_edge_result_and_provenance(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "edge.zarr"
    summary = run(_config(folder, out, [{"convolve": {"kernel": "edge"}}]))
    stored, prov = _stored(out)
    expected = ndimage.convolve(_gray(folder), EDGE[None], mode="reflect")
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-3)
    assert summary.images == 4 and summary.shape == (4, 20, 24)
    assert prov["status"] == "complete" and prov["version"] == __version__
    assert prov["started"] <= prov["finished"]
    assert prov["steps"][0]["kernel"]["matrix"] == EDGE.tolist()
    assert prov["config"]["output"]["path"] == str(out)
    assert prov["axes"] == ["image", "y", "x"]
    names = [Path(str(s)).name for s in zarr.open_group(str(out))["sources"][:]]
    assert names == [f"img{i}.png" for i in range(4)]


def test_chained_steps_valid_then_full(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "chain.zarr"
    steps = [
        {"convolve": {"kernel": "box", "params": {"size": 4}, "mode": "valid"}},
        {"convolve": {"kernel": [[1, 2, 3]], "mode": "full", "correlate": True}},
    ]
    run(_config(folder, out, steps, dtype="float64"))
    stored, _ = _stored(out)
    expected = np.stack(
        [
            signal.correlate(signal.convolve(image, np.full((4, 4), 1 / 16), mode="valid"), [[1, 2, 3]], mode="full")
            for image in _gray(folder)
        ]
    )
    assert stored.shape == (4, 17, 23)
    np.testing.assert_allclose(stored, expected, rtol=1e-10)


def test_normalize_then_uint8_spans_the_range(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "n.zarr"
    run(_config(folder, out, [{"convolve": {"kernel": "edge"}}, {"normalize": "minmax"}], dtype="uint8"))
    stored, _ = _stored(out)
    edges = ndimage.convolve(_gray(folder), EDGE[None], mode="reflect")
    low = edges.min(axis=(1, 2), keepdims=True)
    high = edges.max(axis=(1, 2), keepdims=True)
    expected = np.rint((edges - low) / (high - low) * 255)
    assert stored.dtype == np.uint8
    assert np.abs(stored.astype(int) - expected).max() <= 1  # float32 rounding at .5 boundaries
    assert (stored.min(axis=(1, 2)) == 0).all() and (stored.max(axis=(1, 2)) == 255).all()


def test_no_steps_writes_the_gray_images(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "gray.zarr"
    run(_config(folder, out, [], dtype="float64"))
    np.testing.assert_allclose(_stored(out)[0], _gray(folder), rtol=1e-12)


def test_failed_run_is_marked_failed_not_complete(folder: Path, tmp_path: Path) -> None:
    (folder / "img9.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "bad.zarr"
    with pytest.raises(InputError, match="img9"):
        run(_config(folder, out, [{"convolve": {"kernel": "blur"}}]))
    _, prov = _stored(out)
    assert prov["status"] == "failed" and "img9" in prov["error"]


@pytest.mark.parametrize(
    "output, chosen", [("float32", "float32"), ("uint8", "float32"), ("float64", "float64"), ("int32", "float64")]
)
def test_compute_dtype_auto(folder: Path, tmp_path: Path, output: str, chosen: str) -> None:
    assert compute_dtype(_config(folder, tmp_path / "x.zarr", [], dtype=output)) == chosen


@pytest.mark.parametrize("color, axes", [("gray", ["image", "y", "x"]), ("keep", ["image", "c", "y", "x"])])
def test_the_store_opens_as_ome_ngff(folder: Path, tmp_path: Path, color: str, axes: list[str]) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "ome.zarr"
    config = validate_config(
        {"input": {"paths": str(folder), "color": color}, "steps": [{"convolve": {"kernel": "blur"}}], "output": {"path": str(out)}}
    )
    run(config)
    (node,) = list(Reader(parse_url(str(out)))())
    assert [axis["name"] for axis in node.metadata["axes"]] == axes
    assert [axis["type"] for axis in node.metadata["axes"]][-2:] == ["space", "space"]
    stored, _ = _stored(out)
    np.testing.assert_array_equal(np.asarray(node.data[0]), stored)


def test_plain_zarr_format_has_no_ome_metadata(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.zarr"
    run(_config(folder, out, [], format="zarr"))
    assert "ome" not in zarr.open_group(str(out), mode="r").attrs


@pytest.mark.parametrize("first, then", [("auto", "200kB"), ("200kB", "auto")], ids=["whole, then tiles", "tiles, then whole"])
def test_a_resumed_store_keeps_its_chunks_whatever_the_budget(tmp_path: Path, first: str, then: str) -> None:
    import tifffile

    from pipeline.steps.kernels import build_kernel

    images = tmp_path / "tiffs"
    images.mkdir()
    pixels = [RNG.integers(0, 65536, (300, 260), dtype=np.uint16) for _ in range(2)]
    tifffile.imwrite(images / "a.tif", pixels[0], tile=(64, 64))
    (images / "b.tif").write_bytes(b"II*\0 not a tiff")  # fails the first run after image a
    out = tmp_path / "out.zarr"

    def config(budget: str) -> Any:
        return validate_config(
            {
                "input": {"paths": str(images)},
                "steps": [{"convolve": {"kernel": "gaussian", "params": {"sigma": 2.0}}}],
                "output": {"path": str(out)},
                "execution": {"batch_size": 1, "workers": 1, "memory_budget": budget},
            }
        )

    with pytest.raises(InputError, match="b.tif"):
        run(config(first))
    chunks = zarr.open_group(str(out), mode="r")["0"].chunks
    assert chunks == ((1, 300, 260) if first == "auto" else (1, 64, 64))  # batches of 1: chunks of 1
    tifffile.imwrite(images / "b.tif", pixels[1], tile=(64, 64))
    summary = run(config(then))  # another budget would choose other tiles: the store's are kept
    stored, _ = _stored(out)
    assert summary.processed == 1 and zarr.open_group(str(out), mode="r")["0"].chunks == chunks
    weights = build_kernel("gaussian", {"sigma": 2.0}).weights
    for image, source in zip(stored, pixels):
        expected = ndimage.convolve(source.astype(np.float64), weights, mode="reflect")
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-3)


def _store_bytes(store: Path) -> dict[str, bytes]:
    return {str(path.relative_to(store)): path.read_bytes() for path in sorted(store.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("shapes", ["strict", "group"])
def test_a_rerun_of_a_complete_store_changes_no_byte(folder: Path, tmp_path: Path, shapes: str) -> None:
    out = tmp_path / "done.zarr"
    config = _config(folder, out, [{"convolve": {"kernel": "edge"}}])
    config = config.model_copy(update={"input": config.input.model_copy(update={"shapes": shapes})})
    run(config)
    before = _store_bytes(out)
    summary = run(config)
    assert summary.processed == 0 and summary.skipped == 4
    assert _store_bytes(out) == before  # zarr.json too: no "resumed" time, no status rewrite


def test_a_completed_resume_carries_no_stale_error(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed.zarr"
    broken = folder / "img2.png"
    good = broken.read_bytes()
    broken.write_bytes(b"\x89PNG not really")
    config = _config(folder, out, [{"convolve": {"kernel": "edge"}}])
    config = config.model_copy(update={"execution": config.execution.model_copy(update={"batch_size": 1})})
    with pytest.raises(InputError, match="img2.png"):
        run(config)
    assert _stored(out)[1]["error"].startswith("cannot read image")
    broken.write_bytes(good)
    run(config)
    _, prov = _stored(out)
    assert prov["status"] == "complete" and "error" not in prov
    (attempt,) = prov["history"]  # the failure is kept, as history
    assert attempt["status"] == "failed" and "img2.png" in attempt["error"]


def test_a_store_claiming_complete_is_finished_by_its_ledger(folder: Path, tmp_path: Path) -> None:
    from pipeline.events import Reporter

    out = tmp_path / "forged.zarr"
    config = _config(folder, out, [{"convolve": {"kernel": "edge"}}])
    run(config)
    expected, _ = _stored(out)
    group = zarr.open_group(str(out), mode="r+")
    group["ledger/done"][2:] = 0  # the ledger says 2/4, the status still says complete
    group["0"][2:] = np.nan

    class Warnings(Reporter):
        said: list[str] = []

        def warning(self, message: str, **fields: Any) -> None:
            self.said.append(message)

    reporter = Warnings(quiet=True)
    summary = run(config, reporter=reporter)
    assert summary.processed == 2
    assert any("says complete but its ledger records 2/4 images" in said for said in reporter.said)
    np.testing.assert_array_equal(_stored(out)[0], expected)


def test_a_store_half_created_by_a_killed_run_is_created_afresh(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "half.zarr"
    out.mkdir()
    (out / "zarr.0123456789abcdef0123456789abcdef.partial").write_text('{"zarr_format": 3, "node_ty')
    summary = run(_config(folder, out, [{"convolve": {"kernel": "edge"}}]))
    assert summary.processed == 4 and _stored(out)[1]["status"] == "complete"
    assert not list(out.glob("*.partial"))


def test_a_folder_with_other_partial_files_is_still_refused(folder: Path, tmp_path: Path) -> None:
    from pipeline.errors import OutputError

    out = tmp_path / "theirs"
    out.mkdir()
    (out / "download.partial").write_text("someone else's")
    with pytest.raises(OutputError, match="not a store written by this pipeline"):
        run(_config(folder, out, [{"convolve": {"kernel": "edge"}}]))


# --- small images: several to a task and to a chunk ---------------------------------------------


def _small(folder: Path, count: int, start: int = 0) -> Path:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for index in range(start, start + count):
        iio.imwrite(folder / f"s{index:03d}.png", rng.integers(0, 256, size=(12, 10), dtype=np.uint8))
    return folder


def _edges(folder: Path) -> np.ndarray:
    gray = np.stack([iio.imread(p).astype(np.float64) for p in sorted(folder.glob("*.png"))])
    return ndimage.convolve(gray, EDGE[None], mode="reflect")


def _grouped(folder: Path, out: Path, *, per_chunk: int | str = 4, batch: int | str = "auto", **input_options: Any) -> Any:
    return validate_config(
        {
            "input": {"paths": str(folder), **input_options},
            "steps": [{"convolve": {"kernel": "edge"}}],
            "output": {"path": str(out), "images_per_chunk": per_chunk, "levels": 2},
            "execution": {"scheduler": "threads", "workers": 2, "batch_size": batch},
        }
    )


def test_small_images_share_tasks_and_chunks(tmp_path: Path) -> None:
    folder = _small(tmp_path / "small", 11)
    out = tmp_path / "grouped.zarr"
    run(_grouped(folder, out, per_chunk="auto"))
    group = zarr.open_group(str(out), mode="r")
    # all in one chunk, of as many images as GROUP_BYTES holds: room for the images --append adds
    assert group["0"].chunks == (GROUP_BYTES // (12 * 10 * 4), 12, 10) and group["0"].nchunks_initialized == 1
    np.testing.assert_allclose(group["0"][:], _edges(folder), rtol=1e-5, atol=1e-3)

    out = tmp_path / "fours.zarr"
    run(_grouped(folder, out))
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].chunks == (4, 12, 10) and group["1"].chunks == (4, 6, 5)
    assert group["0"].nchunks_initialized == 3  # 4 + 4 + 3 images
    expected = _edges(folder)
    np.testing.assert_allclose(group["0"][:], expected, rtol=1e-5, atol=1e-3)
    halved = expected.reshape(11, 6, 2, 5, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(group["1"][:], halved, rtol=1e-5, atol=1e-3)


def test_normalize_rescales_each_image_of_a_chunk_on_its_own(tmp_path: Path) -> None:
    folder = _small(tmp_path / "small", 6)
    out = tmp_path / "normalized.zarr"
    config = _grouped(folder, out).model_copy(deep=True)
    raw = config.model_dump(mode="json")
    raw["steps"].append({"normalize": "minmax"})
    run(validate_config(raw))
    edges = _edges(folder)
    low, high = edges.min(axis=(1, 2), keepdims=True), edges.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["0"][:], (edges - low) / (high - low), atol=1e-6)


def test_append_completes_the_chunk_the_first_run_left_part_filled(tmp_path: Path) -> None:
    folder = _small(tmp_path / "small", 6)
    out = tmp_path / "appended.zarr"
    run(_grouped(folder, out))
    first = out / "0" / "c" / "0" / "0" / "0"
    written = first.stat().st_mtime_ns
    _small(folder, 5, start=6)
    summary = run(_grouped(folder, out), append=True)
    assert summary.processed == 5 and summary.skipped == 6
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["0"][:], _edges(folder), rtol=1e-5, atol=1e-3)
    assert first.stat().st_mtime_ns == written  # images 0-3: a chunk the append never touched


def test_a_run_failed_inside_a_chunk_is_finished_exactly_by_a_rerun(tmp_path: Path) -> None:
    """Batches of 2 fill chunks of 4 in halves; the rerun completes the half-written chunk."""
    folder = _small(tmp_path / "small", 9)
    good = (folder / "s005.png").read_bytes()
    (folder / "s005.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "resumed.zarr"
    with pytest.raises(InputError, match="s005.png"):
        run(_grouped(folder, out, batch=2))
    assert zarr.open_array(str(out / "ledger" / "done"), mode="r")[:].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    (folder / "s005.png").write_bytes(good)
    summary = run(_grouped(folder, out, batch=2))
    assert summary.processed == 5
    reference = tmp_path / "reference.zarr"
    run(_grouped(folder, reference, per_chunk=1))
    assert zarr.open_group(str(out), mode="r")["0"][:].tobytes() == zarr.open_group(str(reference), mode="r")["0"][:].tobytes()


def test_an_unreadable_image_inside_a_chunk_is_left_out_alone(tmp_path: Path) -> None:
    folder = _small(tmp_path / "small", 9)
    expected = _edges(folder)
    (folder / "s005.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "skipped.zarr"
    summary = run(_grouped(folder, out, on_error="skip"))
    assert (summary.processed, summary.unreadable) == (8, 1)
    stored = zarr.open_group(str(out), mode="r")["0"][:]
    assert np.isnan(stored[5]).all()
    kept = [index for index in range(9) if index != 5]
    np.testing.assert_allclose(stored[kept], expected[kept], rtol=1e-5, atol=1e-3)
