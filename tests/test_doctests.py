"""The Examples of the public API's docstrings run as tests: a wrong example fails `make test`."""

from __future__ import annotations

import doctest
import importlib

import dask
import pytest

# the modules whose docstrings are the public API's documentation
MODULES = ("pipeline.filters", "pipeline.ndfilters", "pipeline.jobs", "pipeline.results")


@pytest.mark.parametrize("name", MODULES)
def test_examples_hold(name: str, repo_root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)  # the jobs' examples read the bundled photographs
    module = importlib.import_module(name)
    with dask.config.set(scheduler="synchronous"):
        failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=True)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed (printed above)"
