"""Distributed backends with real processes: a `dask scheduler` and `dask worker`s on localhost,
a LocalCluster, and the errors of schedulers that cannot be reached or are not installed.

Every run must store exactly the bytes of a ``--scheduler sync`` run of the same job, also when a
worker is killed in the middle of it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr

pytest.importorskip("distributed")
from distributed import Client  # noqa: E402

from pipeline.sinks.lock import lock_path  # noqa: E402
from helpers import write_slow_inputs  # noqa: E402

BIN = Path(sys.executable).parent
PIPELINE = BIN / "pipeline"
DASK = BIN / "dask"
ENV = {**os.environ, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
IMAGES = 30
BATCH = 6


def cli(*args: Any, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIPELINE), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def result(store: Path) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")["0"][:]


def status(store: Path) -> str:
    return zarr.open_group(str(store), mode="r").attrs["pipeline"]["status"]


def done_count(store: Path) -> int:
    try:
        return int(zarr.open_array(str(store / "ledger" / "done"), mode="r")[:].sum())
    except Exception:  # not created yet
        return -1


def assert_same_bytes(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes(), "result differs from the --scheduler sync run"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# --------------------------------------------------------------------------------------------
# a scheduler and two workers, as separate processes


@dataclass
class Cluster:
    address: str
    logs: Path
    cwd: Path  # the workers' working directory: not the CLI's
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # a file, not a pipe nobody reads
        try:
            return subprocess.Popen([str(DASK), *args], cwd=self.cwd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def start_scheduler(self, port: int) -> None:
        self.scheduler = self._spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")

    def start_worker(self) -> subprocess.Popen[bytes]:
        # --no-nanny: the process we start is the worker itself, so SIGKILL really loses it.
        worker = self._spawn(
            f"worker-{len(self.workers)}",
            "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
            "--memory-limit", "0", "--no-nanny",
        )
        self.workers.append(worker)
        return worker

    def ensure_workers(self, count: int = 2, timeout: float = 60) -> None:
        """Start replacements for dead workers, then wait until the scheduler sees ``count``."""
        alive = [worker for worker in self.workers if worker.poll() is None]
        for _ in range(count - len(alive)):
            self.start_worker()
        with Client(self.address, timeout=timeout) as client:
            deadline = time.monotonic() + timeout
            while len(client.scheduler_info().get("workers", {})) != count:
                if time.monotonic() > deadline:
                    pytest.fail(f"scheduler does not see {count} workers; logs in {self.logs}")
                time.sleep(0.05)

    def alive_workers(self) -> list[subprocess.Popen[bytes]]:
        return [worker for worker in self.workers if worker.poll() is None]

    def shutdown(self) -> None:
        for worker in self.workers:
            stop(worker)
        if self.scheduler is not None:
            stop(self.scheduler)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    (root / "workers").mkdir()
    port = free_port()
    running = Cluster(address=f"tcp://127.0.0.1:{port}", logs=root, cwd=root / "workers")
    try:
        running.start_scheduler(port)
        running.start_worker()
        running.start_worker()
        running.ensure_workers(2)
        yield running
    finally:
        running.shutdown()


# --------------------------------------------------------------------------------------------
# the job: slow enough per image (a kernel reaching past the image: scipy, float64) that a run
# on two workers lasts a few seconds; its sync run is the reference


@dataclass(frozen=True)
class Job:
    root: Path
    config: Path
    reference: Path


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("job")
    write_slow_inputs(root, IMAGES)
    # Absolute paths: the workers run in another directory (relative paths: see the xfail below).
    config = root / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(root / "images" / "*.png")},
                "steps": [{"convolve": {"kernel": str(root / "kernel.npy"), "strategy": "direct"}}],
                "output": {"path": str(root / "reference.zarr")},
                "execution": {"scheduler": "sync", "batch_size": BATCH, "compute_dtype": "float64"},
            }
        ),
        encoding="utf-8",
    )
    done = cli("run", config, cwd=root)
    assert done.returncode == 0, done.stderr
    return Job(root, config, root / "reference.zarr")


def test_tcp_scheduler_matches_sync(cluster: Cluster, job: Job) -> None:
    cluster.ensure_workers(2)
    store = job.root / "tcp.zarr"
    done = cli(
        "run", job.config, "--scheduler", cluster.address, "--set", f"output.path={store}", "--log-format", "json",
        cwd=job.root,
    )
    assert done.returncode == 0, done.stderr
    log = events(done.stdout)
    assert log[0]["event"] == "start" and log[0]["scheduler"] == cluster.address
    assert (log[-1]["event"], log[-1]["processed"], log[-1]["failed"]) == ("end", IMAGES, 0)
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(job.reference))
    assert not list(store.rglob("*.partial"))
    assert not lock_path(str(store)).exists()


def test_run_survives_a_killed_worker(cluster: Cluster, job: Job) -> None:
    cluster.ensure_workers(2)
    store = job.root / "lost-worker.zarr"
    run = subprocess.Popen(
        [str(PIPELINE), "run", str(job.config), "--scheduler", cluster.address, "--set", f"output.path={store}",
         "--log-format", "json"],
        cwd=job.root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while done_count(store) < BATCH:
            assert run.poll() is None, f"run ended before its first batch: {run.communicate()}"
            assert time.monotonic() < deadline, "no batch recorded in time"
            time.sleep(0.01)
        victim = cluster.alive_workers()[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed_at = done_count(store)
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        cluster.ensure_workers(2)  # a replacement, for the tests that follow
    assert killed_at < IMAGES, "the run finished before a worker could be killed; give it more work"
    assert run.returncode == 0, err
    log = events(out)
    assert (log[-1]["event"], log[-1]["processed"], log[-1]["failed"]) == ("end", IMAGES, 0)
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(job.reference))


def test_local_cluster_matches_sync_and_shows_the_dashboard(job: Job) -> None:
    store = job.root / "local.zarr"
    done = cli("run", job.config, "--scheduler", "local", "--workers", "2", "--set", f"output.path={store}", cwd=job.root)
    assert done.returncode == 0, done.stderr
    assert "dashboard" in done.stderr
    assert f"complete: {IMAGES} images processed" in done.stdout
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(job.reference))


@pytest.fixture
def small_job(tmp_path: Path) -> Path:
    """A few tiny images and a fast kernel, with relative paths; its sync run is in sync.zarr."""
    (tmp_path / "images").mkdir()
    for index in range(1, 5):
        pixels = np.random.default_rng(50 + index).integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
        iio.imwrite(tmp_path / "images" / f"img{index}.png", pixels)
    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": "images/*.png"},
                "steps": [{"convolve": {"kernel": "edge"}}],
                "output": {"path": "sync.zarr"},
                "execution": {"scheduler": "sync", "batch_size": 2},
            }
        ),
        encoding="utf-8",
    )
    done = cli("run", config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return config


def test_relative_paths_work_on_workers_in_another_directory(cluster: Cluster, small_job: Path) -> None:
    cluster.ensure_workers(2)
    root = small_job.parent
    done = cli("run", small_job, "--scheduler", cluster.address, "--set", "output.path=tcp.zarr", cwd=root)
    assert done.returncode == 0, done.stderr
    assert_same_bytes(result(root / "tcp.zarr"), result(root / "sync.zarr"))
    assert not (cluster.cwd / "tcp.zarr").exists()


def test_unreadable_image_on_a_worker_is_an_input_error(cluster: Cluster, small_job: Path) -> None:
    cluster.ensure_workers(2)
    root = small_job.parent
    (root / "images" / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # not the probed first file
    failed = cli(
        "run", small_job, "--scheduler", cluster.address, "--set", f"input.paths={root / 'images' / '*.png'}",
        "--set", f"output.path={root / 'broken.zarr'}", cwd=root,
    )
    # The InputError must survive distributed's (tblib) pickling: not exit 1 "internal error".
    assert failed.returncode == 3, failed.stderr
    assert "img3.png" in failed.stderr and "internal error" not in failed.stderr


def test_unreachable_scheduler_is_a_config_error(job: Job) -> None:
    began = time.monotonic()
    failed = cli(
        "run", job.config, "--scheduler", "tcp://127.0.0.1:1", "--set", "execution.connect_timeout=1",
        "--set", "output.path=unreachable.zarr", cwd=job.root, timeout=60,
    )
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("error:") and "tcp://127.0.0.1:1" in lines[0]
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    assert time.monotonic() - began < 30


def test_a_layer_stack_on_the_cluster_matches_threads(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure_workers(2)
    images = tmp_path / "images"
    images.mkdir()
    for index in range(6):
        iio.imwrite(images / f"img{index}.png", np.random.default_rng(index).integers(0, 256, size=(40, 52, 3), dtype=np.uint8))
    np.savez(tmp_path / "model.npz", **{"conv1.weight": np.random.default_rng(1).standard_normal((4, 3, 5, 5)),
                                        "conv1.bias": np.arange(4.0)})
    config = tmp_path / "layers.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(images), "color": "keep"},
                "steps": [{"layer": {"weights": str(tmp_path / "model.npz"), "name": "conv1"}}, {"activation": "relu"},
                          {"pool": {"function": "max", "size": 2}}, {"layer": {"weights": "sobel", "mode": "valid"}}],
                "output": {"path": str(tmp_path / "threads.zarr")},
                "execution": {"batch_size": 2},
            }
        ),
        encoding="utf-8",
    )
    assert cli("run", config, cwd=tmp_path).returncode == 0
    done = cli("run", config, "--scheduler", cluster.address, "--set", f"output.path={tmp_path / 'tcp.zarr'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    threads = zarr.open_group(str(tmp_path / "threads.zarr"), mode="r")["0"][:]
    assert threads.shape == (6, 2, 18, 24)
    assert np.array_equal(zarr.open_group(str(tmp_path / "tcp.zarr"), mode="r")["0"][:], threads)
