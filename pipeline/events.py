"""What a run tells its user: plain lines and a progress bar for people, JSON lines for schedulers.

Events: ``start``, ``batch`` (after each durably written batch), ``warning``, ``end`` and
``error``. ``--log-format json`` prints each as one JSON object per line on stdout; plain mode
shows a progress bar on a terminal and a summary table at the end, or, when stderr is not a
terminal (a batch job's log file), one timestamped plain line per written batch and a summary
line; ``--quiet`` prints nothing on success.

Batches are numbered from 1 across the whole run (shape groups included), the same in JSON and
plain lines. The ``end`` event's ``skipped`` counts images already written by an earlier run
(``already_written`` says so by name); ``unreadable`` those left out because their files could
not be read.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Literal, TextIO

from rich.console import Console

LogFormat = Literal["plain", "json"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless there is exactly one.

    >>> counted(1, "image"), counted(3, "image"), counted(0, "input file")
    ('1 image', '3 images', '0 input files')
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _now() -> str:
    """Local time, ISO 8601 with its UTC offset: ``2026-12-01T21:10:45+0000``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Reporter:
    def __init__(
        self,
        *,
        log_format: LogFormat = "plain",
        quiet: bool = False,
        progress: bool = False,
        lines: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        """``progress``: a rich bar and summary table (a terminal); ``lines``: a line per batch (a log file)."""
        self.log_format = log_format
        self.quiet = quiet
        self._stream = stream or sys.stdout
        self._err = Console(stderr=True, soft_wrap=True, highlight=False)
        self._bar: Any = None
        self._task: Any = None
        self._want_bar = progress and log_format == "plain" and not quiet
        self._want_lines = lines and not progress and log_format == "plain" and not quiet
        self._batches = 0
        self._batches_seen = 0  # numbered across the run: shape groups each count their own from 0
        self._left = 0
        self._table = False

    @classmethod
    def silent(cls) -> Reporter:
        return cls(quiet=True)

    def _json(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": _now(), **fields}
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()

    def start(self, **fields: Any) -> None:
        self._batches = fields.get("batches", 0)
        self._left = fields.get("pending", 0)  # across the run, whatever store each batch goes to
        if self._want_lines and fields.get("done"):
            self._line(f"resuming: {counted(fields['done'], 'image')} already written, {fields.get('pending', 0)} to do")
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
            # rich measures the rate over the last 30 s: images/s as the run goes, not only at its end
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._err,
        )
        self._task = self._bar.add_task("images", total=pending, rate="")
        self._bar.start()
        if done:
            self._err.print(f"resuming: {counted(done, 'image')} already written")

    def advance(self, images: float, *, loss: float | None = None) -> None:
        """Progress within a batch, in images (fractions allowed); a descent shows its loss too."""
        if self._bar is not None:
            self._bar.advance(self._task, images)
            speed = self._bar.tasks[0].speed
            rate = f"{speed:.1f} images/s" if speed else ""
            self._bar.update(self._task, rate=rate + (f" loss {loss:.4g}" if loss is not None else ""))

    def batch(self, **fields: Any) -> None:
        """A batch durably written; numbered from 1 across the run (shape groups do not start again)."""
        self._batches_seen += 1
        if self.log_format == "json" and not self.quiet:
            self._json("batch", **{**fields, "batch": self._batches_seen})
        elif self._want_lines:
            self._left = max(0, self._left - fields["images"])
            rate = fields.get("images_per_second")
            seconds = fields.get("seconds") or 0.0
            eta = f", ETA {self._left / rate:.0f} s" if rate and self._left else ""
            skipped = f" ({fields['unreadable']} unreadable)" if fields.get("unreadable") else ""
            images = f"image {fields['start']}" if fields["stop"] - fields["start"] == 1 else (
                f"images {fields['start']}-{fields['stop'] - 1}"
            )
            done = fields.get("done_word", "written")  # a fit reads its pairs, a run writes its images
            loss = f", loss {fields['loss']:.6g}" if fields.get("loss") is not None else ""
            self._line(
                f"batch {self._batches_seen}/{self._batches}: {images} {done}{skipped}{loss} in {seconds:.1f} s "
                f"({rate or 0:.1f} images/s); {self._left} to do{eta}"
            )

    def _line(self, text: str) -> None:
        """A progress line for a log file, stamped with the time it was written."""
        self._err.print(f"{_now()} {text}")

    def warning(self, message: str, **fields: Any) -> None:
        if self.quiet:
            return
        if self.log_format == "json":
            self._json("warning", message=message, **fields)
        else:
            self._err.print(f"[yellow]warning:[/yellow] {message}", markup=True)

    def end(self, **fields: Any) -> None:
        had_bar = self._bar is not None
        self._close_bar()
        if self.quiet:
            return
        if self.log_format == "json":
            self._json("end", **{**fields, "already_written": fields["skipped"]})
            return
        if had_bar:
            self._summary_table(fields)
        if fields.get("groups"):  # input.shapes: group
            result = ", ".join(f"{name} ({counted(count, 'image')})" for name, count in fields["groups"].items())
        else:
            result = f"{tuple(fields['shape'])} {fields['dtype']}"
        print(
            f"{fields['status']}: {counted(fields['processed'], 'image')} processed, "
            f"{fields['skipped']} already written, {fields.get('unreadable', 0)} unreadable (left out), "
            f"{fields['failed']} failed, in {fields['seconds']:.1f} s "
            f"({fields['images_per_second']:.1f} images/s) → {fields['store']} {result}",
            file=self._stream,
            flush=True,
        )

    def _summary_table(self, fields: dict[str, Any]) -> None:
        """On a terminal, the run at a glance (the summary line below it stays for scripts)."""
        from rich.table import Table

        table = Table(title="run summary", show_header=False, title_justify="left")
        rows = [
            ("store", fields["store"]),
            ("images", fields["images"]),
            ("processed", fields["processed"]),
            ("already written", fields["skipped"]),
            ("unreadable (left out)", fields.get("unreadable", 0)),
            ("seconds", f"{fields['seconds']:.1f}"),
            ("images/s", f"{fields['images_per_second']:.1f}"),
        ]
        for name, value in rows:
            table.add_row(name, str(value))
        self._err.print(table)

    def finish(self) -> None:
        """The work is done: close the bar, print no run summary (the caller prints its own)."""
        self._close_bar()

    def error(self, message: str, exit_code: int) -> None:
        self._close_bar()
        if self.log_format == "json":
            self._json("error", message=message, exit_code=exit_code)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
