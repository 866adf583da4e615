"""The YAML job file: every bundled config loads, --set overrides win, every error names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers import assert_error
from pipeline.config import PipelineConfig, apply_override, load_config, validate_config
from pipeline.errors import ConfigError

from helpers import RUN_CONFIGS as CONFIGS  # noqa: E402 (learn jobs: test_learn.py)


@pytest.fixture
def raw(make_job) -> dict:
    """A fresh, valid raw job mapping (one edge convolve step) that a test may break."""
    return make_job()


def convolve_of(raw: dict) -> dict:
    return raw["steps"][0]["convolve"]


def _parent(raw: dict, dotted: str) -> tuple[dict | list, str | int]:
    *parents, last = [int(part) if part.isdigit() else part for part in dotted.split(".")]
    node = raw
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    return node, last


def set_key(raw: dict, dotted: str, value) -> None:
    """``set_key(raw, "steps.0.convolve.mode", "wide")``: written independently of apply_override."""
    node, last = _parent(raw, dotted)
    node[last] = value


def del_key(raw: dict, dotted: str) -> None:
    node, last = _parent(raw, dotted)
    del node[last]


def problems_of(raw: dict) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, source="job.yaml")
    assert str(caught.value).startswith("job.yaml: ")
    assert caught.value.exit_code == 2
    return caught.value.problems


def only_problem(raw: dict) -> str:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    return problems[0]


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


# --------------------------------------------------------------------------- bundled configs


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.output.path.startswith("out/")
    assert cfg.steps, "every bundled job has at least one step"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_model_dump_round_trips(path):
    cfg = load_config(path)
    dumped = cfg.model_dump(mode="json")
    again = validate_config(dumped)
    assert again == cfg
    assert again.model_dump(mode="json") == dumped


def test_example_config_values():
    cfg = load_config(next(p for p in CONFIGS if p.name == "example.yaml"))
    assert (cfg.input.paths, cfg.input.color) == ("data/samples/*.jpg", "gray")
    spec = cfg.steps[0].convolve
    assert (spec.kernel, spec.mode, spec.boundary) == ("edge", "same", "reflect")
    assert (cfg.output.dtype, cfg.output.overwrite, cfg.output.codec) == ("float32", False, "blosc-lz4")
    assert (cfg.execution.scheduler, cfg.execution.workers) == ("threads", "auto")


def test_defaults_fill_optional_sections(raw):
    cfg = validate_config(raw)
    assert cfg.input.color == "gray"
    assert (cfg.execution.scheduler, cfg.execution.workers, cfg.execution.compute_dtype) == ("threads", "auto", "auto")
    spec = cfg.steps[0].convolve
    assert (spec.mode, spec.boundary, spec.cval, spec.correlate, spec.params) == ("same", "reflect", 0.0, False, {})


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    "section, key, value",
    [
        (None, "output", None),
        ("output", "path", "elsewhere.zarr"),
        ("execution", "workers", 2),
        ("input", "color", "keep"),
    ],
)
def test_validated_config_is_immutable(raw, section, key, value):
    cfg = validate_config(raw)
    target = cfg if section is None else getattr(cfg, section)
    before = getattr(target, key)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(target, key, value)
    assert getattr(target, key) == before


def test_step_spec_is_immutable(raw):
    cfg = validate_config(raw)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.steps[0].convolve.kernel = "blur"
    assert cfg.steps[0].convolve.kernel == "edge"


# --------------------------------------------------------------------------- --set overrides


def test_overrides_beat_the_file(raw, write_config):
    raw["output"].update(path="from-file.zarr", dtype="float64")
    path = write_config(raw)
    assert load_config(path).output.path == "from-file.zarr"
    cfg = load_config(path, ["output.path=from-set.zarr", "output.dtype=uint8"])
    assert (cfg.output.path, cfg.output.dtype) == ("from-set.zarr", "uint8")


def test_later_override_beats_earlier(raw, write_config):
    cfg = load_config(write_config(raw), ["output.codec=zstd", "output.codec=none"])
    assert cfg.output.codec == "none"


def test_override_with_list_index(raw, write_config):
    raw["steps"].append({"convolve": {"kernel": "sharpen"}})
    cfg = load_config(write_config(raw), ["steps.0.convolve.kernel=blur", "steps.1.convolve.mode=valid"])
    assert [s.convolve.kernel for s in cfg.steps] == ["blur", "sharpen"]
    assert [s.convolve.mode for s in cfg.steps] == ["same", "valid"]


@pytest.mark.parametrize(
    "override, where, expected",
    [
        ("output.overwrite=true", ("output", "overwrite"), True),
        ("output.overwrite=false", ("output", "overwrite"), False),
        ("execution.workers=3", ("execution", "workers"), 3),
        ("steps.0.convolve.cval=1.5", ("steps", 0, "convolve", "cval"), 1.5),
        ("steps.0.convolve.kernel=[1, 2]", ("steps", 0, "convolve", "kernel"), [1, 2]),
        ("steps.0.convolve.params={size: 5}", ("steps", 0, "convolve", "params"), {"size": 5}),
        ("output.path=a=b.zarr", ("output", "path"), "a=b.zarr"),  # only the first '=' splits
        ("new.section.deep=x", ("new", "section", "deep"), "x"),  # missing sections are created
    ],
)
def test_override_values_are_read_as_yaml(raw, override, where, expected):
    apply_override(raw, override)
    node = raw
    for part in where:
        node = node[part]
    assert node == expected
    assert type(node) is type(expected)


def test_typed_overrides_reach_the_validated_config(raw, write_config):
    convolve_of(raw)["kernel"] = "box"
    overrides = ["output.overwrite=true", "execution.workers=3", "steps.0.convolve.params={size: 5}"]
    cfg = load_config(write_config(raw), overrides)
    assert cfg.output.overwrite is True
    assert cfg.execution.workers == 3
    assert cfg.steps[0].convolve.params == {"size": 5}


def test_inline_kernel_override(raw, write_config):
    cfg = load_config(write_config(raw), ["steps.0.convolve.kernel=[1, 2]"])
    assert cfg.steps[0].convolve.kernel == [1, 2]


@pytest.mark.parametrize(
    "override, names",
    [
        ("novalue", "'novalue'"),
        ("=x", "'=x'"),
        (" =x", "' =x'"),
        ("steps.5.convolve.kernel=blur", "'steps.5'"),
        ("steps.first.convolve.kernel=blur", "'steps.first'"),
        ("output.path.deeper=1", "'output.path'"),
        ("steps.0.convolve.kernel.size=3", "'steps.0.convolve.kernel'"),
    ],
)
def test_bad_override_names_the_key(raw, override, names):
    before = copy.deepcopy(raw)
    with pytest.raises(ConfigError) as caught:
        apply_override(raw, override)
    assert str(caught.value).startswith("--set ")
    assert names in str(caught.value)
    assert raw == before


def test_bad_override_through_load_config(raw, write_config):
    message = load_error(write_config(raw), ("steps.3.convolve.kernel=blur",))
    assert "'steps.3'" in message and "1-item list" in message


def test_override_is_validated_like_the_file(raw, write_config):
    path = write_config(raw)
    message = load_error(path, ("output.dtype=uint7",))
    assert message.startswith(f"{path}: output.dtype: ")
    assert "'uint7'" in message


# --------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("outptu", "output"),
        ("exectuion", "execution"),
        ("input.colour", "color"),
        ("output.overwrit", "overwrite"),
        ("execution.worker", "workers"),
        ("steps.0.convolve.kernl", "kernel"),
    ],
)
def test_unknown_key_names_path_and_suggests(raw, key, suggestion):
    set_key(raw, key, 1)
    problem = only_problem(raw)
    assert problem.startswith(f"{key}: unknown key")
    assert f"did you mean {suggestion!r}?" in problem
    assert "valid keys:" in problem


def test_unknown_key_far_from_any_gives_no_guess(raw):
    raw["output"]["zzzzzz"] = 1
    problem = only_problem(raw)
    assert problem.startswith("output.zzzzzz: unknown key")
    assert "did you mean" not in problem
    assert "valid keys: path, dtype, overwrite, codec" in problem


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("output.overwrite", "maybe", "'maybe'"),
        ("output.dtype", "uint7", "'uint7'"),
        ("output.codec", "gzip", "'gzip'"),
        ("output.path", 5, "string"),
        ("input.color", "cmyk", "'cmyk'"),
        ("input.paths", [], "at least one"),
        ("execution.scheduler", "cluster", "'cluster'"),
        ("execution.compute_dtype", "float16", "'float16'"),
        ("steps.0.convolve.mode", "wide", "'wide'"),
        ("steps.0.convolve.boundary", "zero", "'zero'"),
        ("steps.0.convolve.correlate", "sometimes", "'sometimes'"),
        ("steps.0.convolve.cval", "high", "'high'"),
        ("steps.0.convolve.kernel", [[1, 2], [3]], "rectangular"),
        ("steps.0.convolve.kernel", [[[[1]]]], "4 dimensions"),
        ("steps.0.convolve.kernel", [[1, float("inf")]], "NaN or infinite"),
        ("steps", "edge", "expected a list"),
    ],
)
def test_bad_value_names_its_key(raw, key, value, fragment):
    set_key(raw, key, value)
    problem = only_problem(raw)
    assert problem.startswith(f"{key}: ")
    assert fragment in problem


@pytest.mark.parametrize("workers", [0, -2, "many"])
def test_bad_workers_named(raw, workers):
    raw["execution"] = {"workers": workers}
    problems = problems_of(raw)
    assert all(p.startswith("execution.workers") for p in problems)
    assert any(repr(workers) in p for p in problems)


@pytest.mark.parametrize("budget", ["auto", "512MiB", "2GB", 1000000])
def test_memory_budget_takes_sizes(raw, budget):
    raw["execution"] = {"memory_budget": budget}
    assert validate_config(raw).execution.memory_budget == str(budget)


@pytest.mark.parametrize("budget", ["lots", "0MiB", -5, "12 parsecs"])
def test_bad_memory_budget_is_one_problem_naming_the_units(raw, budget):
    raw["execution"] = {"memory_budget": budget}
    problem = only_problem(raw)
    assert problem.startswith("execution.memory_budget: ") and "MiB" in problem and repr(budget) in problem


def test_bad_workers_is_one_problem_with_a_clean_key(raw):
    raw["execution"] = {"workers": 0}
    assert only_problem(raw).startswith("execution.workers: ")


def test_unknown_kernel_names_key_and_suggests(raw):
    convolve_of(raw)["kernel"] = "edgee"
    problem = only_problem(raw)
    assert problem.startswith("steps.0.convolve.kernel: unknown kernel 'edgee'")
    assert "did you mean 'edge'?" in problem
    assert "sobel_x" in problem  # lists the built-in names


def test_unknown_kernel_in_second_step_names_its_index(raw):
    raw["steps"].append({"convolve": {"kernel": "gausian"}})
    problem = only_problem(raw)
    assert problem.startswith("steps.1.convolve.kernel: ")
    assert "did you mean 'gaussian'?" in problem


@pytest.mark.parametrize(
    "kernel, params, fragments",
    [
        ("gaussian", {"sigma": -1}, ("sigma", "positive")),
        ("gaussian", {"size": 3}, ("'gaussian'", "['size']", "sigma (default 1.0)")),
        ("box", {"size": 2.5}, ("'size'", "integer")),
        ("edge", {"size": 3}, ("'edge'", "no parameters")),
        ("identity", {"size": 4}, ("odd",)),
        ([[1, 2]], {"size": 3}, ("inline matrix", "no parameters")),
    ],
)
def test_bad_kernel_params_name_the_step(raw, kernel, params, fragments):
    convolve_of(raw).update(kernel=kernel, params=params)
    problem = only_problem(raw)
    assert problem.startswith("steps.0.convolve")
    for fragment in fragments:
        assert fragment in problem


@pytest.mark.parametrize(
    "step",
    [{"convolve": {"kernel": "edge"}, "normalize": "minmax"}, {"blur": {"size": 3}}, {}, "edge"],
    ids=["two-keys", "unknown-kind", "empty", "not-a-mapping"],
)
def test_malformed_step(raw, step):
    raw["steps"].append(step)
    assert only_problem(raw).startswith("steps.1: a step is a mapping with exactly one key: convolve, layer, activation, pool, normalize")


def test_bad_normalize_value(raw):
    raw["steps"].append({"normalize": "zscore"})
    problem = only_problem(raw)
    assert problem.startswith("steps.1.normalize: ")
    assert "'zscore'" in problem


@pytest.mark.parametrize("key", ["output.path", "output", "input", "input.paths", "steps.0.convolve.kernel"])
def test_missing_required_key(raw, key):
    del_key(raw, key)
    assert only_problem(raw) == f"{key}: required"


def test_a_misspelt_key_is_named_before_the_key_it_meant(raw, write_config, run_cli):
    convolve_of(raw)["kernal"] = convolve_of(raw).pop("kernel")
    problems = problems_of(raw)
    assert problems[0].startswith("steps.0.convolve.kernal: unknown key (did you mean 'kernel'? valid keys: kernel, params")
    assert problems[1:] == ("steps.0.convolve.kernel: required",)
    raw["execution"] = {"scheduler": "sync"}
    line = assert_error(run_cli("run", write_config(raw)), 2, "steps.0.convolve.kernal: unknown key (did you mean 'kernel'?")
    assert line.endswith("(and 1 more problem; run 'pipeline validate')")


CONVOLVE_KEYS = "kernel, params, mode, boundary, cval, correlate, strategy"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("steps.0.convolve", "edge", f"steps.0.convolve: expected a mapping of convolve options ({CONVOLVE_KEYS}) (got 'edge')"),
        ("output", "x.zarr", "output: expected a mapping of output options (path, dtype, overwrite, codec"),
        ("output.overwrite", "maybe", "output.overwrite: expected true or false (got 'maybe')"),
        ("output.levels", 9, "output.levels: expected a number of at most 8 (got 9)"),
        ("execution.workers", 0, "execution.workers: expected 'auto' or a number greater than 0 (got 0)"),
        ("execution.workers", 2.5, "execution.workers: expected 'auto' or a whole number (got 2.5)"),
        ("execution.cluster", 5, "execution.cluster: expected a mapping (got 5)"),
        ("input.paths", 5, "input.paths: expected a string or a list (got 5)"),
        ("steps.0.convolve.mode", "wide", "steps.0.convolve.mode: expected 'same', 'valid' or 'full' (got 'wide')"),
        ("steps.0.convolve.params", {"sigma": "x"}, "steps.0.convolve.params.sigma: expected a number (got 'x')"),
        ("steps.0.convolve.kernel", None, "steps.0.convolve.kernel: expected a string or a list (got None)"),
    ],
)
def test_problems_are_said_in_our_words(raw, key, value, message):
    set_key(raw, key, value)
    problem = only_problem(raw)
    assert problem.startswith(message), problem
    for pydantic in ("Input should", "instance of", "Field required", "valid dictionary", "tuple"):
        assert pydantic not in problem


def test_every_problem_is_listed(raw):
    raw["output"]["overwrit"] = True
    convolve_of(raw)["mode"] = "wide"
    raw["input"]["color"] = "cmyk"
    problems = problems_of(raw)
    assert sorted(p.split(":")[0] for p in problems) == ["input.color", "output.overwrit", "steps.0.convolve.mode"]
    with pytest.raises(ConfigError, match=r"and 2 more problems"):
        validate_config(raw)


def test_single_problem_message_is_the_problem(raw):
    del raw["output"]["path"]
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, source="x.yaml")
    assert str(caught.value) == "x.yaml: output.path: required"
    assert caught.value.problems == ("output.path: required",)


def test_error_in_file_names_the_file(raw, write_config):
    convolve_of(raw)["kernel"] = "edgee"
    path = write_config(raw)
    assert load_error(path).startswith(f"{path}: steps.0.convolve.kernel: unknown kernel 'edgee'")
