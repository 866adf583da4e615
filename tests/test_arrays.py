"""Arrays as inputs (sources/arrays.py): Zarr arrays, OME-Zarr, our own stores, .npy files.

Every result is checked against scipy.ndimage on the array itself, read back from the store the
CLI wrote; the chain test checks that one run's store is the next run's input.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage
from zarr.storage import LocalStore

import pipeline
from pipeline.config import validate_config
from pipeline.errors import Interrupted
from pipeline.job_plan import build_plan
from pipeline.sources import arrays

from test_resume import (  # noqa: F401 (start is a fixture)
    assert_same_bytes, cli, done_count, events, kill, result, sources, start, status, wait_until,
)

RNG = np.random.default_rng(11)
EDGE = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=float)


def _job(
    root: Path, paths: Any, store: str, steps: list[dict[str, Any]] | None = None, *,
    output: dict[str, Any] | None = None, execution: dict[str, Any] | None = None, **input_keys: Any,
) -> Path:
    config = root / f"{store}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": paths, **input_keys},
                "steps": steps or [{"convolve": {"kernel": "edge"}}],
                "output": {"path": str(root / store), **(output or {})},
                "execution": {"scheduler": "threads", "compute_dtype": "float64", **(execution or {})},
            }
        ),
        encoding="utf-8",
    )
    return config


@pytest.fixture
def chunk_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Counter[str]]:
    """Reads of stored chunks from local Zarr stores in this process (zarr fetches every chunk it
    decodes through its store's ``get``): a function of a store's root, counting its chunk keys."""
    reads: Counter[tuple[Path, str]] = Counter()
    original = LocalStore.get

    async def get(self: LocalStore, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if key.startswith("c/") or "/c/" in key:
            reads[(Path(str(self.root)), key)] += 1
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(LocalStore, "get", get)

    def of(store: Path) -> Counter[str]:
        found = Counter({key: count for (root, key), count in reads.items() if root == store})
        reads.clear()
        return found

    return of


def _ok(run) -> None:
    assert run.returncode == 0, run.stderr


def _edge(image: np.ndarray) -> np.ndarray:
    return ndimage.correlate(image.astype(np.float64), EDGE, mode="reflect")


def test_a_zarr_array_read_by_its_chunks_with_halos_equals_scipy(tmp_path: Path) -> None:
    images = RNG.integers(0, 65536, (3, 200, 170), dtype=np.uint16)
    stored = zarr.create_array(tmp_path / "in.zarr", shape=images.shape, chunks=(1, 64, 64), dtype="uint16",
                               dimension_names=("image", "y", "x"))
    stored[:] = images
    steps = [{"convolve": {"kernel": "gaussian", "params": {"sigma": 3.0}}}]
    _ok(cli("run", _job(tmp_path, str(tmp_path / "in.zarr"), "out.zarr", steps, tile=64), cwd=tmp_path))
    out = result(tmp_path / "out.zarr")
    group = zarr.open_group(tmp_path / "out.zarr")
    assert tuple(group["0"].chunks) == (1, 64, 64)  # read, and written, by the array's own chunks
    assert group.attrs["pipeline"]["read"]["tile"] == [64, 64]
    for index, image in enumerate(images):
        expected = ndimage.gaussian_filter(image.astype(np.float64), 3.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(out[index], expected, rtol=1e-5, atol=1e-2)
    assert sources(tmp_path / "out.zarr") == [f"{tmp_path / 'in.zarr'}#{i}" for i in range(3)]


def test_one_runs_store_is_the_next_runs_input(tmp_path: Path) -> None:
    images = RNG.uniform(0, 255, (4, 96, 80))
    np.save(tmp_path / "stack.npy", images)
    blur = {"convolve": {"kernel": "gaussian", "params": {"sigma": 1.5}}}
    edge = {"convolve": {"kernel": "edge"}}
    first = _job(tmp_path, str(tmp_path / "stack.npy"), "a.zarr", [blur])
    _ok(cli("run", first, cwd=tmp_path))
    second = _job(tmp_path, str(tmp_path / "a.zarr"), "b.zarr", [edge])
    second_config = yaml.safe_load(second.read_text())
    second_config["execution"]["compute_dtype"] = "float32"
    second.write_text(yaml.safe_dump(second_config))
    _ok(cli("run", second, cwd=tmp_path))
    both = _job(tmp_path, str(tmp_path / "stack.npy"), "ab.zarr", [blur, edge])
    _ok(cli("run", both, cwd=tmp_path))
    chained, fused = result(tmp_path / "b.zarr"), result(tmp_path / "ab.zarr")
    # B reads A's float32 values: rounded once more than the fused job, by up to float32's epsilon of
    # each term the edge kernel sums, so 1e-6 relative to the terms' magnitude (sum |k| * max |A|).
    scale = np.abs(EDGE).sum() * np.abs(result(tmp_path / "a.zarr")).max()
    np.testing.assert_allclose(chained, fused, rtol=0, atol=1e-6 * scale)
    provenance = zarr.open_group(tmp_path / "b.zarr").attrs["pipeline"]
    assert provenance["input_array"]["store"] == str(tmp_path / "a.zarr")
    assert provenance["input_array"]["kind"] == "pipeline"
    assert sources(tmp_path / "b.zarr")[0] == f"{tmp_path / 'a.zarr'}#0"


def test_npy_files_are_read_through_a_memory_map_and_equal_scipy(tmp_path: Path) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    images = [RNG.uniform(-1, 1, (50, 60)).astype(np.float32) for _ in range(3)]
    for index, image in enumerate(images):
        np.save(folder / f"a{index}.npy", image)
    _ok(cli("run", _job(tmp_path, str(folder / "*.npy"), "out.zarr"), cwd=tmp_path))
    out = result(tmp_path / "out.zarr")
    assert out.shape == (3, 50, 60)
    for index, image in enumerate(images):
        np.testing.assert_allclose(out[index], _edge(image), rtol=1e-5, atol=1e-5)


def test_channels_and_volumes_map_by_axis_name(tmp_path: Path) -> None:
    colour = RNG.uniform(0, 1, (2, 3, 40, 30))
    array = zarr.create_array(tmp_path / "c.zarr", shape=colour.shape, chunks=(1, 3, 40, 30), dtype="float64",
                              dimension_names=("t", "c", "y", "x"))
    array[:] = colour
    run = cli("run", _job(tmp_path, str(tmp_path / "c.zarr"), "c-out.zarr", color="keep"), "--log-format", "json",
              cwd=tmp_path)
    _ok(run)
    assert any("axis 't'" in event.get("message", "") for event in events(run.stdout))  # read as images, said once
    out = result(tmp_path / "c-out.zarr")
    for t in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[t, c], _edge(colour[t, c]), rtol=1e-5, atol=1e-5)

    volumes = RNG.uniform(0, 1, (2, 9, 20, 24))
    array = zarr.create_array(tmp_path / "v.zarr", shape=volumes.shape, chunks=(1, 3, 20, 24), dtype="float64",
                              dimension_names=("image", "z", "y", "x"))
    array[:] = volumes
    kernel = RNG.standard_normal((3, 3, 3))
    np.save(tmp_path / "k3.npy", kernel)
    steps = [{"convolve": {"kernel": str(tmp_path / "k3.npy"), "correlate": True}}]
    _ok(cli("run", _job(tmp_path, str(tmp_path / "v.zarr"), "v-out.zarr", steps, layout="volume"), cwd=tmp_path))
    out = result(tmp_path / "v-out.zarr")
    for index, volume in enumerate(volumes):
        np.testing.assert_allclose(out[index], ndimage.correlate(volume, kernel, mode="reflect"), rtol=1e-5, atol=1e-6)


def test_an_ome_zarr_keeps_its_pixel_sizes(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    image = RNG.uniform(0, 1000, (2, 64, 48))
    root = zarr.open_group(parse_url(tmp_path / "ome.zarr", mode="w").store, mode="w")
    write_image(image, root, axes="tyx", scale={"t": 1.0, "y": 0.25, "x": 0.5},
                axes_units={"y": "micrometer", "x": "micrometer"}, scale_factors=[2])
    steps = [{"convolve": {"kernel": "edge"}}, {"pool": {"function": "max", "size": 2}}]
    _ok(cli("run", _job(tmp_path, str(tmp_path / "ome.zarr"), "out.zarr", steps), cwd=tmp_path))
    attrs = json.loads((tmp_path / "out.zarr" / "zarr.json").read_text())["attributes"]
    multiscale = attrs["ome"]["multiscales"][0]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-2:] == [0.5, 1.0]  # the input's 0.25 x 0.5 micrometres, pooled by 2
    assert {axis["name"]: axis.get("unit") for axis in multiscale["axes"]}["y"] == "micrometer"
    out = result(tmp_path / "out.zarr")
    for index in range(2):
        edges = _edge(image[index])
        expected = edges[:64, :48].reshape(32, 2, 24, 2).max(axis=(1, 3))
        np.testing.assert_allclose(out[index], expected, rtol=1e-5, atol=1e-3)


def test_append_adds_new_images_along_the_first_axis_and_a_killed_run_resumes(
    tmp_path: Path, start: Callable[..., Any]
) -> None:
    images = RNG.uniform(0, 1, (10, 128, 128))
    array = zarr.create_array(tmp_path / "in.zarr", shape=(6, 128, 128), chunks=(1, 128, 128), dtype="float64",
                              dimension_names=("image", "y", "x"))
    array[:] = images[:6]
    kernel = RNG.standard_normal((41, 41))
    np.save(tmp_path / "slow.npy", kernel)
    steps = [{"convolve": {"kernel": str(tmp_path / "slow.npy"), "strategy": "direct", "correlate": True}}]
    config = _job(tmp_path, str(tmp_path / "in.zarr"), "out.zarr", steps)
    raw = yaml.safe_load(config.read_text())
    raw["execution"] = {"scheduler": "sync", "batch_size": 1, "compute_dtype": "float64"}
    config.write_text(yaml.safe_dump(raw))
    victim = start("run", config)
    wait_until(victim, lambda: done_count(tmp_path / "out.zarr") >= 1, "one image in the ledger")
    kill(victim)
    done = done_count(tmp_path / "out.zarr")
    rerun = cli("run", config, "--log-format", "json", cwd=tmp_path)
    _ok(rerun)
    assert events(rerun.stdout)[-1]["processed"] == 6 - done
    array.resize((10, 128, 128))
    array[6:] = images[6:]
    again = cli("run", config, cwd=tmp_path)
    assert again.returncode == 4 and "--append" in again.stderr
    appended = cli("run", config, "--append", "--log-format", "json", cwd=tmp_path)
    _ok(appended)
    assert events(appended.stdout)[-1]["processed"] == 4
    out = result(tmp_path / "out.zarr")
    for index in (0, 5, 6, 9):
        expected = ndimage.correlate(images[index], kernel, mode="reflect")
        np.testing.assert_allclose(out[index], expected, rtol=1e-6, atol=1e-6)
    assert status(tmp_path / "out.zarr") == "complete"


def test_a_store_that_is_not_complete_is_refused_unless_allowed(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", RNG.uniform(0, 1, (2, 30, 30)))
    _ok(cli("run", _job(tmp_path, str(tmp_path / "one.npy"), "a.zarr"), cwd=tmp_path))
    group = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    group.attrs["pipeline"] = {**group.attrs["pipeline"], "status": "failed"}
    refused = cli("run", _job(tmp_path, str(tmp_path / "a.zarr"), "b.zarr"), cwd=tmp_path)
    assert refused.returncode == 3
    assert "is failed, not complete" in refused.stderr and "input.allow_incomplete" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    _ok(cli("run", _job(tmp_path, str(tmp_path / "a.zarr"), "c.zarr", allow_incomplete=True), cwd=tmp_path))


def test_nan_images_are_carried_as_nan(tmp_path: Path) -> None:
    images = RNG.uniform(0, 1, (2, 20, 20))
    images[1] = np.nan  # as a skipped image of an earlier run reads
    np.save(tmp_path / "nan.npy", images)
    _ok(cli("run", _job(tmp_path, str(tmp_path / "nan.npy"), "out.zarr"), cwd=tmp_path))
    out = result(tmp_path / "out.zarr")
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda p: np.save(p / "bad.npy", np.zeros((4, 4), dtype=complex)), ("complex128", "integers or real floats")),
        (lambda p: np.save(p / "bad.npy", np.zeros((2, 3, 4, 5, 6))), ("5 axes without names",)),
        (lambda p: zarr.create_array(p / "bad.zarr", shape=(2, 4, 4), dtype="f4", dimension_names=("q", "y", "x")),
         ("axis 'q' is none of",)),
        (lambda p: zarr.create_array(p / "bad.zarr", shape=(2, 2, 4, 4), dtype="f4",
                                     dimension_names=("image", "t", "y", "x")), ("'image' appears twice",)),
        (lambda p: zarr.open_group(p / "bad.zarr", mode="w").create_array("raw", shape=(4, 4), dtype="f4"),
         ("without OME-NGFF multiscales", "/raw")),
    ],
    ids=["complex", "5-d", "unknown-axis", "two-image-axes", "plain-group"],
)
def test_bad_arrays_get_one_line_and_exit_3(tmp_path: Path, make: Callable[[Path], Any], fragments: tuple[str, ...]) -> None:
    make(tmp_path)
    name = "bad.npy" if (tmp_path / "bad.npy").exists() else "bad.zarr"
    run = cli("run", _job(tmp_path, str(tmp_path / name), "out.zarr"), cwd=tmp_path)
    assert run.returncode == 3, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    for fragment in fragments:
        assert fragment in run.stderr


def test_validate_and_plan_read_array_metadata(tmp_path: Path) -> None:
    array = zarr.create_array(tmp_path / "in.zarr", shape=(4, 30, 20), chunks=(1, 30, 20), dtype="uint16",
                              dimension_names=("image", "y", "x"))
    array[:] = 7
    config = _job(tmp_path, str(tmp_path / "in.zarr"), "out.zarr")
    valid = cli("validate", config, cwd=tmp_path)
    _ok(valid)
    assert "shape (30, 20)" in valid.stdout and "16-bit" in valid.stdout
    planned = cli("plan", config, cwd=tmp_path)
    _ok(planned)
    assert "4 images" in planned.stdout


def test_remote_arrays_are_read_through_fsspec(tmp_path: Path) -> None:
    """memory:// is an fsspec filesystem in this process: the API runs the job here, with threads."""
    import fsspec

    import pipeline

    images = RNG.uniform(0, 1, (3, 40, 30))
    remote = zarr.create_array("memory://arrays/in.zarr", shape=images.shape, chunks=(1, 40, 30), dtype="float64",
                               dimension_names=("image", "y", "x"))
    remote[:] = images
    with fsspec.open("memory://arrays/stack.npy", "wb") as file:
        np.save(file, images)
    for entry in ("memory://arrays/in.zarr", "memory://arrays/stack.npy"):
        store = tmp_path / f"{entry.rsplit('/', 1)[1]}-out.zarr"
        summary = pipeline.run(yaml.safe_load(_job(tmp_path, entry, store.name).read_text()))
        assert summary.processed == 3
        out = result(store)
        for index, image in enumerate(images):
            np.testing.assert_allclose(out[index], _edge(image), rtol=1e-5, atol=1e-5)


def _chunked_zarr(path: Path, images: np.ndarray, per_chunk: int = 16) -> zarr.Array:
    stored = zarr.create_array(path, shape=images.shape, chunks=(per_chunk, *images.shape[1:]), dtype=images.dtype,
                               dimension_names=("image", "y", "x"))
    stored[:] = images
    return stored


def test_a_store_of_ours_with_16_images_per_chunk_is_read_a_stored_chunk_per_task(
    tmp_path: Path, chunk_reads: Callable[[Path], Counter[str]]
) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    for index in range(40):
        iio.imwrite(folder / f"s{index:02d}.png", RNG.integers(0, 256, (24, 30), dtype=np.uint8))
    blur = [{"convolve": {"kernel": "blur"}}]
    pipeline.run(str(_job(tmp_path, str(folder / "*.png"), "a.zarr", blur, output={"images_per_chunk": 16})))
    stored = zarr.open_group(tmp_path / "a.zarr", mode="r")["0"]
    assert stored.chunks == (16, 24, 30)  # the tool's own grouping: chunks [0, 16), [16, 32), [32, 40)
    chunk_reads(tmp_path / "a.zarr")

    pipeline.run(str(_job(tmp_path, str(tmp_path / "a.zarr"), "b.zarr")))
    reads = chunk_reads(tmp_path / "a.zarr")
    assert reads == Counter({"0/c/0/0/0": 1, "0/c/1/0/0": 1, "0/c/2/0/0": 1})  # each stored chunk read once
    out = zarr.open_group(tmp_path / "b.zarr", mode="r")["0"]
    assert out.chunks == (16, 24, 30)  # and written as it was read: 16 images a chunk
    values = stored[:]
    for index in range(40):
        np.testing.assert_allclose(out[index], _edge(values[index]).astype(np.float32), rtol=1e-6, atol=1e-4)
    plan = build_plan(validate_config(yaml.safe_load((tmp_path / "b.zarr.yaml").read_text())))
    assert plan.spec.images_per_task == 16
    assert plan.result().numblocks[0] == 3  # one task per stored chunk along the image axis


def test_grouped_reads_are_exact_after_an_interrupt_and_an_append_mid_chunk(
    tmp_path: Path, chunk_reads: Callable[[Path], Counter[str]]
) -> None:
    images = RNG.uniform(0, 1, (40, 20, 26))
    array = _chunked_zarr(tmp_path / "in.zarr", images[:20])
    _chunked_zarr(tmp_path / "all.zarr", images)
    one_batch = {"batch_size": 16}
    config = str(_job(tmp_path, str(tmp_path / "in.zarr"), "out.zarr", execution=one_batch))

    def stop_after_the_first_batch(event: dict[str, Any]) -> None:
        if event["event"] == "batch":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        pipeline.run(config, progress=stop_after_the_first_batch)
    assert done_count(tmp_path / "out.zarr") == 16
    chunk_reads(tmp_path / "in.zarr")
    assert pipeline.run(config).processed == 4  # images 16..19: the rest of chunk [16, 32)
    assert chunk_reads(tmp_path / "in.zarr") == Counter({"c/1/0/0": 1})

    array.resize((40, 20, 26))
    array[20:] = images[20:]
    chunk_reads(tmp_path / "in.zarr")  # writing into chunk [16, 32) read it
    assert pipeline.run(config, append=True).processed == 20  # from image 20, inside the second chunk
    assert chunk_reads(tmp_path / "in.zarr") == Counter({"c/1/0/0": 1, "c/2/0/0": 1})
    assert status(tmp_path / "out.zarr") == "complete"
    assert zarr.open_group(tmp_path / "out.zarr", mode="r")["0"].chunks == (16, 20, 26)

    pipeline.run(str(_job(tmp_path, str(tmp_path / "all.zarr"), "reference.zarr", execution=one_batch)))
    assert_same_bytes(result(tmp_path / "out.zarr"), result(tmp_path / "reference.zarr"))
    out = result(tmp_path / "out.zarr")
    for index in range(40):
        np.testing.assert_allclose(out[index], _edge(images[index]).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_sources_that_are_not_one_array_in_order_are_read_one_image_per_task(
    tmp_path: Path, chunk_reads: Callable[[Path], Counter[str]]
) -> None:
    first, second = RNG.uniform(0, 1, (20, 12, 14)), RNG.uniform(0, 1, (20, 12, 14))
    _chunked_zarr(tmp_path / "a.zarr", first)
    _chunked_zarr(tmp_path / "b.zarr", second)
    config = _job(tmp_path, [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], "out.zarr")
    plan = build_plan(validate_config(yaml.safe_load(config.read_text())))
    assert plan.spec.images_per_task == 1 and plan.chunks[0] == 1  # b's chunks do not fall on the collection's grid
    pipeline.run(str(config))
    out = result(tmp_path / "out.zarr")
    for index, image in enumerate([*first, *second]):
        np.testing.assert_allclose(out[index], _edge(image), rtol=1e-6, atol=1e-6)

    # Runs inside a task: consecutive indices of one array are read together, the others alone.
    sources = [f"{tmp_path / 'a.zarr'}#{i}" for i in (17, 18, 19)] + [f"{tmp_path / 'b.zarr'}#{i}" for i in (0, 5)]
    stack = arrays.array_stack(sources, array=plan.spec.array, shape=(12, 14), chunks=(12, 14), dtype="float64",
                               groups=(len(sources),))
    assert stack.chunks[0] == (3, 1, 1)
    chunk_reads(tmp_path / "a.zarr")
    np.testing.assert_array_equal(stack.compute(scheduler="sync"), np.concatenate([first[17:], second[[0, 5]]]))
    assert chunk_reads(tmp_path / "a.zarr") == Counter({"c/1/0/0": 1})


def test_an_unreadable_chunk_skips_its_images_one_by_one(tmp_path: Path) -> None:
    images = RNG.uniform(0, 1, (32, 10, 12))
    _chunked_zarr(tmp_path / "in.zarr", images)
    (tmp_path / "in.zarr" / "c" / "1" / "0" / "0").write_bytes(b"not a chunk")
    summary = pipeline.run(str(_job(tmp_path, str(tmp_path / "in.zarr"), "out.zarr", on_error="skip")))
    assert (summary.processed, summary.unreadable) == (16, 16)
    out = result(tmp_path / "out.zarr")
    for index in range(16):
        np.testing.assert_allclose(out[index], _edge(images[index]), rtol=1e-6, atol=1e-6)
    assert np.isnan(out[16:]).all()


def test_a_npy_stack_is_grouped_as_small_files_are_and_a_glob_of_stacks_is_not(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", RNG.uniform(0, 1, (40, 16, 16)))
    np.save(tmp_path / "two.npy", RNG.uniform(0, 1, (40, 16, 16)))
    alone = build_plan(validate_config(yaml.safe_load(_job(tmp_path, str(tmp_path / "one.npy"), "a.zarr").read_text())))
    assert alone.spec.images_per_task == 1024 * 1024 // (16 * 16 * 8)  # as many as fit 1 MiB, as for files
    both = build_plan(validate_config(yaml.safe_load(_job(tmp_path, str(tmp_path / "*.npy"), "b.zarr").read_text())))
    assert both.spec.images_per_task == 1


def test_each_npy_header_is_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    images = [RNG.uniform(0, 1, (12, 10)) for _ in range(4)]
    for index, image in enumerate(images):
        np.save(folder / f"a{index}.npy", image)
    opened: Counter[str] = Counter()
    original = arrays._open

    def counting(path: str, options: Any) -> Any:
        opened[Path(path).name] += 1
        return original(path, options)

    monkeypatch.setattr(arrays, "_open", counting)
    # A batch per file: every batch's graph is built from the headers read when the files were listed.
    summary = pipeline.run(str(_job(tmp_path, str(folder / "*.npy"), "out.zarr", execution={"batch_size": 1})))
    assert summary.processed == 4
    assert opened == Counter({f"a{index}.npy": 1 for index in range(4)})
    out = result(tmp_path / "out.zarr")
    for index, image in enumerate(images):
        np.testing.assert_allclose(out[index], _edge(image), rtol=1e-6, atol=1e-6)
