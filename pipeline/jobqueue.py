"""Dask workers as batch-system jobs (``slurm``, ``pbs``, ``sge``) for the length of one run.

dask-jobqueue writes the job scripts, submits them and cancels them when the cluster closes. Three
things it leaves to its caller, which ``JobKeeper`` does: a job the queue refuses (dask-jobqueue
only logs it, and a run would then wait for workers forever), a run that starts before any worker
has joined, and a job that ends in the middle of a run (cancelled, pre-empted, out of walltime),
whose workers nothing replaces. The keeper submits the jobs and waits for a first worker within
``execution.connect_timeout``, saying what the queue reports when none comes, and submits a new
job in place of each one whose workers are gone. A run therefore completes after losing a job, or,
when no worker is back within ``connect_timeout``, fails with one line and a rerun resumes it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import dask

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import ExecutionConfig

logger = logging.getLogger(__name__)

JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}
# What each batch system lists its queues with, for the message of a refused job.
QUEUE_LISTING = {"slurm": "sinfo", "pbs": "qstat -Q", "sge": "qconf -sql"}
# Seconds between two looks at the workers while a run waits for them.
LOOK_INTERVAL = 0.5


def start_cluster(execution: ExecutionConfig) -> Any:
    """A dask-jobqueue cluster of the configured kind, not yet scaled (no job submitted)."""
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"execution.scheduler: {execution.scheduler} needs dask-jobqueue: pip install 'imageconv-pipeline[cluster]'"
        ) from None
    if threading.current_thread() is threading.main_thread():
        # Its runner module, imported with it, makes SIGINT exit the process with status 0: Ctrl-C
        # must stay KeyboardInterrupt, so that a run says it was interrupted and exits 130.
        signal.signal(signal.SIGINT, ctrl_c)
    cluster_class = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[execution.scheduler])
    try:
        return cluster_class(**execution.cluster)
    except (TypeError, ValueError) as exc:  # dask-jobqueue's messages run over several lines
        raise ConfigError(f"execution.cluster: {' '.join(str(exc).split())}") from None


class JobKeeper:
    """Keeps ``jobs`` batch jobs of dask workers for a run; ``check`` between waits replaces lost ones."""

    def __init__(self, cluster: Any, execution: ExecutionConfig) -> None:
        self._cluster = cluster
        self._system = execution.scheduler
        self._jobs = execution.jobs
        self._timeout = execution.connect_timeout
        # How long a job's workers may be gone before the job counts as lost: distributed's own
        # grace for a lost worker, so that a nanny restarting its worker is not taken for a loss.
        self._grace = dask.utils.parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        self._arrived: set[str] = set()  # jobs whose workers have joined at least once
        self._job_ids: dict[str, Any] = {}
        self._gone_since: dict[str, float] = {}
        self._last_worker = time.monotonic()

    @property
    def workers(self) -> int:
        """The workers the jobs start together (``jobs`` × ``processes``)."""
        return len(self._cluster.plan)

    def start(self) -> None:
        """Submit the jobs, then wait until a first worker has joined."""
        self._submit(self._scale)
        self._last_worker = time.monotonic()
        while not self.check():
            time.sleep(LOOK_INTERVAL)

    def check(self) -> bool:
        """Replace jobs lost for longer than the grace; whether a worker is connected now.

        Raises ``ConfigError`` when no worker has been connected for ``connect_timeout`` seconds.
        """
        lost, connected = self._cluster.sync(self._look)
        if connected:
            self._last_worker = time.monotonic()
        for name, job_id in lost:
            logger.warning(
                "%s job %s ended while the run needed it; submitted job %s in its place",
                self._system, job_id, self._submit(self._replace, name),
            )
        if not connected and time.monotonic() - self._last_worker > self._timeout:
            raise ConfigError(
                f"execution.connect_timeout: no dask worker connected within {self._timeout:g} s; "
                f"{self._queue_report()} — raise connect_timeout for a busy queue, or read the jobs' output "
                f"(execution.cluster.log_directory)"
            )
        return connected

    async def _look(self) -> tuple[list[tuple[str, Any]], bool]:
        # Runs on the cluster's event loop, which updates what it reads.
        observed = {info["name"] for info in self._cluster.scheduler_info.get("workers", {}).values()}
        now, lost = time.monotonic(), []
        for name in self._cluster.worker_spec:
            job = self._cluster.workers.get(name)
            if getattr(job, "job_id", None):
                self._job_ids[name] = job.job_id
            if self._worker_names(name) & observed:
                self._arrived.add(name)
                self._gone_since.pop(name, None)
            elif name in self._arrived and (
                # distributed drops a job whose single worker is gone for its grace: lost as well
                job is None or now - self._gone_since.setdefault(name, now) >= self._grace
            ):
                lost.append((name, self._job_ids.get(name)))
        return lost, bool(observed)

    def _worker_names(self, job: Any) -> set[str]:
        spec = self._cluster.worker_spec.get(job, {})
        return {f"{job}{suffix}" for suffix in spec["group"]} if "group" in spec else {str(job)}

    async def _scale(self) -> None:
        # What cluster.scale(jobs=...) does, but awaited here: a refusal reaches the caller, not a log.
        while len(self._cluster.worker_spec) < self._jobs:
            self._cluster.worker_spec.update(self._cluster.new_worker_spec())
        await self._cluster._correct_state()

    async def _replace(self, name: str) -> Any:
        """Submit a job in place of job ``name``; its id."""
        # A new name for the new job (asked for while the old one still holds its own), so that
        # distributed's delayed clean-up of the old name cannot cancel the new job.
        spec = self._cluster.new_worker_spec()
        del self._cluster.worker_spec[name]
        self._cluster.worker_spec.update(spec)
        self._arrived.discard(name)
        self._gone_since.pop(name, None)
        await self._cluster._correct_state()  # cancels the old job (already gone) and submits the new
        return self._cluster.workers[next(iter(spec))].job_id

    def _submit(self, correct: Any, *args: Any) -> Any:
        """Run a submission on the cluster's loop; a refusal by the queue becomes one line."""
        try:
            return self._cluster.sync(correct, *args)
        except RuntimeError as exc:  # dask-jobqueue: "Command exited with non-zero exit code ... stderr: ..."
            self._cluster.sync(self._forget_refused)
            raise ConfigError(
                f"execution.cluster: the {self._system} queue refused the worker job: {_refusal(str(exc))}; "
                f"check queue, cores, memory and walltime against what {QUEUE_LISTING[self._system]} lists"
            ) from None
        except OSError as exc:  # no submit command here: not a login node of that batch system
            self._cluster.sync(self._forget_refused)
            raise ConfigError(
                f"execution.scheduler: {self._system} submits jobs with {exc.filename or 'its submit command'}, "
                f"which cannot run here ({exc.strerror or exc}); run on a machine that submits to the cluster"
            ) from None

    async def _forget_refused(self) -> None:
        # A job whose submission failed never started: closing the cluster must not wait for it.
        from distributed.core import Status

        for job in self._cluster.workers.values():
            if getattr(job, "job_id", None) is None:
                job.status = Status.failed

    def _queue_report(self) -> str:
        ids = [str(self._job_ids[name]) for name in list(self._cluster.worker_spec) if name in self._job_ids]
        if not ids:
            return "no job was submitted"
        if self._system != "slurm":
            return f"jobs {', '.join(ids)} (see qstat)"
        try:
            listed = subprocess.run(
                ["squeue", "--noheader", "--format=%i %T %r", f"--jobs={','.join(ids)}"],
                capture_output=True, text=True, timeout=30,
            ).stdout.split("\n")
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"squeue could not be asked: {exc}"
        states = {}
        for line in listed:
            job, state, reason = (line.split(" ", 2) + ["", ""])[:3]
            states[job] = f"{state} ({reason})" if reason not in ("", "None") else state
        return "squeue: " + ", ".join(f"job {job} {states[job]}" if job in states else f"job {job} ended" for job in ids)


def _refusal(message: str) -> str:
    """The submit command's complaints from dask-jobqueue's RuntimeError, on one line."""
    _, _, stderr = message.partition("stderr:")
    lines = [line.strip() for line in (stderr or message).splitlines() if line.strip()]
    return "; ".join(line.split(" error: ", 1)[-1] for line in lines)
