"""The store lock: one run per store, fail fast on a live owner, take over a stale one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import zarr

from pipeline.errors import OutputError, StoreLockedError
from pipeline.sinks import lock as lock_module
from pipeline.sinks.lock import STALE_AFTER, UNWRITTEN_AFTER, StoreLock, lock_path, read_owner

HOST = socket.gethostname()
OTHER_HOST = "some-other-node.invalid"


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "out" / "result.zarr")


def _write_lock(store: str, content: Any, *, age: float = 0.0) -> Path:
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _owner(store: str) -> dict[str, Any]:
    return json.loads(lock_path(store).read_text(encoding="utf-8"))


def test_lock_path_is_beside_the_store(tmp_path: Path) -> None:
    assert lock_path(str(tmp_path / "a.zarr")) == tmp_path / "a.zarr.lock"
    assert lock_path(str(tmp_path / "a.zarr") + "/") == tmp_path / "a.zarr.lock"


def test_lock_records_owner_and_is_removed_on_exit(store: str) -> None:
    with StoreLock(store) as held:
        assert held.path == lock_path(store)
        owner = _owner(store)
        assert owner["host"] == HOST and owner["pid"] == os.getpid() and owner["started"]
        assert not Path(store).exists()  # the lock lives beside the store, not inside it
    assert not lock_path(store).exists()
    with StoreLock(store):  # and can be taken again
        pass
    assert not lock_path(store).exists()


def test_lock_is_removed_when_the_body_raises(store: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with StoreLock(store):
            raise RuntimeError("boom")
    assert not lock_path(store).exists()


def test_second_holder_in_this_process_fails_fast(store: str) -> None:
    with StoreLock(store):
        began = time.perf_counter()
        with pytest.raises(StoreLockedError) as caught:
            with StoreLock(store):
                pytest.fail("a second holder must not enter")
        assert time.perf_counter() - began < 1.0
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and HOST in message
        assert str(lock_path(store)) in message
        assert caught.value.exit_code == 5 and isinstance(caught.value, OutputError)
        assert _owner(store)["pid"] == os.getpid()  # the refused holder did not touch the lock
    assert not lock_path(store).exists()


def test_second_holder_fails_while_another_process_holds_the_lock(store: str) -> None:
    code = (
        "import sys\n"
        "from pipeline.sinks.lock import StoreLock\n"
        f"with StoreLock({store!r}):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as caught:
            with StoreLock(store):
                pytest.fail("a second holder must not enter")
        assert f"pid {holder.pid} on {HOST}" in str(caught.value)
        assert _owner(store)["pid"] == holder.pid
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not lock_path(store).exists()  # the holder removed it on exit
    with StoreLock(store):
        assert _owner(store)["pid"] == os.getpid()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(store: str) -> None:
    dead = _dead_pid()
    _write_lock(store, {"host": HOST, "pid": dead, "started": "2024-01-01T00:00:00+0000"})
    with StoreLock(store):
        assert _owner(store)["pid"] == os.getpid()
    assert not lock_path(store).exists()
    assert not list(lock_path(store).parent.glob("*.stale-*"))  # the set-aside copy is gone too


def test_fresh_lock_of_another_host_blocks(store: str) -> None:
    # Its pid cannot be checked from here; only the age counts.
    _write_lock(store, {"host": OTHER_HOST, "pid": 4242, "started": "2024-01-01T00:00:00+0000"}, age=STALE_AFTER / 2)
    with pytest.raises(StoreLockedError) as caught:
        with StoreLock(store):
            pytest.fail("a live lock of another host must block")
    assert "pid 4242" in str(caught.value) and OTHER_HOST in str(caught.value)
    assert _owner(store)["host"] == OTHER_HOST  # left alone


def test_old_lock_of_another_host_is_taken_over(store: str) -> None:
    _write_lock(store, {"host": OTHER_HOST, "pid": 4242, "started": "2024-01-01T00:00:00+0000"}, age=STALE_AFTER + 60)
    with StoreLock(store):
        owner = _owner(store)
        assert owner["host"] == HOST and owner["pid"] == os.getpid()
    assert not lock_path(store).exists()


def test_live_pid_on_this_host_blocks_however_old_the_lock(store: str) -> None:
    # A run on this host whose process lives is never stale, even if its heartbeat file is old.
    _write_lock(store, {"host": HOST, "pid": os.getpid(), "started": "x"}, age=STALE_AFTER * 3)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        with StoreLock(store):
            pass


HALF_WRITTEN = pytest.mark.parametrize(
    "content", ['{"host": "', "", "not json", "[1, 2]"], ids=["truncated", "empty", "garbage", "not a record"]
)


@HALF_WRITTEN
def test_half_written_lock_blocks_while_fresh(store: str, content: str) -> None:
    # A run that has just created its lock is about to write its owner into it.
    path = _write_lock(store, content)
    assert read_owner(path) == {}
    with pytest.raises(StoreLockedError) as caught:
        with StoreLock(store):
            pass
    message = str(caught.value)
    assert message.startswith("store is in use: a run is starting (its lock is being written)")
    assert "None" not in message and str(path) in message
    assert path.read_text(encoding="utf-8") == content


@HALF_WRITTEN
@pytest.mark.parametrize("age", [UNWRITTEN_AFTER * 4, STALE_AFTER + 60], ids=["seconds old", "minutes old"])
def test_half_written_lock_is_taken_over_once_a_few_seconds_old(store: str, content: str, age: float) -> None:
    # A run killed between creating its lock and writing its owner must not block reruns for long.
    assert UNWRITTEN_AFTER * 4 < STALE_AFTER
    _write_lock(store, content, age=age)
    with StoreLock(store):
        assert _owner(store)["pid"] == os.getpid()
    assert not lock_path(store).exists()


def test_a_rerun_takes_over_an_empty_lock_left_by_a_killed_run(
    small_images, tmp_path: Path, make_job, write_config, run_cli
) -> None:
    store = tmp_path / "out.zarr"
    path = _write_lock(str(store), "", age=60)
    result = run_cli("run", write_config(make_job(small_images(), store)))
    assert result.exit_code == 0, result.output
    assert zarr.open_group(str(store), mode="r").attrs["pipeline"]["status"] == "complete"
    assert not path.exists()


def test_lock_taken_by_another_owner_is_not_removed_on_exit(store: str) -> None:
    with StoreLock(store):
        # e.g. an operator removed our lock and another run took the store meanwhile
        _write_lock(store, {"host": OTHER_HOST, "pid": 4242, "started": "x"})
    assert lock_path(store).exists()
    assert _owner(store)["host"] == OTHER_HOST


def test_exit_after_the_lock_file_vanished_is_quiet(store: str) -> None:
    with StoreLock(store):
        lock_path(store).unlink()
    assert not lock_path(store).exists()


def test_heartbeat_touches_the_lock(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "HEARTBEAT", 0.02)
    with StoreLock(store):
        path = lock_path(store)
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.monotonic() + 5
        while path.stat().st_mtime < old + 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.stat().st_mtime > old + 500, "the heartbeat did not touch the lock"


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot create the lock"):
            with StoreLock(str(folder / "x.zarr")):
                pass
    finally:
        folder.chmod(0o700)


# --------------------------------------------------------------------------------------------
# the lock as an object beside a remote store (memory:// here; S3 in test_remote.py)


@pytest.fixture
def remote_store() -> str:
    import uuid

    return f"memory://locks-{uuid.uuid4().hex}/result.zarr"


def _memory() -> Any:
    import fsspec

    return fsspec.filesystem("memory")


def _remote_owner(store: str) -> dict[str, Any] | None:
    key = store.split("://", 1)[1] + ".lock"
    return json.loads(_memory().cat_file(key)) if _memory().exists(key) else None


def test_remote_lock_is_an_object_beside_the_store_removed_on_exit(remote_store: str) -> None:
    with StoreLock(remote_store) as held:
        assert held.path == remote_store + ".lock"
        owner = _remote_owner(remote_store)
        assert owner["host"] == HOST and owner["pid"] == os.getpid() and owner["touched"] > time.time() - 60
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            with StoreLock(remote_store):
                pytest.fail("a second holder must not enter")
    assert _remote_owner(remote_store) is None


def test_remote_lock_of_a_dead_run_elsewhere_is_taken_over_once_not_refreshed(remote_store: str) -> None:
    key = remote_store.split("://", 1)[1] + ".lock"
    fresh = {"host": OTHER_HOST, "pid": 1, "started": "x", "token": "t", "touched": time.time() - 5}
    _memory().pipe_file(key, json.dumps(fresh).encode())
    with pytest.raises(StoreLockedError, match=OTHER_HOST):
        with StoreLock(remote_store):
            pass
    _memory().pipe_file(key, json.dumps({**fresh, "touched": time.time() - STALE_AFTER - 5}).encode())
    with StoreLock(remote_store):
        assert _remote_owner(remote_store)["host"] == HOST


def test_remote_heartbeat_rewrites_the_time(remote_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "HEARTBEAT", 0.02)
    with StoreLock(remote_store):
        first = _remote_owner(remote_store)["touched"]
        deadline = time.monotonic() + 5
        while _remote_owner(remote_store)["touched"] == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _remote_owner(remote_store)["touched"] > first, "the heartbeat did not rewrite the lock"


def test_remote_lock_without_conditional_writes_checks_then_writes(
    remote_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    plain_pipe = MemoryFileSystem.pipe_file

    def no_create_mode(self: Any, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> Any:
        if mode == "create":
            raise NotImplementedError("no conditional writes here")
        return plain_pipe(self, path, value, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", no_create_mode)
    with StoreLock(remote_store):
        assert _remote_owner(remote_store)["pid"] == os.getpid()
        with pytest.raises(StoreLockedError):
            with StoreLock(remote_store):
                pass
    assert _remote_owner(remote_store) is None


def _age_object(store: str, seconds: float) -> None:
    """Make the remote lock object look written ``seconds`` ago (memory:// keeps the time per object)."""
    key = "/" + store.split("://", 1)[1] + ".lock"
    stored = _memory().store[key]
    stored.modified = stored.modified - timedelta(seconds=seconds)


@pytest.mark.parametrize("content", [b"", b"not json"], ids=["empty", "garbage"])
def test_remote_lock_without_an_owner_blocks_while_fresh_then_is_taken_over(remote_store: str, content: bytes) -> None:
    _memory().pipe_file(remote_store.split("://", 1)[1] + ".lock", content)
    with pytest.raises(StoreLockedError, match=r"a run is starting \(its lock is being written\)"):
        with StoreLock(remote_store):
            pass
    _age_object(remote_store, UNWRITTEN_AFTER * 4)
    with StoreLock(remote_store):
        assert _remote_owner(remote_store)["pid"] == os.getpid()
    assert _remote_owner(remote_store) is None


def test_remote_lock_without_its_refresh_time_ages_with_the_object(remote_store: str) -> None:
    """An owner record without "touched" (e.g. written by hand) counts from when the object was written."""
    key = remote_store.split("://", 1)[1] + ".lock"
    _memory().pipe_file(key, json.dumps({"host": OTHER_HOST, "pid": 4242, "started": "x"}).encode())
    with pytest.raises(StoreLockedError, match=f"pid 4242 on {OTHER_HOST}"):
        with StoreLock(remote_store):
            pass
    _age_object(remote_store, STALE_AFTER / 2)
    with pytest.raises(StoreLockedError, match=OTHER_HOST):
        with StoreLock(remote_store):
            pass
    _age_object(remote_store, STALE_AFTER)
    with StoreLock(remote_store):
        assert _remote_owner(remote_store)["host"] == HOST


def test_a_failed_run_leaves_no_empty_parent_folders(tmp_path, run_cli, write_config) -> None:
    store = tmp_path / "deep" / "er" / "out.zarr"
    config = write_config({"input": {"paths": str(tmp_path / "nowhere" / "*.png")}, "steps": [], "output": {"path": str(store)}})
    result = run_cli("run", config)
    assert result.exit_code == 3
    assert not (tmp_path / "deep").exists()  # made for the lock, removed with it
    (tmp_path / "kept").mkdir()
    config = write_config({"input": {"paths": str(tmp_path / "nowhere" / "*.png")}, "steps": [], "output": {"path": str(tmp_path / "kept" / "out.zarr")}})
    assert run_cli("run", config).exit_code == 3
    assert (tmp_path / "kept").is_dir()  # a folder that was there stays
