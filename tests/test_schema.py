"""``pipeline schema``: the JSON schema editors and validators read, checked against the job files we ship."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from helpers import assert_ok
from pipeline.job_file import read_yaml

from helpers import RUN_CONFIGS as CONFIGS  # noqa: E402 (learn jobs: test_learn.py)


@pytest.fixture(scope="module")
def schema(run_cli) -> dict:
    result = run_cli("schema")
    assert_ok(result)
    return json.loads(result.stdout)


def resolve(schema: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` (``#/$defs/Name``) followed."""
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rpartition("/")[2]]
    return node


def properties(schema: dict, *path: str) -> dict:
    """The properties of the mapping at ``path``; ``[]`` steps into a list's items, ``convolve`` into its step."""
    node = schema
    for part in path:
        if part == "[]":
            node = node["items"]
            node = next(resolve(schema, choice) for choice in node["oneOf"] if "convolve" in resolve(schema, choice)["properties"])
        else:
            node = resolve(schema, resolve(schema, node)["properties"][part])
    return resolve(schema, node)["properties"]


def test_the_schema_names_the_sections_and_their_rules(schema):
    assert set(schema["properties"]) == {"input", "steps", "output", "execution"}
    assert sorted(schema["required"]) == ["input", "output"]
    assert schema["properties"]["steps"]["maxItems"] == 1000
    convolve = properties(schema, "steps", "[]", "convolve")
    assert convolve["mode"]["enum"] == ["same", "valid", "full"] and convolve["mode"]["default"] == "same"
    assert convolve["correlate"] == {**convolve["correlate"], "type": "boolean", "default": False}
    output = properties(schema, "output")
    assert output["dtype"]["default"] == "float32" and "uint8" in output["dtype"]["enum"]
    assert properties(schema, "input")["color"]["enum"] == ["gray", "keep", "rgb"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_bundled_config_fits_the_schema(schema, path):
    jsonschema.validate(read_yaml(path), schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    "key, value",
    [(("steps", 0, "convolve", "mode"), "wide"), (("output", "dtype"), "uint7"), (("output", "overwrit"), True),
     (("steps", 0, "convolve", "kernel"), 5), (("input",), "images/*.png")],
    ids=["enum", "dtype enum", "unknown key", "kernel type", "section type"],
)
def test_the_schema_rejects_what_the_job_file_rejects(schema, key, value):
    raw = copy.deepcopy(read_yaml(next(p for p in CONFIGS if p.name == "example.yaml")))
    node = raw
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema, cls=jsonschema.Draft202012Validator)
