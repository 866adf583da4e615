"""Remote inputs and stores, end to end: a real S3-protocol server (moto) on 127.0.0.1, memory:// and file://.

Each test gets its own bucket. Results are read back through s3fs and zarr and compared with the
scipy oracle and with a local run of the same job; every object written is scanned for the
credentials the run was given.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import fsspec
import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from pipeline.steps.kernels import EDGE
from tests.helpers import assert_error, assert_ok, read_store

moto_server = pytest.importorskip("moto.server", reason="the remote tests need moto[server] (the dev extra)")
s3fs = pytest.importorskip("s3fs", reason="the remote tests need s3fs (the dev extra)")

REPO = Path(__file__).resolve().parents[1]
# Distinctive values, so that a scan of the store finds them if they leaked anywhere.
ACCESS_KEY = "AKIDPIPELINE" + "7Q3Z9X"
SECRET_KEY = "pipeline-test-secret-" + "Vd93kQ0x7LmZ"
CREDENTIALS = (ACCESS_KEY.encode(), SECRET_KEY.encode())
LUMA = np.array([0.299, 0.587, 0.114])
NATURAL = ["img1.png", "img2.png", "img3.png", "img10.png"]
# A closed endpoint fails after one attempt instead of botocore's several, with back-off.
FAIL_FAST = {"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, and credentials for it in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # Never ask an instance-metadata address for credentials, nor read the developer's profiles.
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@dataclass
class Bucket:
    fs: Any
    name: str
    endpoint: str

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint}

    def upload(self, folder: Path, prefix: str = "images") -> str:
        for path in sorted(folder.iterdir()):
            self.fs.pipe_file(f"{self.name}/{prefix}/{path.name}", path.read_bytes())
        return self.url(prefix)

    def objects(self) -> dict[str, bytes]:
        return {key: self.fs.cat_file(key) for key in self.fs.find(self.name)}


@pytest.fixture
def bucket(s3_endpoint: str) -> Bucket:
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True, use_listings_cache=False)
    name = f"pipeline-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return Bucket(fs, name, s3_endpoint)


def _gray(folder: Path, names: list[str] = NATURAL) -> np.ndarray:
    images = []
    for name in names:
        pixels = iio.imread(folder / name).astype(np.float64)
        images.append(pixels[..., :3] @ LUMA if pixels.ndim == 3 else pixels)
    return np.stack(images)


def _oracle(folder: Path) -> np.ndarray:
    return np.stack([ndimage.convolve(image, EDGE, mode="reflect") for image in _gray(folder)])


def _job(inputs: str, output: str, *, input_options: Any = None, output_options: Any = None, **execution: Any) -> dict:
    job: dict[str, Any] = {
        "input": {"paths": inputs},
        "steps": [{"convolve": {"kernel": "edge"}}],
        "output": {"path": output},
        "execution": {"scheduler": "threads", "workers": 2, **execution},
    }
    if input_options is not None:
        job["input"]["storage_options"] = input_options
    if output_options is not None:
        job["output"]["storage_options"] = output_options
    return job


def _remote_store(url: str, bucket: Bucket) -> tuple[np.ndarray, dict, list[str]]:
    group = zarr.open_group(url, mode="r", storage_options=bucket.options)
    return group["0"][:], dict(group.attrs["pipeline"]), [str(s) for s in group["sources"][:]]


def _local_reference(folder: Path, tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path]) -> np.ndarray:
    store = tmp_path / "local.zarr"
    assert_ok(run_cli("run", write_config(_job(str(folder / "*.png"), str(store)), "local.yaml")))
    return read_store(store)[0]


def _subprocess(*args: Any, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline …`` as a user starts it, with this checkout first on the path."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=300,
    )


def test_s3_run_matches_the_oracle_and_a_local_run_and_records_no_credential(
    bucket: Bucket, small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any],
    write_config: Callable[..., Path],
) -> None:
    folder = small_images()
    images = bucket.upload(folder)
    store = bucket.url("results/edge.zarr")
    # Credentials given in the job file (from the environment) as well: they must be redacted.
    secrets = {"key": "${AWS_ACCESS_KEY_ID}", "secret": "${AWS_SECRET_ACCESS_KEY}"}
    job = _job(
        f"{images}/*.png", store, input_options={**bucket.options, **secrets},
        output_options={**bucket.options, **secrets}, scheduler="processes", batch_size=2,
    )
    done = _subprocess("run", write_config(job), "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ACCESS_KEY not in done.stdout + done.stderr and SECRET_KEY not in done.stdout + done.stderr

    stored, provenance, sources = _remote_store(store, bucket)
    np.testing.assert_allclose(stored, _oracle(folder), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(stored, _local_reference(folder, tmp_path, run_cli, write_config))
    assert sources == [f"{images}/{name}" for name in NATURAL]
    assert provenance["status"] == "complete"
    assert provenance["config"]["input"]["storage_options"] == {
        "endpoint_url": bucket.endpoint, "key": "<redacted>", "secret": "<redacted>",
    }
    objects = bucket.objects()
    assert f"{bucket.name}/results/edge.zarr.lock" not in objects  # released
    assert any(key.endswith("edge.zarr/zarr.json") for key in objects)
    for key, data in objects.items():
        for credential in CREDENTIALS:
            assert credential not in data, f"{credential!r} found in {key}"

    # inspect reads the store with options from the environment (fsspec's FSSPEC_S3_* variables).
    shown = _subprocess("inspect", store, "--json", cwd=tmp_path, env={"FSSPEC_S3_ENDPOINT_URL": bucket.endpoint})
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["progress"] == "4/4 images written"


def test_export_and_preview_read_a_remote_store(
    bucket: Bucket, small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any],
    write_config: Callable[..., Path],
) -> None:
    folder = small_images()
    images = bucket.upload(folder)
    store = bucket.url("edge.zarr")
    assert_ok(run_cli("run", write_config(_job(images, store, input_options=bucket.options, output_options=bucket.options))))
    option = ("--storage-option", f"endpoint_url={bucket.endpoint}")
    config = write_config(_job(images, str(tmp_path / "planned.zarr"), input_options=bucket.options), "plan.yaml")
    validated = run_cli("validate", config)
    assert_ok(validated)
    assert "valid: 4 input files" in validated.stdout
    assert_ok(run_cli("plan", config))

    shown = run_cli("inspect", store, *option)
    assert_ok(shown)
    assert "complete" in shown.stdout and f"{images}/img1.png" in shown.stdout

    exported = run_cli("export", store, tmp_path / "png", "--format", "tiff", "--index", "0:2", *option)
    assert_ok(exported)
    written = sorted((tmp_path / "png").iterdir())
    assert [path.name for path in written] == ["0_img1.tif", "1_img2.tif"]
    np.testing.assert_allclose(iio.imread(written[1]), _oracle(folder)[1], rtol=1e-5, atol=1e-3)

    sheet_path = tmp_path / "sheet.png"
    assert_ok(run_cli("preview", store, "-o", sheet_path, "--cell", "32", *option))
    sheet = iio.imread(sheet_path)
    assert sheet.shape == (64, 128, 3)
    # The sources row is read from the bucket with the recorded endpoint and the environment's keys.
    assert sheet[:32].std() > 10


def test_remote_store_resumes_after_a_failure_and_a_rerun_of_a_complete_one_does_nothing(
    bucket: Bucket, small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any],
    write_config: Callable[..., Path],
) -> None:
    folder = small_images()
    images = bucket.upload(folder)
    good = bucket.fs.cat_file(f"{bucket.name}/images/img3.png")
    bucket.fs.pipe_file(f"{bucket.name}/images/img3.png", b"not a png at all")  # the third in natural order
    store = bucket.url("resume.zarr")
    config = write_config(_job(f"{images}/*.png", store, input_options=bucket.options, output_options=bucket.options, batch_size=1))

    assert_error(run_cli("run", config), 3, "img3.png")
    _, provenance, _ = _remote_store(store, bucket)
    group = zarr.open_group(store, mode="r", storage_options=bucket.options)
    assert provenance["status"] == "failed" and group["ledger/done"][:].tolist() == [1, 1, 0, 0]

    bucket.fs.pipe_file(f"{bucket.name}/images/img3.png", good)
    finished = run_cli("run", config, "--log-format", "json")
    assert_ok(finished)
    end = [json.loads(line) for line in finished.stdout.splitlines()][-1]
    assert (end["event"], end["processed"], end["skipped"]) == ("end", 2, 2)
    stored, provenance, _ = _remote_store(store, bucket)
    assert provenance["status"] == "complete"
    np.testing.assert_allclose(stored, _oracle(folder), rtol=1e-5, atol=1e-3)

    again = run_cli("run", config, "--log-format", "json")
    assert_ok(again)
    logged = [json.loads(line) for line in again.stdout.splitlines()]
    assert logged[-1]["processed"] == 0 and not [event for event in logged if event["event"] == "warning"]
    np.testing.assert_array_equal(_remote_store(store, bucket)[0], stored)

    # A source replaced since it was processed is reported from its object's size and time, not reused silently.
    bucket.fs.pipe_file(f"{bucket.name}/images/img1.png", bucket.fs.cat_file(f"{bucket.name}/images/img10.png"))
    changed = run_cli("run", config, "--log-format", "json")
    assert_ok(changed)
    warnings = [json.loads(line) for line in changed.stdout.splitlines() if '"warning"' in line]
    assert warnings and warnings[0]["changed"] == [f"{images}/img1.png"]


def test_memory_urls_for_inputs_and_store(
    small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    folder = small_images()
    memory = fsspec.filesystem("memory")
    root = f"/job-{uuid.uuid4().hex}"
    for path in folder.iterdir():
        memory.pipe_file(f"{root}/images/{path.name}", path.read_bytes())
    store = f"memory://{root}/out.zarr"
    assert_ok(run_cli("run", write_config(_job(f"memory://{root}/images", store))))
    group = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(group["0"][:], _local_reference(folder, tmp_path, run_cli, write_config))
    assert [str(s).rsplit("/", 1)[-1] for s in group["sources"][:]] == NATURAL
    assert not memory.exists(f"{root}/out.zarr.lock")


def test_file_urls_are_local_paths(
    small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    folder = small_images()
    store = tmp_path / "url.zarr"
    assert_ok(run_cli("run", write_config(_job(f"file://{folder}/*.png", f"file://{store}"))))
    stored, provenance, sources = read_store(store)
    np.testing.assert_array_equal(stored, _local_reference(folder, tmp_path, run_cli, write_config))
    assert sources == [str(folder / name) for name in NATURAL]
    assert provenance["config"]["output"]["path"] == str(store)
    assert_ok(run_cli("inspect", f"file://{store}"))


# --------------------------------------------------------------------------------------------
# one clear line and the documented exit code (docs/errors.md, "Remote paths and stores")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_input_endpoint(tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path], s3_endpoint: str) -> None:
    options = {"endpoint_url": f"http://127.0.0.1:{_closed_port()}", **FAIL_FAST}
    result = run_cli("run", write_config(_job("s3://nowhere/images/*.png", str(tmp_path / "o.zarr"), input_options=options)))
    assert_error(result, 3, "input.paths: cannot list 's3://nowhere/images/*.png': cannot reach the endpoint")


def test_unreachable_output_endpoint(
    small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path], s3_endpoint: str
) -> None:
    options = {"endpoint_url": f"http://127.0.0.1:{_closed_port()}", **FAIL_FAST}
    result = run_cli("run", write_config(_job(str(small_images()), "s3://nowhere/o.zarr", output_options=options)))
    assert_error(result, 4, "cannot create the lock 's3://nowhere/o.zarr.lock': cannot reach the endpoint")


def test_no_credentials(
    bucket: Bucket, small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any],
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = bucket.upload(small_images())
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # A fresh filesystem instance: cached ones already hold the credentials.
    options = {**bucket.options, "skip_instance_cache": True}
    result = run_cli("run", write_config(_job(images, str(tmp_path / "o.zarr"), input_options=options)))
    assert_error(result, 3, f"input.paths: cannot list {images!r}: no credentials found")


def test_missing_bucket_for_the_store(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    result = run_cli("run", write_config(_job(str(small_images()), "s3://no-such-bucket-here/o.zarr", output_options=bucket.options)))
    assert_error(result, 4, "cannot create the lock 's3://no-such-bucket-here/o.zarr.lock': not found")


def test_missing_filesystem_package(
    tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    result = run_cli("run", write_config(_job("gs://bucket/images/*.png", str(tmp_path / "o.zarr"))))
    assert_error(result, 3, "input.paths: 'gs://bucket/images/*.png' needs the gcsfs package: pip install gcsfs")


@pytest.mark.parametrize(("side", "exit_code"), [("input", 3), ("output", 4)])
def test_unknown_protocol(
    side: str, exit_code: int, small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any],
    write_config: Callable[..., Path],
) -> None:
    inputs = "s4://bucket/*.png" if side == "input" else str(small_images())
    output = "s4://bucket/o.zarr" if side == "output" else str(tmp_path / "o.zarr")
    result = run_cli("run", write_config(_job(inputs, output)))
    assert_error(result, exit_code, f"{side}.path", "unknown protocol 's4'")


def test_a_password_in_a_url(run_cli: Callable[..., Any], write_config: Callable[..., Path]) -> None:
    result = run_cli("run", write_config(_job("s3://me:topsecretpw@bucket/*.png", "o.zarr")))
    line = assert_error(result, 2, "has a password in it")
    assert "topsecretpw" not in line


def test_a_busy_remote_store(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now", "touched": 0}
    bucket.fs.pipe_file(f"{bucket.name}/busy.zarr.lock", json.dumps(owner).encode())
    result = run_cli("run", write_config(_job(str(small_images()), bucket.url("busy.zarr"), output_options=bucket.options)))
    assert_error(result, 5, f"pid {os.getpid()}", f"remove 's3://{bucket.name}/busy.zarr.lock'")


def test_a_prefix_holding_other_objects_is_never_overwritten(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    bucket.fs.pipe_file(f"{bucket.name}/theirs/data.csv", b"1,2,3")
    job = _job(str(small_images()), bucket.url("theirs"), output_options=bucket.options)
    assert_error(run_cli("run", write_config(job), "--overwrite"), 4, "not a store written by this pipeline")
    assert bucket.fs.cat_file(f"{bucket.name}/theirs/data.csv") == b"1,2,3"


def test_a_store_object_that_is_a_file(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    bucket.fs.pipe_file(f"{bucket.name}/file.zarr", b"x")
    result = run_cli("run", write_config(_job(str(small_images()), bucket.url("file.zarr"), output_options=bucket.options)))
    assert_error(result, 4, "is an object (a file)")


def test_a_store_inside_the_input_prefix(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    images = bucket.upload(small_images())
    job = _job(f"{images}/*.png", f"{images}/out.zarr", input_options=bucket.options, output_options=bucket.options)
    assert_error(run_cli("run", write_config(job)), 4, "is inside the input folder")


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [({"tile": 512}, "input.tile: 's3://"), ({"layout": "volume"}, "input.layout: volume reads local TIFF stacks")],
)
def test_tiles_and_volumes_are_local_only(
    setting: dict, fragment: str, bucket: Bucket, tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path],
) -> None:
    folder = tmp_path / "tiffs"
    folder.mkdir()
    iio.imwrite(folder / "flat.tif", np.zeros((8, 8), dtype=np.uint8))
    iio.imwrite(folder / "stack.tif", np.zeros((3, 8, 8), dtype=np.uint8))
    images = bucket.upload(folder)
    name = "stack.tif" if setting.get("layout") == "volume" else "flat.tif"
    job = _job(f"{images}/{name}", str(tmp_path / "o.zarr"), input_options=bucket.options)
    job["input"].update(setting)
    assert_error(run_cli("run", write_config(job)), 3, fragment)


def test_inspect_of_a_missing_remote_store(bucket: Bucket, run_cli: Callable[..., Any]) -> None:
    result = run_cli("inspect", bucket.url("absent.zarr"), "--storage-option", f"endpoint_url={bucket.endpoint}")
    assert_error(result, 3, f"store 's3://{bucket.name}/absent.zarr' does not exist")


def test_a_storage_option_flag_without_a_value(run_cli: Callable[..., Any]) -> None:
    assert_error(run_cli("inspect", "s3://b/x.zarr", "--storage-option", "anon"), 2, "expected key=value")


def test_access_denied_to_the_store(
    small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    def denied(self: Any, path: str, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("Access Denied")

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", denied)
    store = f"memory://denied-{uuid.uuid4().hex}/o.zarr"
    result = run_cli("run", write_config(_job(str(small_images()), store)))
    assert_error(result, 4, f"cannot create the lock '{store}.lock': access denied (Access Denied)")


def test_connection_lost_while_writing_leaves_a_resumable_store(
    small_images: Callable[..., Path], tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import EndpointConnectionError
    from fsspec.implementations.memory import MemoryFileSystem

    plain_pipe = MemoryFileSystem.pipe_file

    def lost_at_the_third_image(self: Any, path: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
        if "/0/c/2/" in path:  # the chunk of image 2 of the result
            raise EndpointConnectionError(endpoint_url="http://storage.invalid/")
        return plain_pipe(self, path, value, *args, **kwargs)

    folder = small_images()
    store = f"memory://lost-{uuid.uuid4().hex}/o.zarr"
    config = write_config(_job(str(folder), store, batch_size=1))
    monkeypatch.setattr(MemoryFileSystem, "pipe_file", lost_at_the_third_image)
    failed = run_cli("run", config)
    assert_error(failed, 4, f"cannot write store '{store}': cannot reach the endpoint", "rerun to resume")
    group = zarr.open_group(store, mode="r")
    assert group["ledger/done"][:].tolist() == [1, 1, 0, 0] and group.attrs["pipeline"]["status"] == "failed"

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", plain_pipe)
    assert_ok(run_cli("run", config))
    np.testing.assert_array_equal(
        zarr.open_group(store, mode="r")["0"][:], _local_reference(folder, tmp_path, run_cli, write_config)
    )


def test_multi_page_tiffs_on_s3_into_a_sharded_store(
    bucket: Bucket, tmp_path: Path, run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    """Each page read from the object in one request; the sharded store written shard by shard."""
    import tifffile

    folder = tmp_path / "stacks"
    folder.mkdir()
    photo = iio.imread(REPO / "data" / "samples" / "02-camera.jpg").astype(np.uint16)
    pages = {name: np.stack([photo[k * 30 : k * 30 + 40, k * 20 : k * 20 + 56] for k in range(offset, offset + 3)])
             for name, offset in (("a.tif", 0), ("b.tif", 3))}
    for name, stack in pages.items():
        tifffile.imwrite(folder / name, stack, photometric="minisblack")
    inputs = bucket.upload(folder, "stacks")
    store = bucket.url("out.zarr")
    job = _job(inputs, store, input_options=bucket.options, output_options=bucket.options)
    job["output"]["shards"] = 4
    assert_ok(run_cli("run", write_config(job)))
    values, provenance, sources = _remote_store(store, bucket)
    assert [s.rsplit("/", 1)[-1] for s in sources] == [f"{n}#{k}" for n in ("a.tif", "b.tif") for k in range(3)]
    expected = [ndimage.convolve(page.astype(np.float64), EDGE, mode="reflect") for n in ("a.tif", "b.tif") for page in pages[n]]
    np.testing.assert_allclose(values, np.stack(expected), rtol=1e-5, atol=1e-2)
    assert zarr.open_group(store, mode="r", storage_options=bucket.options)["0"].shards == (4, 40, 56)
    assert provenance["status"] == "complete"


def test_a_grouped_store_on_s3(
    bucket: Bucket, small_images: Callable[..., Path], run_cli: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    folder = small_images(("a1.png", "a2.png"))
    small_images(("b1.png",), size=(40, 30), folder="images")
    store = bucket.url("grouped.zarr")
    job = _job(bucket.upload(folder), store, input_options=bucket.options, output_options=bucket.options)
    job["input"]["shapes"] = "group"
    assert_ok(run_cli("run", write_config(job)))
    root = zarr.open_group(store, mode="r", storage_options=bucket.options)
    assert root.attrs["pipeline"]["groups"] == {"48x64": [48, 64], "30x40": [30, 40]}
    assert root.attrs["pipeline"]["status"] == "complete"
    np.testing.assert_allclose(
        _remote_store(f"{store}/48x64", bucket)[0], _oracle_of(folder, ["a1.png", "a2.png"]), rtol=1e-5, atol=1e-3
    )
    shown = run_cli("inspect", store, "-S", f"endpoint_url={bucket.endpoint}", "--json")
    assert_ok(shown)
    assert [group["written"] for group in yaml.safe_load(shown.stdout)["groups"]] == [2, 1]


def _oracle_of(folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([ndimage.convolve(image, EDGE, mode="reflect") for image in _gray(folder, names)])
