"""One run per store at a time: an exclusive lock beside the store, with a stale-lock rule.

The lock ``<store>.lock`` holds the owner's host, pid and start time and is refreshed every
``HEARTBEAT`` seconds while the run lives. A lock is stale, and is taken over, when its owner is on
this host and its pid is gone (a killed run), or when it has not been refreshed for ``STALE_AFTER``
seconds (a run on another host that died with its machine). A lock without an owner (empty or
unparsable: a run killed between creating the file and writing it) is stale once it is
``UNWRITTEN_AFTER`` seconds old, since a live run writes its owner right after creating it.

Beside a local store the lock is a file created with ``O_EXCL`` and refreshed by touching it.
Beside a remote store (``s3://bucket/x.zarr``) it is an object, created only if absent (a
conditional write where the filesystem offers one, as s3fs and memory:// do; otherwise a check
then a write, which two runs starting in the same instant can both pass), and refreshed by
rewriting it with the time in it, since object stores have no touch.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import OutputError, StoreLockedError
from pipeline.storage import explain, filesystem, is_remote

HEARTBEAT = 30.0
STALE_AFTER = 600.0
UNWRITTEN_AFTER = 5.0


def lock_path(store: str) -> Path:
    return Path(str(store).rstrip("/") + ".lock")


def _owner_record() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,  # tells this run's lock from a later run's in the same process
    }


class StoreLock:
    """Context manager: hold the store's lock for the duration of a run."""

    def __init__(self, store: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self._medium: _LockFile | _LockObject = (
            _LockObject(store, storage_options) if is_remote(store) else _LockFile(store)
        )
        self.path = self._medium.path
        self._owner = _owner_record()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        self._medium.prepare()
        for _ in range(2):  # a second try after taking over a stale lock
            if self._medium.create(self._owner):
                self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="store-lock")
                self._beat.start()
                return self
            owner = self._medium.read_owner()
            if owner is not None and not self._medium.is_stale(owner):
                raise StoreLockedError(f"{_holder(owner)}; wait for it, or remove {str(self.path)!r} if that run is gone")
            self._medium.take_over(owner)
        raise StoreLockedError(f"could not take the lock {str(self.path)!r}; another run took it first")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        self._medium.release(self._owner)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            if not self._medium.refresh(self._owner):
                return


class _LockFile:
    """The lock as a local file: O_EXCL creation, rename to take over, mtime as the heartbeat."""

    def __init__(self, store: str) -> None:
        self.path = lock_path(store)
        self._made: list[Path] = []

    def prepare(self) -> None:
        # The folders made for the lock are removed with it when they are left empty (a run that
        # failed before creating its store must not leave empty parents of the output behind).
        missing = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # deepest first

    def create(self, owner: dict[str, Any]) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise OutputError(f"cannot create the lock {str(self.path)!r}: {exc.strerror or exc}") from None
        with os.fdopen(handle, "w") as file:
            json.dump(owner, file)
        return True

    def read_owner(self) -> dict[str, Any] | None:
        return read_owner(self.path)

    def is_stale(self, owner: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return is_stale(owner, age)

    def take_over(self, owner: dict[str, Any] | None) -> None:
        # Rename first: of two runs taking over at once, only one rename succeeds.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass

    def refresh(self, owner: dict[str, Any]) -> bool:
        try:
            os.utime(self.path)
        except OSError:
            return False
        return True

    def release(self, owner: dict[str, Any]) -> None:
        try:
            if (read_owner(self.path) or {}).get("token") == owner["token"]:
                self.path.unlink()
        except OSError:
            pass
        for folder in self._made:
            try:
                folder.rmdir()  # only if empty: the store, or another run's files, keep it
            except OSError:
                break


class _LockObject:
    """The lock as an object beside a remote store; the time of its last refresh is written in it."""

    def __init__(self, store: str, storage_options: Mapping[str, Any] | None) -> None:
        self.path = store.rstrip("/") + ".lock"
        self._options = storage_options
        self._fs, self._key = filesystem(self.path, storage_options, where="output.path", error=OutputError)

    def prepare(self) -> None:
        """Object stores need no folder; the first write below says whether the bucket takes writes."""

    def create(self, owner: dict[str, Any]) -> bool:
        data = self._encode(owner)
        try:
            self._fs.pipe_file(self._key, data, mode="create")
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, ValueError):  # no conditional write on this filesystem
            return self._check_then_write(data)
        except Exception as exc:
            raise self._failure(exc) from None
        return True

    def _check_then_write(self, data: bytes) -> bool:
        try:
            self._fs.invalidate_cache(self._key)
            if self._fs.exists(self._key):
                return False
            self._fs.pipe_file(self._key, data)
        except Exception as exc:
            raise self._failure(exc) from None
        return True

    def read_owner(self) -> dict[str, Any] | None:
        try:
            return _owner_of(self._fs.cat_file(self._key))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        except Exception as exc:
            raise self._failure(exc) from None

    def is_stale(self, owner: dict[str, Any]) -> bool:
        touched = owner.get("touched")
        if not isinstance(touched, (int, float)):  # no owner written in it: its age is the object's
            touched = self._modified()
        return is_stale(owner, time.time() - touched)

    def _modified(self) -> float:
        """When the object was last written; 0 (long ago) if it is gone or the filesystem cannot say.

        An object is written whole, so one without an owner in it is not a run starting now:
        judging it old when its time is unknown lets the next run take it over.
        """
        try:
            return self._fs.modified(self._key).timestamp()
        except Exception:
            return 0.0

    def take_over(self, owner: dict[str, Any] | None) -> None:
        # Delete only the stale lock that was judged: a lock rewritten since then is left alone.
        # Between this read and the delete another run may take over too; the creation that
        # follows is conditional, so at most one of them then holds the new lock.
        if self.read_owner() != owner:
            return
        try:
            self._fs.rm(self._key)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._failure(exc) from None

    def refresh(self, owner: dict[str, Any]) -> bool:
        try:
            self._fs.pipe_file(self._key, self._encode(owner))
        except Exception:
            return False
        return True

    def release(self, owner: dict[str, Any]) -> None:
        try:
            if (self.read_owner() or {}).get("token") == owner["token"]:
                self._fs.rm(self._key)
        except Exception:
            pass  # a lock left behind is stale once its heartbeat stops

    @staticmethod
    def _encode(owner: dict[str, Any]) -> bytes:
        return json.dumps({**owner, "touched": time.time()}).encode("utf-8")

    def _failure(self, exc: BaseException) -> OutputError:
        return OutputError(f"cannot create the lock {self.path!r}: {explain(exc, self._options)}")


def read_owner(path: Path) -> dict[str, Any] | None:
    try:
        return _owner_of(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a run killed while creating it: stale once old enough


def _owner_of(text: str | bytes) -> dict[str, Any]:
    """The owner recorded in a lock; ``{}`` if none is (empty, cut short, or not a record)."""
    owner = json.loads(text)
    return owner if isinstance(owner, dict) else {}


def is_stale(owner: dict[str, Any], age: float) -> bool:
    """Whether a lock ``age`` seconds old (since created or last refreshed) may be taken over."""
    if not _has_owner(owner):
        return age > UNWRITTEN_AFTER
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _alive(owner["pid"])
    return age > STALE_AFTER


def _has_owner(owner: dict[str, Any]) -> bool:
    return "host" in owner or "pid" in owner


def _holder(owner: dict[str, Any]) -> str:
    """Who holds a live lock, for the message that refuses the run."""
    if not _has_owner(owner):
        return "store is in use: a run is starting (its lock is being written)"
    return (
        f"store is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
        f"since {owner.get('started')})"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
