"""The CLI's key=value and index arguments: good values parse, bad ones are one ConfigError line."""

from __future__ import annotations

import pytest

from pipeline.arguments import parse_index, parse_params, parse_storage_options
from pipeline.errors import ConfigError


def test_storage_options_are_yaml_values_and_dotted_keys_nest() -> None:
    parsed = parse_storage_options(
        ["endpoint_url=http://127.0.0.1:9000", "anon=true", "client_kwargs.region_name=eu-west-1", "config_kwargs.retries.max_attempts=1"]
    )
    assert parsed == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    assert parse_storage_options(None) == {}


@pytest.mark.parametrize(
    ("items", "fragment"),
    [(["anon"], "expected key=value"), (["=1"], "expected key=value"), (["a=1", "a.b=2"], "given a value and nested keys")],
)
def test_bad_storage_options(items: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_storage_options(items)


def test_params_and_indices() -> None:
    assert parse_params(["sigma=2.5", "size=3"]) == {"sigma": 2.5, "size": 3}
    assert parse_index("2") == slice(2, 3) and parse_index("-1") == slice(-1, None)
    assert parse_index("1:") == slice(1, None) and parse_index(None) == slice(None)
    with pytest.raises(ConfigError, match="not a number"):
        parse_params(["sigma=wide"])
    with pytest.raises(ConfigError, match="expected N or START:STOP"):
        parse_index("a:b")
