"""One run per store at a time: an exclusive lock file beside the store, with a stale-lock rule.

The lock ``<store>.lock`` holds the owner's host, pid and start time and is touched every
``HEARTBEAT`` seconds while the run lives. A lock is stale, and is taken over, when its owner is on
this host and its pid is gone (a killed run), or when it has not been touched for ``STALE_AFTER``
seconds (a run on another host that died with its machine).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.errors import OutputError, StoreLockedError

HEARTBEAT = 30.0
STALE_AFTER = 600.0


def lock_path(store: str) -> Path:
    return Path(str(store).rstrip("/") + ".lock")


class StoreLock:
    """Context manager: hold the store's lock for the duration of a run."""

    def __init__(self, store: str) -> None:
        self.path = lock_path(store)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after taking over a stale lock
            if self._create():
                self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="store-lock")
                self._beat.start()
                return self
            owner = read_owner(self.path)
            if owner is not None and not is_stale(owner, self.path):
                raise StoreLockedError(
                    f"store is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"since {owner.get('started')}); wait for it, or remove {str(self.path)!r} if that run is gone"
                )
            self._take_over()
        raise StoreLockedError(f"could not take the lock {str(self.path)!r}; another run took it first")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            if (read_owner(self.path) or {}).get("pid") == os.getpid():
                self.path.unlink()
        except OSError:
            pass

    def _create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise OutputError(f"cannot create the lock {str(self.path)!r}: {exc.strerror or exc}") from None
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with os.fdopen(handle, "w") as file:
            json.dump(owner, file)
        return True

    def _take_over(self) -> None:
        # Rename first: of two runs taking over at once, only one rename succeeds.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                return


def read_owner(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a run killed while creating it: stale once old enough


def is_stale(owner: dict[str, Any], path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _alive(owner["pid"])
    return age > STALE_AFTER


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
