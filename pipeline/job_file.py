"""The job file as text: ``${VAR}`` expansion, YAML parsing, and ``--set dotted.key=value`` overrides.

Everything here works on the raw mapping; config.py validates the result once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(text: str, *, source: str) -> str:
    """Replace ``${NAME}`` (or ``${NAME:-default}``) with the environment's value, for scheduled jobs."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        line = text.count("\n", 0, match.start()) + 1
        raise ConfigError(f"config file {source!r} line {line}: environment variable {name} is not set (use ${{{name}:-default}})")

    return _ENV_REFERENCE.sub(value, text)


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        text = expand_environment(file.read_text(encoding="utf-8"), source=str(path))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"config file {str(path)!r} must be a mapping of sections (input, steps, output), but it is {kind}")
    return data


def yaml_assignment(item: str, problem: str) -> tuple[str, Any]:
    """``key=value`` → (key, value read as YAML: ``3``, ``true``, ``[1, 2]``; as text if it is not YAML).

    ``problem`` is the message when ``item`` has no key or no ``=``.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(problem)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.0.c=value`` in the raw mapping; the value is read as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, value = yaml_assignment(override, f"--set {override!r}: expected dotted.key=value, e.g. output.path=out/x.zarr")
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {where!r} is not an index of the {len(node)}-item list")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a section")
