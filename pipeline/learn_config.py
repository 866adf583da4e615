"""The job file of ``pipeline learn``: two collections (inputs, targets), the kernel to fit, how.

Parsed once into immutable models, like a run's job file (config.py), with the same reader
(job_file.py: limits, ``${VAR}``, ``--set``) and the same words in its errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from pipeline.config import ExecutionConfig, InputConfig, validate_model
from pipeline.job_file import apply_override, read_yaml
from pipeline.step_kinds import Frozen, PositiveCount
from pipeline.steps.convolve import Boundary

MAX_KERNEL_SIZE = 63  # per axis: a 63 × 63 kernel has 3969 unknowns, a Gram matrix of 126 MiB


class KernelToLearn(Frozen):
    shape: Annotated[list[Annotated[int, Field(ge=1, le=MAX_KERNEL_SIZE)]], Field(min_length=1, max_length=3)] = Field(
        description="the kernel's size per spatial axis, e.g. [5, 5]; [3, 3, 3] for volumes"
    )
    mode: Literal["valid", "same"] = Field(
        "valid", description="valid: only positions whose window lies inside the image (no border assumption); same: every position, with boundary"
    )
    boundary: Boundary = Field("reflect", description="values beyond the edge, for mode: same")
    correlate: bool = Field(True, description="fit a correlation kernel (as layers apply it); false fits a convolution kernel")
    bias: bool = Field(False, description="fit a constant per output channel too")
    l2: float = Field(0.0, ge=0, description="ridge penalty on the weights (in the units of the targets' sum of squares)")
    channels: Optional[Annotated[list[PositiveCount], Field(min_length=2, max_length=2)]] = Field(
        None, description="[C, K]: a bank from C input channels to K target channels (checked against the data)"
    )
    activation: Optional[Literal["relu", "tanh", "sigmoid"]] = Field(
        None, description="after the correlation (a non-linear layer): sgd and adam only"
    )


class Training(Frozen):
    epochs: PositiveCount = Field(200, description="passes over the pairs at most")
    learning_rate: float = Field(0.01, gt=0, description="the optimizer's step size")
    batch: PositiveCount = Field(4, description="image pairs per mini-batch")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum")
    tolerance: float = Field(
        1e-6, ge=0, description="stop when 10 epochs in a row do not beat the best loss before them by this fraction"
    )
    seed: int = Field(0, description="the initial kernel and the order of the pairs: the same seed gives the same kernel")


class LearnOutput(Frozen):
    path: str = Field(description="a folder: kernel.npy (bias.npy), job.yaml, report.json, kernel.png")
    overwrite: bool = Field(False, description="replace the files of an earlier fit in the folder")


class LearnConfig(Frozen):
    inputs: InputConfig
    targets: InputConfig
    pairing: Literal["auto", "names", "order"] = Field(
        "auto", description="names: pair files of the same name (stem); order: the n-th with the n-th, both sorted; "
        "auto: names when every input has a target of its name, else order"
    )
    kernel: KernelToLearn
    method: Literal["lstsq", "sgd", "adam"] = Field("lstsq", description="lstsq: exact least squares; sgd, adam: gradient descent")
    training: Training = Field(default_factory=Training)
    output: LearnOutput
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _activation_needs_descent(self) -> LearnConfig:
        if self.kernel.activation is not None and self.method == "lstsq":
            raise ValueError(
                f"kernel.activation {self.kernel.activation} makes the layer non-linear, which least squares cannot fit; "
                f"use method: sgd or adam"
            )
        return self


def load_learn_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LearnConfig:
    """Read a learn job file, apply ``--set`` overrides, and validate it once."""
    raw = read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return validate_model(LearnConfig, raw, source=str(path))
