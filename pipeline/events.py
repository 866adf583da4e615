"""What a run tells its user: plain lines and a progress bar for people, JSON lines for schedulers.

Events: ``start``, ``batch`` (after each durably written batch), ``warning``, ``end`` and
``error``. ``--log-format json`` prints each as one JSON object per line on stdout; plain mode
shows a progress bar on a terminal and a summary line at the end; ``--quiet`` prints nothing on
success.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Literal, TextIO

from rich.console import Console

LogFormat = Literal["plain", "json"]


class Reporter:
    def __init__(
        self, *, log_format: LogFormat = "plain", quiet: bool = False, progress: bool = False, stream: TextIO | None = None
    ) -> None:
        self.log_format = log_format
        self.quiet = quiet
        self._stream = stream or sys.stdout
        self._err = Console(stderr=True, soft_wrap=True, highlight=False)
        self._bar: Any = None
        self._task: Any = None
        self._want_bar = progress and log_format == "plain" and not quiet

    @classmethod
    def silent(cls) -> Reporter:
        return cls(quiet=True)

    def _json(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()

    def start(self, **fields: Any) -> None:
        if self.log_format == "json" and not self.quiet:
            self._json("start", **fields)
        elif not self.quiet and fields.get("dashboard"):
            self._err.print(f"dask dashboard: {fields['dashboard']}")
        if self._want_bar and fields.get("pending"):
            self._open_bar(fields["pending"], fields.get("done", 0))

    def _open_bar(self, pending: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]convolving"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._err,
        )
        self._task = self._bar.add_task("images", total=pending)
        self._bar.start()
        if done:
            self._err.print(f"resuming: {done} images already written")

    def advance(self, images: float) -> None:
        """Progress within a batch, in images (fractions allowed)."""
        if self._bar is not None:
            self._bar.advance(self._task, images)

    def batch(self, **fields: Any) -> None:
        if self.log_format == "json" and not self.quiet:
            self._json("batch", **fields)

    def warning(self, message: str, **fields: Any) -> None:
        if self.quiet:
            return
        if self.log_format == "json":
            self._json("warning", message=message, **fields)
        else:
            self._err.print(f"[yellow]warning:[/yellow] {message}", markup=True)

    def end(self, **fields: Any) -> None:
        self._close_bar()
        if self.quiet:
            return
        if self.log_format == "json":
            self._json("end", **fields)
            return
        unreadable = f", {fields['unreadable']} unreadable (skipped)" if fields.get("unreadable") else ""
        print(
            f"{fields['status']}: {fields['processed']} images processed, {fields['skipped']} skipped "
            f"(already written){unreadable}, {fields['failed']} failed, in {fields['seconds']:.1f} s "
            f"({fields['images_per_second']:.1f} images/s) → {fields['store']} {tuple(fields['shape'])} {fields['dtype']}",
            file=self._stream,
            flush=True,
        )

    def error(self, message: str, exit_code: int) -> None:
        self._close_bar()
        if self.log_format == "json":
            self._json("error", message=message, exit_code=exit_code)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
