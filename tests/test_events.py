"""The Reporter: JSON lines for schedulers, a summary line for people, silence for cron."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.events import Reporter, counted

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}) ")

START = dict(store="out.zarr", images=7, pending=5, done=2, batches=2, batch_size=3, scheduler="sync", dashboard=None)
BATCH = dict(batch=0, start=2, stop=5, images=3, done=3, pending=2, seconds=0.5, images_per_second=6.0)
END = dict(
    status="complete",
    store="out.zarr",
    images=7,
    processed=5,
    skipped=2,
    failed=0,
    seconds=1.25,
    images_per_second=4.0,
    shape=[7, 48, 64],
    dtype="float32",
)


def _all_events(reporter: Reporter) -> None:
    reporter.start(**START)
    reporter.advance(1.5)
    reporter.batch(**BATCH)
    reporter.warning("2 source files changed", changed=["a.png", "b.png"])
    reporter.batch(**{**BATCH, "batch": 1, "start": 5, "stop": 7, "images": 2, "done": 5, "pending": 0})
    reporter.end(**END)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_mode_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    reporter = Reporter(log_format="json", stream=stream)
    _all_events(reporter)
    reporter.error("store 'x' is in use", 5)

    events = _lines(stream)
    assert [event["event"] for event in events] == ["start", "batch", "warning", "batch", "end", "error"]
    assert all(isinstance(event["time"], str) and event["time"] for event in events)
    start, batch, warning, second, end, error = events
    assert {k: start[k] for k in START} == START
    # Batches count from 1, as the plain lines do (the caller numbers them from 0).
    assert {k: batch[k] for k in BATCH} == {**BATCH, "batch": 1} and second["batch"] == 2
    assert warning["message"] == "2 source files changed" and warning["changed"] == ["a.png", "b.png"]
    assert {k: end[k] for k in END} == END
    assert end["already_written"] == END["skipped"]  # "skipped" stays, for existing consumers
    assert error["message"] == "store 'x' is in use" and error["exit_code"] == 5
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # everything went to the given stream


def test_json_mode_serialises_odd_values() -> None:
    stream = io.StringIO()
    Reporter(log_format="json", stream=stream).batch(shape=(1, 2), path=Path("a/b"))
    (event,) = _lines(stream)
    assert event["shape"] == [1, 2] and event["path"] == "a/b"


def test_json_mode_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    Reporter(log_format="json").batch(**BATCH)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "batch"
    assert captured.err == ""


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_quiet_prints_nothing_on_success(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    reporter = Reporter(log_format=log_format, quiet=True, progress=True, stream=stream)
    _all_events(reporter)
    assert stream.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_silent_reporter_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _all_events(Reporter.silent())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_plain_end_prints_the_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    reporter = Reporter(stream=stream)
    _all_events(reporter)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # start and batch events are silent in plain mode
    line = lines[0]
    assert line.startswith("complete: ")
    assert "5 images processed" in line
    assert "2 already written, 0 unreadable (left out), 0 failed" in line
    assert "1.2 s" in line or "1.3 s" in line
    assert "4.0 images/s" in line
    assert "out.zarr (7, 48, 64) float32" in line
    captured = capsys.readouterr()
    assert "warning" in captured.err and "2 source files changed" in captured.err
    assert captured.out == ""


def test_plain_start_shows_the_dashboard_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    Reporter(stream=stream).start(**{**START, "dashboard": "http://127.0.0.1:8787/status"})
    captured = capsys.readouterr()
    assert "dashboard" in captured.err and "http://127.0.0.1:8787/status" in captured.err
    assert stream.getvalue() == "" and captured.out == ""


def test_plain_error_leaves_printing_to_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    Reporter(stream=stream).error("bad", 2)
    assert stream.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_goes_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    reporter = Reporter(progress=True, stream=stream)
    reporter.start(**START)
    reporter.advance(3)
    reporter.batch(**BATCH)
    reporter.end(**END)
    assert stream.getvalue().startswith("complete: ")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "resuming: 2 images already written" in captured.err


def _unstamped(line: str) -> str:
    """A progress line without its timestamp, which must be the local time it was written."""
    stamp = STAMP.match(line)
    assert stamp, line
    written = datetime.strptime(stamp.group(1), "%Y-%m-%dT%H:%M:%S%z")
    assert abs((datetime.now().astimezone() - written).total_seconds()) < 3600
    return line[stamp.end() :]


def test_not_a_terminal_gets_a_timestamped_line_per_batch(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    _all_events(Reporter(lines=True, stream=stream))
    err = capsys.readouterr().err.splitlines()
    assert _unstamped(err[0]) == "resuming: 2 images already written, 5 to do"
    assert _unstamped(err[1]) == "batch 1/2: images 2-4 written in 0.5 s (6.0 images/s); 2 to do, ETA 0 s"
    assert _unstamped(err[3]).startswith("batch 2/2: images 5-6 written in 0.5 s") and "ETA" not in err[3]
    assert "2 source files changed" in err[2]
    assert stream.getvalue().startswith("complete: ")  # the summary line stays on stdout


def test_lines_give_way_to_the_bar_json_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    for reporter in (
        Reporter(lines=True, progress=True, stream=io.StringIO()),
        Reporter(lines=True, quiet=True, stream=io.StringIO()),
        Reporter(lines=True, log_format="json", stream=io.StringIO()),
    ):
        reporter.start(**START)
        reporter.batch(**BATCH)
    assert "batch 1/2" not in capsys.readouterr().err


def test_a_terminal_run_ends_with_a_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    _all_events(Reporter(progress=True, stream=stream))
    err = capsys.readouterr().err
    assert "run summary" in err
    assert "processed" in err and "images/s" in err and "4.0" in err


def test_the_bar_shows_images_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter(progress=True, stream=io.StringIO())
    reporter.start(**START)
    for _ in range(3):
        reporter.advance(1)
    assert reporter._bar.tasks[0].fields["rate"].endswith(" images/s")
    reporter.end(**END)


def test_batch_lines_count_across_the_stores_of_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Shape groups number their batches from 0 each; the lines count the run's batches and images."""
    reporter = Reporter(lines=True, stream=io.StringIO())
    reporter.start(**{**START, "batches": 3, "pending": 6, "done": 0})
    reporter.batch(**{**BATCH, "batch": 0, "start": 0, "stop": 3, "images": 3})
    reporter.batch(**{**BATCH, "batch": 0, "start": 0, "stop": 2, "images": 2})
    reporter.batch(**{**BATCH, "batch": 1, "start": 2, "stop": 3, "images": 1})
    lines = [_unstamped(line) for line in capsys.readouterr().err.splitlines()]
    assert [line.split(":")[0] for line in lines] == ["batch 1/3", "batch 2/3", "batch 3/3"]
    assert [line.split("; ")[1].split(" to do")[0] for line in lines] == ["3", "1", "0"]


def test_json_batches_are_numbered_across_the_stores_of_a_run_like_the_lines() -> None:
    stream = io.StringIO()
    reporter = Reporter(log_format="json", stream=stream)
    reporter.start(**{**START, "batches": 3, "pending": 6, "done": 0})
    for number, (start, stop) in ((0, (0, 3)), (0, (0, 2)), (1, (2, 3))):
        reporter.batch(**{**BATCH, "batch": number, "start": start, "stop": stop, "images": stop - start})
    assert [event["batch"] for event in _lines(stream) if event["event"] == "batch"] == [1, 2, 3]


def test_counts_of_one_are_singular(capsys: pytest.CaptureFixture[str]) -> None:
    assert (counted(1, "image"), counted(0, "image"), counted(2, "input file")) == ("1 image", "0 images", "2 input files")
    assert counted(1, "batch", "batches") == "1 batch" and counted(3, "batch", "batches") == "3 batches"
    stream = io.StringIO()
    reporter = Reporter(lines=True, stream=stream)
    reporter.start(**{**START, "images": 2, "done": 1, "pending": 1, "batches": 1})
    reporter.batch(**{**BATCH, "start": 1, "stop": 2, "images": 1})
    reporter.end(**{**END, "images": 2, "processed": 1, "skipped": 1, "groups": {"48x64": 1, "30x40": 2}})
    resuming, batch = (_unstamped(line) for line in capsys.readouterr().err.splitlines())
    assert resuming == "resuming: 1 image already written, 1 to do"
    assert batch.startswith("batch 1/1: image 1 written in ")
    line = stream.getvalue()
    assert line.startswith("complete: 1 image processed, 1 already written, 0 unreadable (left out), 0 failed")
    assert line.rstrip().endswith("48x64 (1 image), 30x40 (2 images)")


def test_the_summary_names_already_written_and_unreadable_apart(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    reporter = Reporter(progress=True, stream=stream)
    reporter.start(**START)
    reporter.end(**{**END, "processed": 3, "skipped": 2, "unreadable": 2})
    assert "3 images processed, 2 already written, 2 unreadable (left out), 0 failed" in stream.getvalue()
    assert "skipped" not in stream.getvalue()
    table = capsys.readouterr().err
    assert "already written" in table and "unreadable (left out)" in table
