"""The benchmark's harness: sizes, targets, the runner of tap processes, tables."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from openfunnel_sandbox import FakeOpenFunnel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
API_KEY = "of_test_key"
PAGE_SIZE = 100
TAM_PATH = "/api/v1/tam/build"
MIB = 2**20
# A measured process that runs longer than this is killed and the benchmark aborted.
CHILD_TIMEOUT = 300.0
# The tap's default page_concurrency: every section measures it first.
DEFAULT_CONCURRENCY = 4

# Targets of issue 12 (issue 5's, tightened), each measured within one run.
TARGET_A = 0.16  # page_concurrency 8: whole run <= 0.16 x (pages x latency)
TARGET_B = 1.0  # tap at the defaults: records/s (whole process) >= 1.0 x the bare loop's
# Peak RSS at the large job minus at the small job, in MiB, per page_concurrency.
TARGET_C = {DEFAULT_CONCURRENCY: 10.0, 8: 15.0}
TARGET_D = 1.3  # three jobs: wall <= 1.3 x the slowest job
PEER_REPEATS = 3  # (e): each pipeline runs this many times, interleaved; medians compared


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run.

    Attributes:
        a_pages: Pages of the (a) job.
        a_latency: Server latency per request in (a), seconds.
        a_concurrency: page_concurrency values tried in (a).
        b_rows: Rows of the (b) job.
        b_repeats: Interleaved repeats of each (a) and (b) variant: (a) keeps the median,
            (b) the best.
        c_rows: Small and large job of (c).
        c_concurrency: page_concurrency values tried in (c).
        d_finish: When each (d) job turns terminal, seconds after creation.
        d_rows: Rows of each (d) job.
        f_partitions: Finished jobs in the state of (f).
        startup_repeats: Runs of each start-up measurement; the median is kept.
    """

    a_pages: int
    a_latency: float
    a_concurrency: tuple[int, ...]
    b_rows: int
    b_repeats: int
    c_rows: tuple[int, int]
    c_concurrency: tuple[int, ...]
    d_finish: tuple[float, float, float]
    d_rows: int
    f_partitions: int
    startup_repeats: int


DEFAULT = Scale(
    a_pages=200,
    a_latency=0.05,
    a_concurrency=(DEFAULT_CONCURRENCY, 8, 1),
    b_rows=50_000,
    b_repeats=3,
    c_rows=(1_000, 100_000),
    c_concurrency=(DEFAULT_CONCURRENCY, 8, 1),
    d_finish=(2.0, 3.0, 4.0),
    d_rows=1_000,
    f_partitions=1_000,
    startup_repeats=3,
)
# Smaller jobs, one repeat: only what differs from DEFAULT.
QUICK = dataclasses.replace(
    DEFAULT,
    a_pages=60,
    b_rows=10_000,
    b_repeats=1,
    c_rows=(1_000, 20_000),
    d_rows=500,
    f_partitions=300,
    startup_repeats=1,
)


class BenchError(Exception):
    """A measured process failed, so its figure would mean nothing."""


@dataclass(frozen=True)
class Run:
    """One child process, measured.

    Attributes:
        wall: Seconds from just before the spawn to the child's exit.
        cpu: User plus system CPU seconds of the child alone.
        max_rss: Peak resident set of the child alone, in bytes.
        records: RECORD lines per stream, as counted by the drain.
        first_record: ``time.monotonic()`` when the drain read the first RECORD line of
            the timed stream (None if there was none).
        last_record: The same for the last one.
        ended: ``time.monotonic()`` when the child had exited.
        output_bytes: Bytes the child wrote on stdout.
    """

    wall: float
    cpu: float
    max_rss: int
    records: dict[str, int]
    first_record: float | None
    last_record: float | None
    ended: float
    output_bytes: int = 0

    def steady_rate(self, stream: str) -> float:
        """Records per second from the first to the last record of ``stream``.

        Start-up, polling and the first page's round trip fall outside this window, so
        it measures the record path alone.

        Args:
            stream: The timed stream.

        Returns:
            Records per second (0 when there were fewer than two records).
        """
        count = self.records.get(stream, 0)
        if self.first_record is None or self.last_record is None or count < 2:
            return 0.0
        span = self.last_record - self.first_record
        return (count - 1) / span if span > 0 else 0.0


class Bench:
    """Runs child processes against a fake server and keeps their logs in a temp folder."""

    def __init__(self, workdir: Path) -> None:
        """Prepare the runner.

        Args:
            workdir: Where configs and child logs go.

        Raises:
            BenchError: If the tap's console script cannot be found.
        """
        self.workdir = workdir
        script = Path(sys.executable).with_name("tap-openfunnel")
        found = str(script) if script.exists() else shutil.which("tap-openfunnel")
        if found is None:
            msg = "tap-openfunnel is not installed next to this Python; run .venv/bin/python"
            raise BenchError(msg)
        self.tap = found
        self._counter = 0

    def config(self, server: FakeOpenFunnel, **settings: object) -> Path:
        """Write a tap config for ``server``.

        Args:
            server: The running fake server.
            **settings: Further settings.

        Returns:
            The config file.
        """
        self._counter += 1
        path = self.workdir / f"config-{self._counter}.json"
        body = {"api_key": API_KEY, "api_url": server.url, **settings}
        path.write_text(json.dumps(body), encoding="utf-8")
        return path

    def tap_run(self, config: Path, *, timed_stream: str = "tam_companies") -> Run:
        """Run the tap CLI on ``config`` as a fresh process.

        Args:
            config: The config file.
            timed_stream: The stream whose records the drain times.

        Returns:
            The measured run.
        """
        return self.run([self.tap, "--config", str(config)], timed_stream=timed_stream)

    def run(self, command: Sequence[str], *, timed_stream: str) -> Run:
        """Run ``command`` with its stdout piped into a drain process, and measure it.

        The child's stdout is a pipe read by ``drain.py``, a separate process, for the
        tap and the bare loop alike: both pay the same for writing into a pipe and
        neither shares a CPU interpreter lock with the server or the reader.

        Args:
            command: The program and its arguments.
            timed_stream: The stream whose records the drain times.

        Returns:
            The measured run.

        Raises:
            BenchError: If the child or the drain failed.
        """
        self._counter += 1
        log = self.workdir / f"child-{self._counter}.log"
        drain_command = [sys.executable, str(HERE / "drain.py"), timed_stream]
        with log.open("wb") as stderr:
            started = time.monotonic()
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
            drain = subprocess.Popen(drain_command, stdin=child.stdout, stdout=subprocess.PIPE)
            if child.stdout is not None:
                child.stdout.close()  # the drain holds the read end now
            watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
            watchdog.start()
            # wait4 gives this child's own peak RSS and CPU time; RUSAGE_CHILDREN would
            # mix in every earlier child and the drain.
            _, status, usage = os.wait4(child.pid, 0)
            ended = time.monotonic()
            watchdog.cancel()
            child.returncode = os.waitstatus_to_exitcode(status)
            out, _ = drain.communicate(timeout=120)
        if child.returncode != 0 or drain.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            msg = (
                f"{' '.join(command)} exited {child.returncode} (drain {drain.returncode}); "
                f"the end of its stderr:\n{tail}"
            )
            raise BenchError(msg)
        summary = json.loads(out)
        return Run(
            wall=ended - started,
            cpu=usage.ru_utime + usage.ru_stime,
            max_rss=usage.ru_maxrss * 1024,  # kilobytes on Linux
            records=summary["records"],
            first_record=summary["first_record"],
            last_record=summary["last_record"],
            ended=ended,
            output_bytes=summary["bytes"],
        )

    def wall_only(self, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
        """Time a command whose output does not matter.

        Args:
            command: The program and its arguments.
            env: Its environment (default: this process's).

        Returns:
            Wall seconds.

        Raises:
            BenchError: If it failed.
        """
        started = time.monotonic()
        done = subprocess.run(
            command,
            capture_output=True,
            check=False,
            cwd=ROOT,
            env=None if env is None else dict(env),
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            msg = f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]!r}"
            raise BenchError(msg)
        return wall


def expect_records(run: Run, stream: str, expected: int, what: str) -> None:
    """Fail the benchmark if a run did not deliver exactly the rows of its job(s).

    Args:
        run: The run.
        stream: The company stream.
        expected: Rows expected.
        what: The run, for the message.

    Raises:
        BenchError: If the count differs.
    """
    got = run.records.get(stream, 0)
    if got != expected:
        msg = f"{what}: {got} {stream} records, expected {expected}"
        raise BenchError(msg)


def verdict(value: float, target: float, *, at_most: bool = True) -> str:
    """Compare a figure with its target.

    Args:
        value: The figure.
        target: The target.
        at_most: Whether the figure must be at most (else at least) the target.

    Returns:
        ``PASS`` or ``MISS``.
    """
    ok = value <= target if at_most else value >= target
    return "PASS" if ok else "MISS"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows under headers: first column left-aligned, the others right-aligned.

    Args:
        headers: Column titles.
        rows: Cells, already formatted.
    """
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip())
