"""Kill, rerun, append, lock out: the console command as cron runs it, in real subprocesses.

An uninterrupted run is the reference. Runs killed with SIGKILL at several points of the
ledger (polled from the store while the run works) are finished by a rerun, which must leave
exactly the reference's bytes, a complete status, no temporary chunk files and no lock.

Each image is made slow on purpose (a 97x31 random kernel on 48x64 images, float64, forced
``direct``: the kernel reaches past the image, so every image is a scipy.ndimage correlation of
≈ 0.1 s), so that a batch of 3 lasts long enough to be caught in the act.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from helpers import PROGRESS_LINE
from pipeline.sinks.lock import lock_path

PIPELINE = Path(sys.executable).with_name("pipeline")
ENV = {**os.environ, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
IMAGES = 30
BATCH = 3
LUMA = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------
# helpers


def cli(*args: Any, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIPELINE), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def events(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object (fails on any line that is not one)."""
    parsed = []
    for line in stdout.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"stdout line is not JSON: {line!r}\n--- stdout ---\n{stdout}")
    return parsed


def done_count(store: Path) -> int:
    """Images recorded in the store's ledger; -1 while the store does not exist yet."""
    try:
        return int(zarr.open_array(str(store / "ledger" / "done"), mode="r")[:].sum())
    except Exception:  # not created yet
        return -1


def status(store: Path) -> str | None:
    """The status in the store's provenance; None while the store is not (fully) created."""
    try:
        meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}).get("pipeline", {}).get("status")


def result(store: Path) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")["0"][:]


def sources(store: Path) -> list[str]:
    return [str(name) for name in zarr.open_group(str(store), mode="r")["sources"][:]]


def partial_files(store: Path) -> list[Path]:
    return sorted(store.rglob("*.partial"))


def assert_same_bytes(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes(), "stored result differs from the uninterrupted run"


def wait_until(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (exit {proc.returncode}) before {what}\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: no zombie whose pid would still look alive
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``pipeline ARGS`` in the background; whatever is still running at teardown is killed."""
    started: list[subprocess.Popen[str]] = []

    def launch(*args: Any, cwd: Path = tmp_path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(PIPELINE), *map(str, args)],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def write_rgb(path: Path, seed: int, shape: tuple[int, int] = (48, 64)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    iio.imwrite(path, pixels)


def gray(path: Path) -> np.ndarray:
    return iio.imread(path).astype(np.float64) @ LUMA


# --------------------------------------------------------------------------------------------
# the slow job and its uninterrupted reference run


@dataclass(frozen=True)
class SlowJob:
    root: Path
    config: Path
    reference: Path  # the store of the uninterrupted run
    reference_stdout: str
    reference_stderr: str

    def run_args(self, store: Path) -> list[Any]:
        return ["run", self.config, "--set", f"output.path={store}"]


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> SlowJob:
    root = tmp_path_factory.mktemp("slow-job")
    images = root / "images"
    images.mkdir()
    for index in range(1, IMAGES + 1):
        write_rgb(images / f"img{index}.png", seed=index)
    np.save(root / "kernel.npy", np.random.default_rng(99).standard_normal((97, 31)))
    config = root / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(images / "*.png")},
                "steps": [{"convolve": {"kernel": str(root / "kernel.npy"), "strategy": "direct"}}],
                "output": {"path": str(root / "reference.zarr")},
                "execution": {"scheduler": "sync", "batch_size": BATCH, "compute_dtype": "float64"},
            }
        ),
        encoding="utf-8",
    )
    done = cli("run", config, "--log-format", "json", cwd=root)
    assert done.returncode == 0, done.stderr
    return SlowJob(root, config, root / "reference.zarr", done.stdout, done.stderr)


# --------------------------------------------------------------------------------------------
# killed runs


# Chunks of 6 images filled by batches of 3: a kill leaves a chunk half written, which the rerun completes.
HALF_CHUNKS = ["--set", f"output.images_per_chunk={2 * BATCH}"]


@pytest.mark.parametrize(
    ("kill_after", "rerun_flags", "inspect", "chunking"),
    [
        pytest.param(BATCH, [], False, [], id="after-first-batch"),
        pytest.param(IMAGES // 2, ["--resume"], True, [], id="middle-with-resume"),
        pytest.param(IMAGES - BATCH, [], False, [], id="during-last-batch"),
        pytest.param(BATCH, [], False, HALF_CHUNKS, id="chunks-of-two-batches"),
    ],
)
def test_killed_run_is_finished_by_a_rerun(
    slow_job: SlowJob, tmp_path: Path, start: Callable[..., subprocess.Popen[str]],
    kill_after: int, rerun_flags: list[str], inspect: bool, chunking: list[str],
) -> None:
    store = tmp_path / "killed.zarr"
    args = [*slow_job.run_args(store), *chunking]
    victim = start(*args)
    wait_until(victim, lambda: done_count(store) >= kill_after, f"{kill_after} images in the ledger")
    kill(victim)

    done = done_count(store)
    assert kill_after <= done < IMAGES, f"the run finished ({done} images) before it could be killed"
    if kill_after == IMAGES - BATCH:
        assert done == IMAGES - BATCH  # killed while the last batch was being computed
    assert status(store) == "running"
    lock = lock_path(str(store))
    assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == victim.pid  # left behind by the dead run
    # A chunk write cut short leaves zarr's temporary file; plant one so its removal is certain.
    leftover = store / "0" / "c" / f"0.{uuid.uuid4().hex}.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a chunk")

    if inspect:
        shown = cli("inspect", store, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert f"{done}/{IMAGES} images written" in shown.stdout
        assert re.search(r"status\s+running", shown.stdout), shown.stdout

    rerun = cli(*args, *rerun_flags, "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr  # not 5: the dead run's lock was taken over
    log = events(rerun.stdout)
    assert log[0]["event"] == "start" and log[0]["done"] == done and log[0]["pending"] == IMAGES - done
    end = log[-1]
    assert end["event"] == "end"
    assert (end["processed"], end["skipped"], end["failed"]) == (IMAGES - done, done, 0)

    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))
    assert zarr.open_array(str(store / "0"), mode="r").chunks[0] == (2 * BATCH if chunking else BATCH)
    assert sources(store) == sources(slow_job.reference)
    assert partial_files(store) == []
    assert not lock.exists()
    assert done_count(store) == IMAGES


def test_a_run_killed_inside_a_batch_loses_only_its_unfinished_chunks(
    slow_job: SlowJob, tmp_path: Path, start: Callable[..., subprocess.Popen[str]]
) -> None:
    """Chunks of one image in batches of 15: the chunks a killed batch finished are not computed again."""
    store = tmp_path / "inside.zarr"
    args = [*slow_job.run_args(store), "--set", "execution.batch_size=15", "--set", "output.images_per_chunk=1"]

    def chunk_files() -> list[int]:  # images whose chunk is on disk (a chunk is renamed into place whole)
        return sorted(int(path.name) for path in (store / "0" / "c").glob("*") if (path / "0" / "0").is_file())

    victim = start(*args)
    wait_until(victim, lambda: (store / "0" / "c").is_dir() and len(chunk_files()) >= 4, "4 chunks on disk")
    kill(victim)
    on_disk = chunk_files()
    assert done_count(store) == 0, "the first batch ended before the run could be killed"
    assert len(on_disk) < 15 and max(on_disk) < 15  # inside the first batch (in dask's order, not the images')

    # one chunk may have landed without its record (killed in between): that one is written again
    shown = cli("inspect", store, cwd=tmp_path)
    written = int(re.search(r"(\d+)/30 images written", shown.stdout).group(1))
    assert written in (len(on_disk) - 1, len(on_disk)), shown.stdout

    rerun = cli(*args, "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    log = events(rerun.stdout)
    assert log[0]["event"] == "start" and log[0]["done"] == written and log[0]["pending"] == IMAGES - written
    assert (log[-1]["processed"], log[-1]["skipped"]) == (IMAGES - written, written)
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))
    assert done_count(store) == IMAGES


def test_rerun_of_a_complete_store_processes_nothing(slow_job: SlowJob, tmp_path: Path) -> None:
    store = tmp_path / "complete.zarr"
    shutil.copytree(slow_job.reference, store)
    chunks = {path: path.stat().st_mtime_ns for path in (store / "0").rglob("*") if path.is_file()}
    assert len(chunks) == zarr.open_array(str(store / "0"), mode="r").nchunks + 1  # every chunk and the metadata

    rerun = cli(*slow_job.run_args(store), "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    end = events(rerun.stdout)[-1]
    assert end["event"] == "end"
    assert (end["images"], end["processed"], end["skipped"], end["failed"]) == (IMAGES, 0, IMAGES, 0)
    assert {path: path.stat().st_mtime_ns for path in chunks} == chunks
    assert sorted(path for path in (store / "0").rglob("*") if path.is_file()) == sorted(chunks)
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))


def test_rerun_with_another_kernel_needs_overwrite(slow_job: SlowJob, tmp_path: Path) -> None:
    store = tmp_path / "other-kernel.zarr"
    shutil.copytree(slow_job.reference, store)
    args = [*slow_job.run_args(store), "--set", "steps.0.convolve.kernel=edge"]

    refused = cli(*args, cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert "--overwrite" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))  # untouched
    assert not lock_path(str(store)).exists()

    replaced = cli(*args, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert status(store) == "complete"
    stored = result(store)
    assert stored.shape == (IMAGES, 48, 64)
    edge = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]])
    expected = ndimage.convolve(gray(Path(sources(store)[0])), edge, mode="reflect")
    np.testing.assert_allclose(stored[0], expected, rtol=1e-5, atol=1e-3)


def test_concurrent_run_on_the_same_store_fails_fast(
    slow_job: SlowJob, tmp_path: Path, start: Callable[..., subprocess.Popen[str]]
) -> None:
    store = tmp_path / "busy.zarr"
    args = slow_job.run_args(store)
    first = start(*args, "--log-format", "json")
    lock = lock_path(str(store))
    # Wait for the lock and for the store to be fully created under it: a second run arriving
    # while the first is inside create_store exits 4 ("not a store written by this pipeline")
    # instead of 5, since check_output_path looks at the store before taking the lock.
    wait_until(first, lambda: lock.exists() and status(store) == "running", "the first run's lock and store")

    began = time.monotonic()
    second = cli(*args, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - began
    assert second.returncode == 5, second.stderr
    assert "in use" in second.stderr and f"pid {first.pid}" in second.stderr
    assert second.stdout == ""
    assert elapsed < 20  # did not wait for the first run

    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert events(out)[-1]["processed"] == IMAGES
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))
    assert not lock.exists()


# --------------------------------------------------------------------------------------------
# event log


def test_json_log_of_a_full_run(slow_job: SlowJob) -> None:
    log = events(slow_job.reference_stdout)
    batches = IMAGES // BATCH
    assert [event["event"] for event in log] == ["start"] + ["batch"] * batches + ["end"]
    assert slow_job.reference_stderr == ""
    start_event, *batch_events, end = log
    assert (start_event["images"], start_event["pending"], start_event["done"]) == (IMAGES, IMAGES, 0)
    assert (start_event["batches"], start_event["batch_size"], start_event["scheduler"]) == (batches, BATCH, "sync")
    assert [(b["start"], b["stop"]) for b in batch_events] == [(i, i + BATCH) for i in range(0, IMAGES, BATCH)]
    assert [b["done"] for b in batch_events] == list(range(BATCH, IMAGES + 1, BATCH))
    assert batch_events[-1]["pending"] == 0
    for key in ("images", "processed", "skipped", "failed", "seconds", "images_per_second"):
        assert key in end, key
    assert (end["status"], end["images"], end["processed"], end["skipped"], end["failed"]) == ("complete", IMAGES, IMAGES, 0, 0)
    assert end["seconds"] > 0 and end["images_per_second"] > 0
    assert end["shape"] == [IMAGES, 48, 64] and end["dtype"] == "float32"


# --------------------------------------------------------------------------------------------
# a small fast job: append, quiet, config errors

KERNEL = np.random.default_rng(5).standard_normal((5, 5)).round(3)


@pytest.fixture
def fast_job(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3, 9):  # img3 .. img8
        write_rgb(images / f"img{index}.png", seed=100 + index, shape=(20, 24))
    config = tmp_path / "fast.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(images / "*.png")},
                "steps": [{"convolve": {"kernel": KERNEL.tolist()}}],
                "output": {"path": str(tmp_path / "fast.zarr"), "dtype": "float64"},
                "execution": {"scheduler": "sync", "batch_size": 2},
            }
        ),
        encoding="utf-8",
    )
    return config


def test_append_adds_only_new_files_and_keeps_changed_ones(fast_job: Path, tmp_path: Path) -> None:
    store = tmp_path / "fast.zarr"
    images = tmp_path / "images"
    first = cli("run", fast_job, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = result(store)
    old = [f"img{index}.png" for index in range(3, 9)]
    assert [Path(name).name for name in sources(store)] == old

    for name, seed in (("img12.png", 12), ("img1.png", 1), ("img2.png", 2)):  # before and after the old ones
        write_rgb(images / name, seed=seed, shape=(20, 24))

    refused = cli("run", fast_job, cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert "--append" in refused.stderr and "3 input files" in refused.stderr
    assert result(store).shape == before.shape

    appended = cli("run", fast_job, "--append", "--log-format", "json", cwd=tmp_path)
    assert appended.returncode == 0, appended.stderr
    end = events(appended.stdout)[-1]
    assert (end["event"], end["processed"], end["failed"]) == ("end", 3, 0)
    assert status(store) == "complete"
    names = sources(store)
    assert [Path(name).name for name in names] == old + ["img1.png", "img2.png", "img12.png"]
    stored = result(store)
    assert stored.shape == (9, 20, 24)
    assert_same_bytes(stored[:6], before)
    for index, name in enumerate(names):
        expected = ndimage.convolve(gray(Path(name)), KERNEL, mode="reflect")
        np.testing.assert_allclose(stored[index], expected, rtol=1e-9, atol=1e-9, err_msg=name)

    # An old file rewritten with other pixels is reported, and its stored result kept.
    changed = images / "img5.png"
    recorded = changed.stat().st_mtime_ns
    write_rgb(changed, seed=555, shape=(20, 24))
    os.utime(changed, ns=(recorded + 10**9, recorded + 10**9))
    rerun = cli("run", fast_job, "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    log = events(rerun.stdout)
    warnings = [event for event in log if event["event"] == "warning"]
    assert len(warnings) == 1 and "img5.png" in warnings[0]["message"]
    assert [Path(name).name for name in warnings[0]["changed"]] == ["img5.png"]
    assert (log[-1]["event"], log[-1]["processed"], log[-1]["skipped"]) == ("end", 0, 9)
    assert_same_bytes(result(store), stored)

    # A deleted one is reported as deleted, not as changed.
    (images / "img6.png").unlink()
    rerun = cli("run", fast_job, "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    warnings = [event for event in events(rerun.stdout) if event["event"] == "warning"]
    deleted = [event for event in warnings if "deleted" in event]
    assert len(deleted) == 1 and deleted[0]["message"].startswith("1 source file was deleted since it was processed")
    assert [Path(name).name for name in deleted[0]["deleted"]] == ["img6.png"]
    assert all("img6.png" not in event.get("changed", []) for event in warnings)


def test_quiet_run_prints_nothing(fast_job: Path, tmp_path: Path) -> None:
    done = cli("run", fast_job, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert status(tmp_path / "fast.zarr") == "complete"


def test_config_error_with_json_log(fast_job: Path, tmp_path: Path) -> None:
    failed = cli("run", fast_job, "--set", "execution.workers=0", "--log-format", "json", cwd=tmp_path)
    assert failed.returncode == 2
    (event,) = events(failed.stdout)
    assert event["event"] == "error" and event["exit_code"] == 2
    assert "execution.workers" in event["message"]
    assert "execution.workers" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "fast.zarr").exists()


def test_append_summary_counts_each_image_once(fast_job: Path, tmp_path: Path) -> None:
    assert cli("run", fast_job, cwd=tmp_path).returncode == 0
    write_rgb(tmp_path / "images" / "img1.png", seed=1, shape=(20, 24))
    appended = cli("run", fast_job, "--append", "--log-format", "json", cwd=tmp_path)
    assert appended.returncode == 0, appended.stderr
    end = events(appended.stdout)[-1]
    assert (end["images"], end["processed"], end["skipped"], end["shape"]) == (7, 1, 6, [7, 20, 24])


def test_a_log_file_gets_a_line_per_batch(fast_job: Path, tmp_path: Path) -> None:
    """Not a terminal (the run's stderr is a pipe here): plain lines, which --no-progress turns off."""
    done = cli("run", fast_job, "--set", "execution.batch_size=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(PROGRESS_LINE.match(line) for line in done.stderr.splitlines()), done.stderr
    lines = [line.split(" ", 1)[1] for line in done.stderr.splitlines()]  # without the timestamp
    assert len(lines) >= 2 and all(line.startswith("batch ") for line in lines), done.stderr
    assert lines[0].startswith(f"batch 1/{len(lines)}: images 0-3 written in ")
    assert "images/s" in lines[0] and "to do" in lines[0]
    quiet = cli("run", fast_job, "--overwrite", "--no-progress", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_says_what_is_safe_and_a_rerun_resumes(
    slow_job: SlowJob, tmp_path: Path, start: Callable[..., subprocess.Popen[str]], signum: int, exit_code: int
) -> None:
    store = tmp_path / "signalled.zarr"
    victim = start(*slow_job.run_args(store))
    wait_until(victim, lambda: done_count(store) >= BATCH, f"{BATCH} images in the ledger")
    victim.send_signal(signum)
    out, err = victim.communicate(timeout=60)
    assert victim.returncode == exit_code, err
    done = done_count(store)
    assert done < IMAGES, "the run finished before the signal"
    lines = [line for line in err.splitlines() if not re.search(r"\bbatch \d+/\d+:|\bresuming:", line)]
    assert lines == [f"interrupted: {done}/{IMAGES} images written; rerun the same command to resume"], err
    assert status(store) == "interrupted"
    assert not lock_path(str(store)).exists()
    rerun = cli(*slow_job.run_args(store), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(slow_job.reference))
