"""The job file as text: ${VAR}s go into string values only, floats read as written, and bounded size.

The limits tests feed documents that the unbounded reader could not finish (nested aliases that
expand to 10**9 values, 5000 levels of nesting, 10,000 steps) and check the one config error line.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_error, assert_ok, read_store
from pipeline.arguments import parse_storage_options
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.job_file import MAX_DEPTH, MAX_NODES, read_yaml, yaml_assignment

JOB = "input:\n  paths: {images}\nsteps:\n  - convolve: {{kernel: edge}}\n{extra}output:\n  path: {output}\n"


def job_text(images="images/*.png", output="out.zarr", extra="") -> str:
    return JOB.format(images=images, output=output, extra=extra)


def assert_invalid(result, *fragments: str) -> None:
    """``pipeline validate`` of a bad file: exit 2, one line naming the file and the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    assert caught.value.exit_code == 2
    return str(caught.value)


# --------------------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    "text, kind",
    [
        ("- input\n- output\n", "a list"),
        ("42\n", "a int"),
        ("just words\n", "a str"),
        ("", "empty"),
        ("# nothing\n", "empty"),
    ],
    ids=["list", "int", "str", "empty", "comment-only"],
)
def test_yaml_that_is_not_a_mapping(write_config, text, kind):
    path = write_config(text)
    message = load_error(path)
    assert str(path) in message
    assert "must be a mapping" in message
    assert message.endswith(f"but it is {kind}")


def test_invalid_yaml_names_the_line(write_config):
    path = write_config("input:\n  paths: x\noutput:\n  path: [unclosed\nsteps: []\n")
    message = load_error(path)
    assert str(path) in message and "not valid YAML" in message
    assert "line 5" in message


def test_tab_indentation_names_the_line(write_config):
    assert "not valid YAML at line 3" in load_error(write_config("input:\n  paths: x\n\tcolor: gray\n"))


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert load_error(missing) == f"config file {str(missing)!r} not found"


def test_directory_is_not_a_config_file(tmp_path):
    assert "not found" in load_error(tmp_path)


def test_non_utf8_config(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("input:\n  paths: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in load_error(path)


def test_environment_variables_are_expanded(write_config, monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/data/collection")
    monkeypatch.delenv("OUT_DIR", raising=False)
    path = write_config('input: {paths: "${DATA_DIR}/*.tif"}\noutput: {path: "${OUT_DIR:-out}/x.zarr"}\n')
    cfg = load_config(path)
    assert cfg.input.paths == "/data/collection/*.tif" and cfg.output.path == "out/x.zarr"


def test_a_missing_environment_variable_names_it_and_its_line(write_config, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write_config('input: {paths: x}\noutput: {path: "${NOT_SET_ANYWHERE}"}\n')
    with pytest.raises(ConfigError, match="line 2: environment variable NOT_SET_ANYWHERE is not set"):
        load_config(path)


# --------------------------------------------------------------------------- ${VAR} in values


def test_a_value_with_a_hash_is_not_cut_at_it(small_images, tmp_path, write_config, run_cli, monkeypatch):
    images = small_images()
    monkeypatch.setenv("OUT", str(tmp_path / "res #1.zarr"))
    path = write_config(job_text(images / "*.png", "${OUT}", extra="execution:\n  scheduler: sync\n"))
    assert_ok(run_cli("run", path))
    assert read_store(tmp_path / "res #1.zarr")[0].shape == (4, 48, 64)
    assert not (tmp_path / "res").exists()


def test_a_value_with_a_newline_injects_no_key(write_config, monkeypatch):
    injected = "x.zarr\n  overwrite: true"
    monkeypatch.setenv("OUT", injected)
    cfg = load_config(write_config(job_text(output="${OUT}")))
    assert cfg.output.path == injected
    assert cfg.output.overwrite is False


def test_a_substituted_value_stays_the_string_given(write_config, monkeypatch):
    monkeypatch.setenv("V", "[1, 2]")
    monkeypatch.setenv("B", "true")
    monkeypatch.setenv("N", "4")
    raw = read_yaml(write_config("a: ${V}\nb: ${B}\nc: 'pre-${B}-post'\nd: [${B}, 3]\ne: ${N}\nf: '${N}'\ng: ${N}x\n"))
    # an unquoted ${VAR} alone takes the variable's number or boolean, never a list or mapping
    assert raw == {"a": "[1, 2]", "b": True, "c": "pre-true-post", "d": [True, 3], "e": 4, "f": "4", "g": "4x"}


def test_numbers_come_from_the_environment(write_config, monkeypatch):
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("SIGMA", "2.5e0")
    cfg = load_config(write_config(job_text(extra="execution:\n  workers: ${WORKERS}\n")))
    assert cfg.execution.workers == 3
    raw = read_yaml(write_config("sigma: ${SIGMA}\n"))
    assert raw == {"sigma": 2.5}


def test_keys_are_not_substituted(write_config, monkeypatch):
    monkeypatch.setenv("K", "output")
    assert read_yaml(write_config("${K}: x\n")) == {"${K}": "x"}


def test_defaults_and_aliases_are_substituted_once(write_config, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.setenv("DIR", "/data")
    raw = read_yaml(write_config("a: &p ${DIR}/x\nb: *p\nc: ${NOT_SET_ANYWHERE:-fallback}\n"))
    assert raw == {"a": "/data/x", "b": "/data/x", "c": "fallback"}


def test_an_unset_variable_names_the_key_and_the_line(write_config, run_cli, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write_config(job_text(output="${NOT_SET_ANYWHERE}/x.zarr"))
    assert_error(
        run_cli("run", path), 2,
        f"config file {str(path)!r}, output.path at line 6: environment variable NOT_SET_ANYWHERE is not set",
        "${NOT_SET_ANYWHERE:-default}",
    )


def test_variables_in_flow_collections_need_no_quotes(write_config, monkeypatch):
    monkeypatch.setenv("OUT", "/x #1")
    raw = read_yaml(write_config("output: {path: ${OUT}/x.zarr, n: [${OUT:-a}, 3]}\n"))
    assert raw == {"output": {"path": "/x #1/x.zarr", "n": ["/x #1", 3]}}


def test_a_yaml_error_after_a_variable_keeps_its_column(write_config):
    assert "line 1, column 20" in load_error(write_config("a: [${VARIABLE}, x]]\n"))


# --------------------------------------------------------------------------- floats as written


@pytest.mark.parametrize(
    "text, value",
    [("1e-3", 1e-3), ("1E5", 1e5), (".5", 0.5), ("-.5", -0.5), ("-2.5e+3", -2500.0), ("1_000.0", 1000.0),
     ("2e1", 20.0), ("1.5e3", 1500.0), ("1.", 1.0), ("1.0e-3", 1e-3), (".inf", float("inf"))],
)
def test_floats_are_read_as_people_write_them(text, value):
    key, parsed = yaml_assignment(f"x={text}", "bad", option="--set")
    assert (key, parsed, type(parsed)) == ("x", value, float)


@pytest.mark.parametrize(
    "text, value",
    [("3", 3), ("1_000", 1000), ("0x1f", 31), ("e5", "e5"), ("1e", "1e"), ("1.2.3", "1.2.3"), ("v1e3", "v1e3"),
     ("2024-01-05", None), ("true", True)],
)
def test_other_scalars_keep_their_types(text, value):
    parsed = yaml_assignment(f"x={text}", "bad", option="--set")[1]
    if value is None:  # a date stays a date
        assert type(parsed).__name__ == "date"
    else:
        assert (parsed, type(parsed)) == (value, type(value))


def test_a_hand_written_kernel_and_options_with_exponents(write_config, make_job):
    text = (
        "input: {paths: x}\noutput: {path: o.zarr}\nsteps:\n"
        "  - convolve: {kernel: [[1e-3, 2.5e-3], [-1E2, .5]], cval: 1e-3, boundary: constant}\n"
        "  - convolve: {kernel: gaussian, params: {sigma: 2e1}}\n"
    )
    cfg = load_config(write_config(text), ["steps.0.convolve.cval=2E-3"])
    assert cfg.steps[0].convolve.kernel == [[1e-3, 2.5e-3], [-100.0, 0.5]]
    assert cfg.steps[0].convolve.cval == 2e-3
    assert cfg.steps[1].convolve.params == {"sigma": 20.0}


def test_storage_option_values_read_floats_too():
    assert parse_storage_options(["timeout=1e1", "retries.max_attempts=2"]) == {"timeout": 10.0, "retries": {"max_attempts": 2}}


# --------------------------------------------------------------------------- limits


def laughs(levels: int, leaf: str) -> list[str]:
    """Anchors l0..l<levels>, each ten aliases of the previous: l<levels> expands to 10**(levels+1) leaves."""
    lines = [f"  l0: &l0 [{', '.join([leaf] * 10)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return lines


def test_nested_aliases_in_storage_options_are_refused(write_config, run_cli):
    text = "input:\n  paths: images/*.png\n  storage_options:\n" + "\n".join("  " + line for line in laughs(8, "lol"))
    path = write_config(text + "\nsteps: []\noutput: {path: o.zarr}\n")
    assert_error(
        run_cli("run", path), 2,
        f"config file {str(path)!r}, input.storage_options.l4 at line 8: expands to more than {MAX_NODES:,} values",
        "aliases",
    )


def test_nested_aliases_as_a_kernel_are_refused(write_config, run_cli):
    text = "kernels:\n" + "\n".join(laughs(8, "1")) + "\ninput: {paths: x}\noutput: {path: o.zarr}\n"
    path = write_config(text + "steps:\n  - convolve: {kernel: *l8}\n")
    assert_invalid(run_cli("validate", path), f"kernels.l4 at line 6: expands to more than {MAX_NODES:,} values")


def test_a_self_referencing_alias_is_refused(write_config, run_cli):
    path = write_config("input: {paths: x}\noutput: {path: o.zarr}\nsteps: &s [{convolve: {kernel: edge}}, *s]\n")
    assert_error(run_cli("run", path), 2, "steps.1 at line 3: an alias refers to the value that holds it")


def test_a_deeply_nested_kernel_is_refused(write_config, run_cli):
    deep = "[" * 5000 + "1" + "]" * 5000
    path = write_config(f"input: {{paths: x}}\noutput: {{path: o.zarr}}\nsteps:\n  - convolve: {{kernel: {deep}}}\n")
    assert_invalid(run_cli("validate", path), f"job.yaml' at line 4: nested more than {MAX_DEPTH} levels deep")


def test_depth_through_aliases_is_bounded(write_config):
    # Each anchor nests the previous one 40 levels deeper: the text is shallow, the value is not.
    lines = ["a0: &a0 " + "[" * 40 + "1" + "]" * 40]
    lines += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 30)]
    message = load_error(write_config("\n".join(lines) + "\n"))
    assert f"a1.0 at line 2: nested more than {MAX_DEPTH} levels deep" in message


def test_a_document_of_too_many_values_is_refused(write_config):
    items = ", ".join(["0"] * (MAX_NODES + 10))
    assert f"holds more than {MAX_NODES:,} values" in load_error(write_config(f"big: [{items}]\n"))


def test_ten_thousand_steps_are_refused(write_config, run_cli):
    steps = "steps:\n  - &step {convolve: {kernel: edge}}\n" + "  - *step\n" * 9999
    path = write_config(f"input: {{paths: x}}\noutput: {{path: o.zarr}}\n{steps}")
    assert_error(run_cli("run", path), 2, "steps: a job has at most 1000 steps; this one has 10000")


def test_a_set_value_is_bounded_too(write_config, make_job):
    path = write_config(make_job())
    deep = "[" * 100 + "1" + "]" * 100
    message = load_error(path, (f"steps.0.convolve.kernel={deep}",))
    assert message.startswith(f"--set steps.0.convolve.kernel at line 1: nested more than {MAX_DEPTH} levels deep")


def test_limits_leave_room_for_real_jobs(write_config):
    kernel = np.arange(300 * 300, dtype=float).reshape(300, 300)
    text = f"input: {{paths: x}}\noutput: {{path: o.zarr}}\nsteps:\n  - convolve: {{kernel: {kernel.tolist()}}}\n"
    cfg = load_config(write_config(text))
    np.testing.assert_array_equal(cfg.steps[0].convolve.kernel, kernel)
