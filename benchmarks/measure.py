"""One measured run: a fresh process, its wall time and its peak memory.

Peak RSS is the kernel's high-water mark, ``ru_maxrss`` from ``os.wait4`` for exactly that child
(``RUSAGE_CHILDREN`` would accumulate over every child ever waited for). It is taken by a small
wrapper process (this file run as a script) and not by the benchmark itself, because Linux keeps
``ru_maxrss`` across exec: a child started straight from the benchmark process would report at
least the benchmark's own peak (hundreds of MiB once reference images are cached), whatever it
used itself. Started from the small wrapper, the floor is the wrapper's ~10 MiB. A psutil thread
also samples the RSS summed over the measured process tree every 20 ms, as a cross-check and in
case a case ever starts worker processes (sampling can miss short spikes; wait4 cannot).

Wall time, taken in the wrapper, is from start to exit, so it includes interpreter start-up and
imports; cases.py and ``pipeline run`` also print their in-process time, which is kept too. The
page cache is synced before every run (not timed), so no run pays for writing back its predecessor's
output.

    python benchmarks/measure.py REPORT.json -- COMMAND ARGS...
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time of the whole process
    peak_rss_mib: float  # ru_maxrss of the process (wait4)
    tree_rss_mib: float  # largest sampled RSS sum of the process tree (psutil)
    inner_seconds: float | None  # in-process time the case printed, if it did
    output: str
    cpu_seconds: float | None = None  # user + system CPU time of the process (wait4)


class RunFailed(RuntimeError):
    pass


def measure(argv: list[str], *, cwd: str, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` in a fresh process; raise RunFailed with its output if it exits non-zero."""
    # Every case writes hundreds of MB to the page cache and the benchmark deletes the store before
    # the next run: without a sync, the kernel writes back one run's output and frees its blocks
    # while the next run is being timed, whichever case that is. Each run starts from a quiet disk;
    # its own writes are not synced, as no case syncs them.
    os.sync()
    # Output goes to files, not pipes: nobody has to drain a pipe while the wrapper waits.
    with tempfile.TemporaryDirectory() as scratch, open(f"{scratch}/out", "w+") as out, \
            open(f"{scratch}/err", "w+") as err:
        report = f"{scratch}/report.json"
        wrapper = subprocess.Popen([sys.executable, __file__, report, "--", *argv], cwd=cwd, env=env,
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = _TreeSampler(wrapper.pid)
        sampler.start()
        wrapper.wait()
        sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        usage = json.loads(Path(report).read_text()) if os.path.exists(report) else None
    if wrapper.returncode != 0 or usage is None:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        raise RunFailed(f"exit code {wrapper.returncode}: {' '.join(argv)}\n{tail}")
    return Run(
        seconds=usage["seconds"],
        peak_rss_mib=usage["maxrss_kib"] * 1024 / MIB,
        tree_rss_mib=sampler.peak / MIB,
        inner_seconds=_last_float(stdout),
        output=stdout.strip(),
        cpu_seconds=usage.get("cpu_seconds"),
    )


def _last_float(text: str) -> float | None:
    """cases.py prints its seconds alone; ``pipeline run`` ends with "... in 12.3 s (3.9 images/s)"."""
    lines = text.strip().splitlines()
    found = re.search(r"(?:^| in )(\d+(?:\.\d+)?)(?: s\b|$)", lines[-1]) if lines else None
    return float(found.group(1)) if found else None


class _TreeSampler(threading.Thread):
    """Samples the RSS sum of the wrapper's descendants (not the wrapper itself) until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            try:
                procs = root.children(recursive=True)
                total = sum(p.memory_info().rss for p in procs if p.is_running())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                total = 0  # the process is exiting; its high-water mark is in wait4's numbers
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _wrap(report: str, argv: list[str]) -> int:
    """The wrapper: run ``argv``, then record its wall time and its own ru_maxrss."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # output: inherited from the wrapper
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    Path(report).write_text(json.dumps({"seconds": seconds, "maxrss_kib": usage.ru_maxrss,
                                        "cpu_seconds": usage.ru_utime + usage.ru_stime}))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    sys.exit(_wrap(sys.argv[1], sys.argv[3:]))
