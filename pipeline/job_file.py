"""The job file as text: YAML read within limits, ``${VAR}`` expansion, and ``--set dotted.key=value`` overrides.

Everything here works on the raw mapping; config.py validates the result once.

Job files are read by PyYAML's safe loader with two changes:

- floats are read as people write them (``1e-3``, ``2E5``, ``.5``, ``-2.5e+3``, ``1_000.0``), not only
  in YAML 1.1's form (``1.0e-3``), here and in ``--set``/``--storage-option`` values;
- a document is bounded, so that a small file cannot keep a run busy or exhaust its memory or stack:
  at most ``MAX_NODES`` values once its aliases are expanded (nested aliases, "billion laughs", would
  otherwise expand to 10**9), nested at most ``MAX_DEPTH`` levels deep. Large kernels belong in .npy files.

``${NAME}`` and ``${NAME:-default}`` are replaced in string values only, after parsing: a value is never
read as YAML, so a ``#`` or a newline in it stays part of the string (and ``workers: ${N}`` is the
string "4": give numbers with ``--set execution.workers=$N``). Keys are not expanded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.errors import ConfigError

MAX_NODES = 100_000
MAX_DEPTH = 64

_TYPED_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Placeholders of private-use characters: printable for YAML, with no reason to be in a job file, and
# without a newline (so lines keep their numbers).
_OPEN, _FILL = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}([0-9]+){_FILL}+")
_STR_TAG = "tag:yaml.org,2002:str"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1's floats, plus an optional exponent sign, an exponent without a dot and a sign before a
# leading dot. A float needs a dot or an exponent, so integers still resolve as integers.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


_LIMIT_HINT = f" (a job file holds at most {MAX_NODES:,} values, {MAX_DEPTH} levels deep; give large kernels as .npy files)"


def _where(source: str, path: list[Any], line: int) -> str:
    """``config file 'x.yaml', output.path at line 3``: the key path up to one list index below its last
    key (the indices deeper in a nested list say little), and the line."""
    last_key = max((i for i, part in enumerate(path) if isinstance(part, str)), default=-1)
    shown = ".".join(str(part) for part in path[: last_key + 2])
    return f"{source}{', ' + shown if shown else ''} at line {line}"


class JobLoader(yaml.SafeLoader):
    """A safe loader that reads floats as written and refuses documents beyond the limits as it composes them."""

    # The float resolver replaced in place: resolvers are tried in order, floats before integers.
    yaml_implicit_resolvers = {
        first: [(tag, _FLOAT if tag == _FLOAT_TAG else regexp) for tag, regexp in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, *, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        # Composing recurses once per level: refuse before Python's stack runs out.
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
                line = self.peek_event().start_mark.line + 1
                problem = (
                    f"nested more than {MAX_DEPTH} levels deep" if self._depth > MAX_DEPTH
                    else f"holds more than {MAX_NODES:,} values"
                )
                raise ConfigError(f"{_where(self.source, [], line)}: {problem}{_LIMIT_HINT}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Expansion:
    """One walk over a composed document, each node once: counts the values its aliases expand to,
    bounds its depth through aliases, and puts each ``${...}`` back where ``_hide_references`` hid it:
    expanded in string values, as written in keys and other scalars.

    An alias always names an anchor earlier in the text, which the walk (in document order) has
    measured already, unless the alias is inside it; so the walk recurses no deeper than the text
    nests, which the loader bounded.
    """

    def __init__(self, source: str, references: list[str], resolve: Any = None) -> None:
        self.source = source
        self.references = references
        self.resolve = resolve  # the loader's tag resolver
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)
        self.open: set[int] = set()

    def measure(self, node: yaml.Node, path: list[Any], level: int, *, key: bool = False) -> tuple[int, int]:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if self.references:
                expand = node.tag == _STR_TAG and not key

                def reveal(match: re.Match[str]) -> str:
                    reference = self.references[int(match.group(1))]
                    return expand_environment(reference, where=_where(self.source, path, line)) if expand else reference

                whole = expand and node.style is None and _PLACEHOLDER.fullmatch(node.value) is not None
                node.value = _PLACEHOLDER.sub(reveal, node.value)
                if whole and self.resolve is not None:
                    # an unquoted value that is one ${VAR} takes the variable's number or boolean
                    # (workers: ${N}); it never becomes a mapping, a list or several values
                    tag = self.resolve(yaml.ScalarNode, node.value, (True, False))
                    if tag in _TYPED_TAGS:
                        node.tag = tag
            return 1, 1
        self.open.add(id(node))
        count, depth = 1, 0
        for label, child, is_key in self._children(node):
            here = [*path, label]
            if id(child) in self.open:
                raise ConfigError(f"{_where(self.source, here, line)}: an alias refers to the value that holds it")
            size = self.measured.get(id(child))
            if size is None:
                size = self.measured[id(child)] = self.measure(child, here, level + 1, key=is_key)
            if level + 1 + size[1] > MAX_DEPTH:
                raise ConfigError(f"{_where(self.source, here, line)}: nested more than {MAX_DEPTH} levels deep{_LIMIT_HINT}")
            count += size[0]
            depth = max(depth, size[1])
        self.open.discard(id(node))
        if count > MAX_NODES:
            raise ConfigError(
                f"{_where(self.source, path, line)}: expands to more than {MAX_NODES:,} values through YAML aliases{_LIMIT_HINT}"
            )
        return count, depth + 1

    def _children(self, node: yaml.Node) -> Iterator[tuple[Any, yaml.Node, bool]]:
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                yield index, child, False
            return
        for key, value in node.value:
            text = key.value if isinstance(key, yaml.ScalarNode) else "?"
            label = _PLACEHOLDER.sub(lambda match: self.references[int(match.group(1))], text)
            yield label, key, True
            yield label, value, False


def _hide_references(text: str) -> tuple[str, list[str]]:
    """``text`` with each ``${...}`` replaced by a placeholder of its length that YAML reads as plain
    text anywhere (in ``{...}`` its braces would be YAML's), and the references in order."""
    references: list[str] = []

    def hide(match: re.Match[str]) -> str:
        index = str(len(references))
        references.append(match.group(0))
        return _OPEN + index + _FILL * max(1, len(match.group(0)) - len(index) - 1)

    return _ENV_REFERENCE.sub(hide, text), references


def expand_environment(text: str, *, where: str) -> str:
    """``text`` with ``${NAME}`` (or ``${NAME:-default}``) replaced by the environment's value, for scheduled jobs."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (use ${{{name}:-default}})")

    return _ENV_REFERENCE.sub(value, text)


def parse_yaml(text: str, *, source: str, environment: bool = False) -> Any:
    """One YAML document within the limits; with ``environment``, ``${VAR}``s expanded in its string values.

    Raises ConfigError (naming ``source``) beyond a limit, yaml.YAMLError for text that is not YAML.
    """
    text, references = _hide_references(text) if environment else (text, [])
    loader = JobLoader(text, source=source)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _Expansion(source, references, loader.resolve).measure(root, [], 0)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    source = f"config file {str(path)!r}"
    if not file.is_file():
        raise ConfigError(f"{source} not found")
    try:
        data = parse_yaml(file.read_text(encoding="utf-8"), source=source, environment=True)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{source} must be a mapping of sections (input, steps, output), but it is {kind}")
    return data


def yaml_assignment(item: str, problem: str, *, option: str) -> tuple[str, Any]:
    """``key=value`` → (key, value read as YAML: ``3``, ``1e-3``, ``true``, ``[1, 2]``; as text if it is not YAML).

    ``problem`` is the message when ``item`` has no key or no ``=``; ``option`` (``--set``) names the
    value in the message when it passes a limit.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(problem)
    try:
        value = parse_yaml(text, source=f"{option} {key.strip()}")
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.0.c=value`` in the raw mapping; the value is read as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, value = yaml_assignment(
        override, f"--set {override!r}: expected dotted.key=value, e.g. output.path=out/x.zarr", option="--set"
    )
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
