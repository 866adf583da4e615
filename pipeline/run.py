"""One job, end to end: config → plan (source → steps → cast) → sink, on the chosen scheduler."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.execution import execute
from pipeline.plan import build_plan
from pipeline.sinks.zarr_store import (
    StoreLayout,
    check_output_path,
    create_store,
    set_status,
    utc_now,
    write_lazily,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    store: str
    images: int
    shape: tuple[int, ...]
    dtype: str
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def run(config: PipelineConfig, *, progress: bool = False) -> RunSummary:
    """Run a validated job and return a summary; raises a PipelineError subclass on user errors."""
    started = time.perf_counter()
    output = config.output
    check_output_path(output.path, overwrite=output.overwrite)
    plan = build_plan(config)
    result, sources = plan.result, plan.sources
    log.info("%d images %s → %s %s", len(sources), plan.axes, output.path, result.shape)
    layout = StoreLayout(
        shape=result.shape,
        chunks=result.chunksize,
        dtype=str(result.dtype),
        dimension_names=plan.axes,
        codec=output.codec,
    )
    provenance = {
        "version": __version__,
        "config": config.model_dump(mode="json"),
        "steps": list(plan.steps),
        "axes": list(plan.axes),
        "compute_dtype": plan.compute_dtype,
        "started": utc_now(),
    }
    target = create_store(output.path, layout, sources=sources, provenance=provenance)
    try:
        writes = write_lazily(result, target)
        execute(
            writes,
            scheduler=config.execution.scheduler,
            workers=config.execution.workers,
            progress=progress,
        )
    except BaseException as exc:
        set_status(output.path, "failed", finished=utc_now(), error=str(exc) or type(exc).__name__)
        raise
    set_status(output.path, "complete", finished=utc_now())
    return RunSummary(
        store=output.path,
        images=len(sources),
        shape=tuple(result.shape),
        dtype=str(result.dtype),
        seconds=time.perf_counter() - started,
    )
