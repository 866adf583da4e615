"""Where files live: URL recognition, secrets kept out of dumps and messages, fsspec failures as one line."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipeline.config import validate_config
from pipeline.errors import ConfigError, InputError, OutputError, scrub_secrets
from pipeline.storage import (
    REDACTED,
    entry_folder,
    file_stats,
    filesystem,
    is_remote,
    is_within,
    local_or_url,
    protocol_of,
    recorded_options,
    redact_options,
)


@pytest.mark.parametrize(
    ("path", "protocol", "remote"),
    [
        ("images/*.png", "file", False),
        ("/data/x.png", "file", False),
        ("file:///data/x.png", "file", False),
        ("s3://bucket/key.png", "s3", True),
        ("gs://bucket/a/", "gs", True),
        ("memory://x/y.zarr", "memory", True),
        ("simplecache::s3://bucket/k", "simplecache", True),
    ],
)
def test_protocols(path: str, protocol: str, remote: bool) -> None:
    assert protocol_of(path) == protocol
    assert is_remote(path) is remote


def test_file_urls_become_local_paths() -> None:
    assert local_or_url("file:///data/x/*.png") == "/data/x/*.png"
    assert local_or_url("s3://b/k") == "s3://b/k"
    assert local_or_url("relative/x.png") == "relative/x.png"


def test_secret_options_are_redacted_recursively_and_dropped_when_read_back() -> None:
    options = {
        "endpoint_url": "http://user:pw@127.0.0.1:9000",
        "anon": False,
        "key": "AKIAEXAMPLE",
        "secret": "wJalrXUtnFEMI",
        "client_kwargs": {"aws_session_token": "FwoGZXIv", "region_name": "eu-west-1"},
        "account_key": "abc",
        "sas_token": "sv=2020",
        "password": "hunter22",
        "credentials": {"a": 1},
    }
    redacted = redact_options(options)
    assert redacted == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "key": REDACTED,
        "secret": REDACTED,
        "client_kwargs": {"aws_session_token": REDACTED, "region_name": "eu-west-1"},
        "account_key": REDACTED,
        "sas_token": REDACTED,
        "password": REDACTED,
        "credentials": REDACTED,
    }
    assert recorded_options(redacted) == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"},
    }


def test_config_dump_never_holds_a_secret_option() -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    config = validate_config(
        {
            "input": {"paths": "s3://b/in/*.png", "storage_options": {"secret": secret, "anon": False}},
            "output": {"path": "s3://b/out.zarr", "storage_options": {"token": secret}},
        }
    )
    assert config.input.storage_options["secret"] == secret  # the run itself still has it
    dumped = str(config.model_dump(mode="json")) + str(config.model_dump())
    assert secret not in dumped and REDACTED in dumped


def test_a_password_in_a_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"input": {"paths": "x/*.png"}, "output": {"path": "s3://me:hunter2hunter2@b/out.zarr"}})
    assert "password" in str(caught.value) and "hunter2hunter2" not in str(caught.value)
    assert all("hunter2hunter2" not in problem for problem in caught.value.problems)


def test_messages_are_scrubbed_of_environment_and_option_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value-123")
    text = "failed with env-secret-value-123 and opt-secret-value-456"
    assert scrub_secrets(text, {"client_kwargs": {"aws_secret_access_key": "opt-secret-value-456"}}) == (
        "failed with *** and ***"
    )
    error = InputError("cannot read 's3://b/x.png': signature env-secret-value-123 does not match")
    assert "env-secret-value-123" not in str(error)


def test_unknown_protocol_is_one_line_naming_it() -> None:
    with pytest.raises(InputError, match=r"input.paths: unknown protocol 'nosuch' in 'nosuch://b/x'"):
        filesystem("nosuch://b/x", {}, where="input.paths")


def test_a_missing_filesystem_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.registry import known_implementations

    monkeypatch.setitem(
        known_implementations, "fakecloud", {"class": "fakecloudfs.FakeFileSystem", "err": "Install fakecloudfs"}
    )
    with pytest.raises(OutputError, match=r"output.path: 'fakecloud://b/x.zarr' needs the fakecloudfs package: pip install fakecloudfs"):
        filesystem("fakecloud://b/x.zarr", {}, where="output.path", error=OutputError)


def test_a_storage_option_the_filesystem_refuses_names_the_options_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    class Picky(MemoryFileSystem):
        protocol = "picky"

        def __init__(self, *, region: str = "eu", **options):
            if region not in ("eu", "us"):
                raise ValueError(f"no region {region!r}")
            super().__init__(**options)

    monkeypatch.setitem(_registry, "picky", Picky)
    with pytest.raises(InputError, match=r"^input.paths: cannot open 'picky://x' with input.storage_options: no region 'mars'$"):
        filesystem("picky://x", {"region": "mars", "skip_instance_cache": True}, where="input.paths")


def test_remote_stats_come_from_the_filesystem(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/stats-{uuid.uuid4().hex}"
    fs.pipe_file(f"{root}/a.png", b"12345")
    local = tmp_path / "b.png"
    local.write_bytes(b"123")
    stats = file_stats([f"memory://{root}/a.png", str(local), f"memory://{root}/gone.png"])
    assert stats[0, 0] == 5 and stats[0, 1] > 0
    assert stats[1].tolist() == [3, os.stat(local).st_mtime_ns]
    assert stats[2].tolist() == [-1, -1]
    assert stats.dtype == np.int64


def test_store_inside_an_input_prefix_is_recognised(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/nest-{uuid.uuid4().hex}"
    fs.pipe_file(f"{root}/images/a.png", b"1")
    assert entry_folder(f"memory://{root}/images/*.png", {}) == f"memory://{root}/images"
    assert entry_folder(f"memory://{root}/images", {}) == f"memory://{root}/images"
    assert entry_folder(f"memory://{root}/images/a.png", {}) is None
    assert is_within(f"memory://{root}/images/out.zarr", f"memory://{root}/images")
    assert not is_within(f"memory://{root}/images-out.zarr", f"memory://{root}/images")
    assert not is_within(str(tmp_path / "x.zarr"), f"memory://{root}")
    assert is_within(str(tmp_path / "a" / "x.zarr"), str(tmp_path))
