"""Jobs from Python: load, plan, run and learn, the same functions the CLI calls.

Nothing here prints: progress reaches an optional callback as the same events ``--log-format
json`` writes (``start``, ``batch``, ``warning``, ``end``), warnings also go to the ``pipeline``
logger, and errors are the CLI's (``PipelineError`` subclasses with their ``exit_code``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from pipeline.config import PipelineConfig, apply_override, load_config, validate_config
from pipeline.events import Reporter

Job = Union[str, Path, Mapping[str, Any], PipelineConfig]
Progress = Callable[[dict[str, Any]], None]

log = logging.getLogger("pipeline")


def load_job(job: Job, *, overrides: Sequence[str] = ()) -> PipelineConfig:
    """A validated job from a YAML file, a dict shaped like one, or a job already loaded.

    Parameters
    ----------
    job : str, Path, dict or PipelineConfig
        A job file (``${VAR}`` references are filled from the environment), or its contents.
    overrides : sequence of str, optional
        ``dotted.key=value`` assignments, as ``pipeline run --set`` takes them.

    Returns
    -------
    PipelineConfig
        The frozen, validated job.

    Raises
    ------
    pipeline.errors.ConfigError
        Every problem of the job, in one message (``exit_code`` 2).

    Examples
    --------
    >>> import pipeline
    >>> job = pipeline.load_job(
    ...     {"input": {"paths": "data/samples/*.jpg"}, "steps": [{"convolve": {"kernel": "edge"}}],
    ...      "output": {"path": "out/doc.zarr"}},
    ...     overrides=["execution.scheduler=sync"],
    ... )
    >>> job.execution.scheduler, job.steps[0].convolve.kernel
    ('sync', 'edge')
    >>> pipeline.load_job({"input": {"paths": "x.png"}, "output": {"path": "o.zarr"}, "stpes": []})
    Traceback (most recent call last):
    ...
    pipeline.errors.ConfigError: job: stpes: unknown key (did you mean 'steps'? valid keys: input, steps, output, execution)
    """
    if isinstance(job, PipelineConfig):
        if not overrides:
            return job
        job = job.model_dump(mode="json")
    if isinstance(job, (str, Path)):
        return load_config(job, tuple(overrides))
    return validate_config(_overridden(job, overrides), source="job")


def plan(job: Job, *, overrides: Sequence[str] = ()):
    """What the job will do, without doing it: shapes, stages, strategies, costs and the lazy result.

    Only the first input is opened. ``plan(job).describe()`` is what ``pipeline plan`` shows, and
    ``plan(job).result()`` the whole result as a lazy Dask array (nothing is written).

    Examples
    --------
    >>> import pipeline
    >>> p = pipeline.plan({"input": {"paths": "data/samples/*.jpg"}, "output": {"path": "out/doc.zarr"},
    ...                    "steps": [{"convolve": {"kernel": "edge", "mode": "valid"}}]})
    >>> p.axes, p.shape
    (('image', 'y', 'x'), (8, 510, 510))
    >>> p.describe()["stages"][0]["strategy"]
    ['direct (opencv)']
    """
    from pipeline.job_plan import build_plan

    return build_plan(load_job(job, overrides=overrides))


def run(job: Job, *, overrides: Sequence[str] = (), append: bool = False, progress: Progress | None = None):
    """Run a job to its store, or finish what an earlier run left; ``append`` adds new inputs.

    Parameters
    ----------
    job : str, Path, dict or PipelineConfig
    overrides : sequence of str, optional
        ``dotted.key=value`` assignments.
    append : bool
        Add input files (or new images of an input array) the store has not seen.
    progress : callable, optional
        Called with each event as a dict: ``{"event": "start", "pending": ...}``, one ``batch`` per
        batch written, ``warning``, and ``end`` with the summary's fields.

    Returns
    -------
    pipeline.job_run.RunSummary
        ``store``, ``images``, ``processed``, ``skipped``, ``unreadable``, ``shape``, ``dtype``, ``seconds``.

    Raises
    ------
    pipeline.errors.PipelineError
        A subclass with the CLI's ``exit_code``: ConfigError 2, InputError 3, OutputError 4, a locked store 5.

    Examples
    --------
    >>> import tempfile, pipeline
    >>> events = []
    >>> summary = pipeline.run(
    ...     {"input": {"paths": "data/samples/0[12]*.jpg"}, "steps": [{"convolve": {"kernel": "edge"}}],
    ...      "output": {"path": tempfile.mkdtemp() + "/edges.zarr"}},
    ...     progress=events.append,
    ... )
    >>> summary.processed, summary.shape
    (2, (2, 512, 512))
    >>> [event["event"] for event in events][0], events[-1]["status"]
    ('start', 'complete')
    """
    from pipeline.job_run import run as run_job

    return run_job(load_job(job, overrides=overrides), append=append, reporter=CallbackReporter(progress))


def learn(job: str | Path | Mapping[str, Any], *, overrides: Sequence[str] = (), progress: Progress | None = None):
    """Fit a kernel from pairs of inputs and targets (a learn job) and write its folder.

    Returns the fit's summary (``kernel``, ``bias``, ``r2``, ``rmse``, the folder written); raises
    the CLI's errors. See the README's "Learning a kernel".
    """
    from pipeline.learn_job import learn as learn_kernel
    from pipeline.config import validate_model
    from pipeline.learn_config import LearnConfig, load_learn_config

    if isinstance(job, (str, Path)):
        config = load_learn_config(job, tuple(overrides))
    else:
        config = validate_model(LearnConfig, _overridden(job, overrides), source="job")
    return learn_kernel(config, reporter=CallbackReporter(progress))


def _overridden(job: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of a job's contents with the ``--set``-style overrides applied (the caller's dict is kept)."""
    raw = copy.deepcopy(dict(job))
    for override in overrides:
        apply_override(raw, override)
    return raw


class CallbackReporter(Reporter):
    """A Reporter that prints nothing: its events go to a callback, its warnings to the logger too."""

    def __init__(self, callback: Progress | None = None) -> None:
        super().__init__(quiet=True)
        self._callback = callback

    def _send(self, event: str, fields: dict[str, Any]) -> None:
        if self._callback is not None:
            self._callback({"event": event, **fields})

    def start(self, **fields: Any) -> None:
        self._send("start", fields)

    def batch(self, **fields: Any) -> None:
        self._send("batch", fields)

    def warning(self, message: str, **fields: Any) -> None:
        log.warning(message)
        self._send("warning", {"message": message, **fields})

    def end(self, **fields: Any) -> None:
        self._send("end", fields)

    def error(self, message: str, exit_code: int) -> None:
        self._send("error", {"message": message, "exit_code": exit_code})
