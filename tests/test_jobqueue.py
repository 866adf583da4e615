"""`execution.scheduler: slurm` against a real one-node SLURM (.ci/slurm-up), through the CLI.

Workers must run as SLURM jobs with the job's cluster options and the driver's Python, the store
must hold exactly the bytes of a ``threads`` run, a cancelled worker job must be replaced, and no
job may outlive the run, also one stopped with Ctrl-C. Where SLURM cannot be started (no root, not
installed), every test here is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
import zarr

from helpers import write_slow_inputs

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = os.environ.get("PIPELINE_SLURM_DIR", "/tmp/pipeline-slurm")
IMAGES = 12
BATCH = 3
# The slow job's single worker: one core and a memory request the node grants.
ONE_CORE = {"cores": 1, "processes": 1, "memory": "1GiB", "walltime": "00:10:00"}


def sh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a CLI run that reaches the one-node SLURM, started here if it is not up."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed: pip install -e '.[dev]'")
    up = subprocess.run(
        ["bash", str(REPO / ".ci" / "slurm-up"), SLURM_DIR], env={**os.environ, "SLURM_INSTALL": "0"},
        capture_output=True, text=True, timeout=180,
    )
    if up.returncode != 0:
        pytest.skip(f"no SLURM to run on: {(up.stderr.strip().splitlines() or ['slurm-up failed'])[-1]}")
    env = {
        **os.environ, "SLURM_CONF": f"{SLURM_DIR}/slurm.conf", "COLUMNS": "300", "PYTHONUNBUFFERED": "1",
        # A worker job gone for a second is lost (distributed waits 15 s): replacements come fast.
        "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s",
    }
    try:
        yield env
    finally:
        if up.stdout.strip() == "started":  # else .ci/run started it and stops it
            subprocess.run(["bash", str(REPO / ".ci" / "slurm-down"), SLURM_DIR], timeout=120)


@pytest.fixture(scope="module")
def partition(slurm: dict[str, str]) -> str:
    return sh("sinfo", "--noheader", "--format=%R", env=slurm).stdout.split()[0]


def cli(*args: Any, env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def start(*args: Any, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def cluster_options(partition: str, logs: Path, **options: Any) -> list[str]:
    """``--set`` overrides of ``execution.cluster`` for this node (values as JSON: quoted, never a clock time)."""
    chosen = {"queue": partition, **ONE_CORE, "log_directory": str(logs), **options}
    return [arg for key, value in chosen.items() for arg in ("--set", f"execution.cluster.{key}={json.dumps(value)}")]


def jobs(env: dict[str, str], states: str = "PENDING,RUNNING,COMPLETING") -> list[dict[str, str]]:
    """The SLURM jobs in ``states``, as squeue lists them."""
    fields = ("id", "name", "state", "partition", "cpus", "memory", "time_limit")
    listed = sh("squeue", "--noheader", f"--states={states}", "--format=%i|%j|%T|%P|%C|%m|%l", env=env)
    assert listed.returncode == 0, listed.stderr
    return [dict(zip(fields, line.split("|"))) for line in listed.stdout.splitlines() if line]


def assert_no_job_left(env: dict[str, str]) -> None:
    # Cancelled jobs may show as COMPLETING for a moment while SLURM stops their processes.
    assert jobs(env, "PENDING,RUNNING") == [], "the run left SLURM jobs behind"
    deadline = time.monotonic() + 30
    while jobs(env):
        assert time.monotonic() < deadline, f"jobs still completing: {jobs(env)}"
        time.sleep(0.2)


def job_commands(job_id: str) -> list[list[str]]:
    """The command lines of this host's processes that belong to SLURM job ``job_id``."""
    marker = f"SLURM_JOB_ID={job_id}".encode()
    commands = []
    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                commands.append((proc / "cmdline").read_bytes().decode().split("\0"))
        except OSError:  # gone, or not a process
            continue
    return commands


def done_count(store: Path) -> int:
    try:
        return int(zarr.open_array(str(store / "ledger" / "done"), mode="r")[:].sum())
    except Exception:  # not created yet
        return -1


def assert_same_store(actual: Path, expected: Path) -> None:
    """Every file of the store byte for byte; the root's attributes but for what names the run, and the
    ledger's but for its count of batches begun (a resumed store began more)."""
    files = sorted(str(path.relative_to(actual)) for path in actual.rglob("*") if path.is_file())
    assert files == sorted(str(path.relative_to(expected)) for path in expected.rglob("*") if path.is_file())
    for name in files:
        if name not in ("zarr.json", "ledger/zarr.json"):
            assert (actual / name).read_bytes() == (expected / name).read_bytes(), f"{name} differs"

    def ledger(store: Path) -> dict[str, Any]:
        meta = json.loads((store / "ledger" / "zarr.json").read_text())
        assert set(meta["attributes"].pop("batch")) == {"token"}, "a batch begun is not recorded"
        return meta

    assert ledger(actual) == ledger(expected)

    def identity(store: Path) -> dict[str, Any]:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        for key in ("started", "resumed", "finished", "history"):  # when and how often it ran
            attrs["pipeline"].pop(key, None)
        attrs["pipeline"]["config"].pop("execution")
        attrs["pipeline"]["config"]["output"].pop("path")
        return attrs

    assert identity(actual) == identity(expected)
    assert zarr.open_group(str(actual), mode="r").attrs["pipeline"]["status"] == "complete"


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job of several batches that one worker takes seconds over; its threads run is reference.zarr."""
    root = tmp_path_factory.mktemp("slow")
    write_slow_inputs(root, IMAGES)
    config = root / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": "images/*.png"},
                "steps": [{"convolve": {"kernel": "kernel.npy", "strategy": "direct"}}],
                "output": {"path": "reference.zarr"},
                "execution": {"scheduler": "threads", "batch_size": BATCH, "compute_dtype": "float64"},
            }
        ),
        encoding="utf-8",
    )
    done = cli("run", config, env=dict(os.environ), cwd=root)
    assert done.returncode == 0, done.stderr
    return config


def slow_run(slow_job: Path, store: Path, partition: str, *extra: str, jobs: int = 1, **options: Any) -> list[Any]:
    """The arguments of a run of the slow job on SLURM, with ``jobs`` worker jobs."""
    return ["run", slow_job, "--scheduler", "slurm", "--set", f"output.path={store}", "--set", f"execution.jobs={jobs}",
            *extra, *cluster_options(partition, store.parent / "logs", **options)]


def run_until_a_batch_is_written(run: subprocess.Popen[str], store: Path) -> None:
    deadline = time.monotonic() + 120
    while done_count(store) < BATCH:
        assert run.poll() is None, f"the run ended before its first batch: {run.communicate()}"
        assert time.monotonic() < deadline, "no batch written in time"
        time.sleep(0.02)


def finish(run: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    try:
        return run.communicate(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


# --------------------------------------------------------------------------------------------


def test_the_bundled_slurm_job_runs_its_workers_as_slurm_jobs(
    slurm: dict[str, str], partition: str, tmp_path: Path
) -> None:
    threads = cli("run", "configs/slurm.yaml", "--scheduler", "threads", "--set", f"output.path={tmp_path / 'threads.zarr'}",
                  env=slurm, cwd=REPO)
    assert threads.returncode == 0, threads.stderr
    store = tmp_path / "slurm.zarr"
    run = start("run", "configs/slurm.yaml", "--set", f"output.path={store}", "--set", "execution.jobs=2",
                *cluster_options(partition, tmp_path / "logs"), env=slurm, cwd=REPO)
    seen: dict[str, dict[str, str]] = {}
    pythons: set[str] = set()
    while run.poll() is None:
        for job in jobs(slurm):
            seen.setdefault(job["id"], job)
            if job["state"] == "RUNNING":
                seen[job["id"]] = job
                pythons.update(command[0] for command in job_commands(job["id"]) if "distributed.cli.dask_worker" in command)
        time.sleep(0.1)
    out, err = finish(run)
    assert run.returncode == 0, err
    assert "complete: 8 images processed" in out
    assert len(seen) == 2 and {job["state"] for job in seen.values()} == {"RUNNING"}, seen
    for job in seen.values():  # the job's cluster options, as SLURM granted them
        assert (job["name"], job["partition"], job["cpus"], job["memory"], job["time_limit"]) == (
            "dask-worker", partition, "1", "1G", "10:00"
        ), job
    assert pythons == {sys.executable}, "the workers must run the driver's Python (its venv), not the system's"
    assert_no_job_left(slurm)
    assert_same_store(store, tmp_path / "threads.zarr")


def test_a_cancelled_worker_job_is_replaced_and_the_store_is_complete(
    slurm: dict[str, str], partition: str, slow_job: Path, tmp_path: Path
) -> None:
    store = tmp_path / "cancelled.zarr"
    # One job of two workers (as a job of `processes: 8` on a real cluster): the run has none left.
    run = start(*slow_run(slow_job, store, partition, cores=2, processes=2), env=slurm, cwd=slow_job.parent)
    try:
        run_until_a_batch_is_written(run, store)
        (victim,) = [job["id"] for job in jobs(slurm, "RUNNING")]
        assert sh("scancel", victim, env=slurm).returncode == 0
        cancelled_at = done_count(store)
    finally:
        out, err = finish(run)
    assert cancelled_at < IMAGES, "the run finished before its worker job was cancelled; give it more work"
    assert run.returncode == 0, err
    assert f"complete: {IMAGES} images processed" in out
    assert f"slurm job {victim} ended while the run needed it; submitted job" in err
    assert_no_job_left(slurm)
    assert_same_store(store, slow_job.parent / "reference.zarr")


def test_without_a_worker_for_connect_timeout_the_run_fails_and_a_rerun_resumes(
    slurm: dict[str, str], partition: str, slow_job: Path, tmp_path: Path
) -> None:
    store = tmp_path / "stalled.zarr"
    command = slow_run(slow_job, store, partition, "--set", "execution.connect_timeout=10")
    run = start(*command, env=slurm, cwd=slow_job.parent)
    try:
        run_until_a_batch_is_written(run, store)
        # Jobs are still accepted but none starts: the replacement of the cancelled one waits.
        assert sh("scontrol", "update", f"PartitionName={partition}", "State=DOWN", env=slurm).returncode == 0
        (victim,) = [job["id"] for job in jobs(slurm, "RUNNING")]
        assert sh("scancel", victim, env=slurm).returncode == 0
        out, err = finish(run)
    finally:
        sh("scontrol", "update", f"PartitionName={partition}", "State=UP", env=slurm)
    assert run.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no dask worker connected within 10 s" in lines[0], err
    assert "PENDING (PartitionDown)" in lines[0], lines[0]
    assert zarr.open_group(str(store), mode="r").attrs["pipeline"]["status"] == "failed"
    written = done_count(store)
    assert BATCH <= written < IMAGES
    assert_no_job_left(slurm)

    resumed = cli(*command, env=slurm, cwd=slow_job.parent)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{IMAGES - written} images processed, {written} already written" in resumed.stdout
    assert_same_store(store, slow_job.parent / "reference.zarr")
    assert_no_job_left(slurm)


def test_ctrl_c_of_the_driver_cancels_its_jobs(
    slurm: dict[str, str], partition: str, slow_job: Path, tmp_path: Path
) -> None:
    store = tmp_path / "interrupted.zarr"
    run = start(*slow_run(slow_job, store, partition, jobs=2), env=slurm, cwd=slow_job.parent)
    try:
        run_until_a_batch_is_written(run, store)
        assert len(jobs(slurm, "RUNNING")) == 2
        run.send_signal(signal.SIGINT)
    finally:
        out, err = finish(run, timeout=60)
    assert run.returncode == 130, err
    assert "rerun the same command to resume" in err
    assert_no_job_left(slurm)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"queue": "nosuch"}, ["execution.cluster: the slurm queue refused the worker job", "nosuch",
                               "Invalid partition name specified"]),
        ({"memory": "100TiB"}, ["execution.cluster: the slurm queue refused the worker job",
                                "Memory specification can not be satisfied"]),
        ({"job_extra_directives": ["--begin=now+1hour"]},
         ["execution.connect_timeout: no dask worker connected within 2 s", "PENDING (BeginTime)"]),
    ],
    ids=["unknown-partition", "impossible-memory", "no-worker-in-time"],
)
def test_a_cluster_that_gives_no_worker_is_one_line_and_exit_2(
    slurm: dict[str, str], partition: str, tmp_path: Path, options: dict[str, Any], expected: list[str]
) -> None:
    failed = cli("run", "configs/slurm.yaml", "--set", f"output.path={tmp_path / 'bad.zarr'}", "--set", "execution.jobs=1",
                 "--set", "execution.connect_timeout=2", *cluster_options(partition, tmp_path / "logs", **options),
                 env=slurm, cwd=REPO, timeout=120)
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), failed.stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    assert_no_job_left(slurm)


# --------------------------------------------------------------------------------------------
# without SLURM


def test_a_refusal_is_the_submit_commands_complaints_on_one_line() -> None:
    from pipeline.jobqueue import _refusal

    message = (
        "Command exited with non-zero exit code.\nExit code: 1\nCommand:\nsbatch /tmp/tmpx.sh\nstdout:\n\nstderr:\n"
        "sbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n\n"
    )
    assert _refusal(message) == "invalid partition specified: nosuch; Batch job submission failed: Invalid partition name specified"
    assert _refusal("qsub: Unknown queue") == "qsub: Unknown queue"  # not dask-jobqueue's layout: kept as it is


def test_importing_dask_jobqueue_leaves_ctrl_c_a_keyboard_interrupt() -> None:
    # dask-jobqueue's runner module sets SIGINT to sys.exit(), which would end a run with status 0.
    pytest.importorskip("dask_jobqueue")
    probe = (
        "import signal\n"
        "from pipeline.config import ExecutionConfig\n"
        "from pipeline.jobqueue import start_cluster\n"
        "cluster = start_cluster(ExecutionConfig(scheduler='slurm', cluster={'cores': 1, 'memory': '1GiB'}))\n"
        "cluster.close()\n"
        "import dask_jobqueue.runner\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_cluster_options_dask_jobqueue_refuses_are_a_config_error() -> None:
    pytest.importorskip("dask_jobqueue")
    from pipeline.config import ExecutionConfig
    from pipeline.errors import ConfigError
    from pipeline.jobqueue import start_cluster

    with pytest.raises(ConfigError, match="^execution.cluster: .*cores"):
        start_cluster(ExecutionConfig(scheduler="slurm", cluster={"memory": "1GiB"}))


def test_no_submit_command_on_this_machine_is_one_line_and_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    # A PATH of the interpreter's folder alone: no sbatch, whatever this machine has.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    failed = cli("run", "configs/slurm.yaml", "--set", f"output.path={tmp_path / 'x.zarr'}", env=env, cwd=REPO, timeout=120)
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("error: execution.scheduler: slurm submits jobs with sbatch, which cannot run here"), lines[0]


def test_without_dask_jobqueue_the_error_says_what_to_install(tmp_path: Path) -> None:
    # A dask_jobqueue that cannot be imported, ahead of any installed one.
    (tmp_path / "dask_jobqueue.py").write_text("raise ImportError('No module named dask_jobqueue')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    failed = cli("run", "configs/slurm.yaml", "--set", f"output.path={tmp_path / 'x.zarr'}", env=env, cwd=REPO, timeout=120)
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert lines == ["error: execution.scheduler: slurm needs dask-jobqueue: pip install 'imageconv-pipeline[cluster]'"]
