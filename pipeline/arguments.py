"""The CLI's small ``key=value`` and index arguments, parsed into values with one ConfigError line each."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.job_file import yaml_assignment


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``--storage-option`` values: ``key=value`` (YAML values; dotted keys nest) → fsspec options."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, value = yaml_assignment(
            item,
            f"--storage-option {item.partition('=')[0]!r}: expected key=value, e.g. endpoint_url=http://localhost:9000",
            option="--storage-option",
        )
        *parents, last = key.split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--storage-option {key!r}: {part!r} is given a value and nested keys")
        node[last] = value
    return options


def parse_params(items: list[str] | None) -> dict[str, float | int]:
    """``--param key=value`` → kernel parameters (numbers)."""
    params: dict[str, float | int] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: expected key=value, e.g. sigma=2.0")
        try:
            params[key] = int(value)
        except ValueError:
            try:
                params[key] = float(value)
            except ValueError:
                raise ConfigError(f"--param {item!r}: {value!r} is not a number") from None
    return params


def parse_index(text: str | None) -> slice:
    """``--index N`` or ``START:STOP`` → the slice of images to export."""
    if text is None:
        return slice(None)
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            return slice(int(start) if start else None, int(stop) if stop else None)
        position = int(text)
        return slice(position, position + 1 if position != -1 else None)
    except ValueError:
        raise ConfigError(f"--index {text!r}: expected N or START:STOP, e.g. 0:10") from None
