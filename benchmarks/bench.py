"""Benchmark the tap CLI against an in-process fake OpenFunnel: pages, records, memory, waits.

Run ``.venv/bin/python benchmarks/bench.py`` (add ``--peers`` for the side-by-side with
dlt, ``--markdown docs/benchmarks.md`` to regenerate that page). Every section measures
the default settings first (page_concurrency 4), then the others.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import peers
import requests

from tap_openfunnel.sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from collections.abc import Sequence

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
        b_repeats: Interleaved repeats of each (b) variant; the best is kept.
        c_rows: Small and large job of (c).
        c_concurrency: page_concurrency values tried in (c).
        d_finish: When each (d) job turns terminal, seconds after creation.
        d_rows: Rows of each (d) job.
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
    startup_repeats=3,
)
QUICK = Scale(
    a_pages=60,
    a_latency=0.05,
    a_concurrency=(DEFAULT_CONCURRENCY, 8, 1),
    b_rows=10_000,
    b_repeats=1,
    c_rows=(1_000, 20_000),
    c_concurrency=(DEFAULT_CONCURRENCY, 8, 1),
    d_finish=(2.0, 3.0, 4.0),
    d_rows=500,
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
    """

    wall: float
    cpu: float
    max_rss: int
    records: dict[str, int]
    first_record: float | None
    last_record: float | None
    ended: float

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
        )

    def wall_only(self, command: Sequence[str]) -> float:
        """Time a command whose output does not matter.

        Args:
            command: The program and its arguments.

        Returns:
            Wall seconds.

        Raises:
            BenchError: If it failed.
        """
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, check=False)
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


# ---------------------------------------------------------------------------- sections


def measure_startup(bench: Bench, scale: Scale) -> dict[str, float]:
    """Time the tap doing nothing much: imports, ``--about``, ``--test``, a run with no jobs.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        Median wall seconds of each.
    """
    python = sys.executable

    def median(command: Sequence[str]) -> float:
        return statistics.median(bench.wall_only(command) for _ in range(scale.startup_repeats))

    with FakeOpenFunnel() as server:
        config = bench.config(server)
        figures = {
            "python_s": median([python, "-c", "pass"]),
            "import_sdk_s": median([python, "-c", "import singer_sdk"]),
            "import_tap_s": median([python, "-c", "import tap_openfunnel.tap"]),
            "about_s": median([bench.tap, "--about"]),
            "test_s": median([bench.tap, "--config", str(config), "--test"]),
            "zero_job_run_s": statistics.median(
                bench.tap_run(config).wall for _ in range(scale.startup_repeats)
            ),
        }
        # What `meltano run` / `meltano config test` start: the plugin's own virtualenv.
        meltano_tap = ROOT / ".meltano/extractors/tap-openfunnel/venv/bin/tap-openfunnel"
        if meltano_tap.exists():
            figures["meltano_venv_about_s"] = median([str(meltano_tap), "--about"])
    print(f"Start-up, median of {scale.startup_repeats} (wall s):")
    print_table(
        ["", "wall s"],
        [
            ["python -c pass", f"{figures['python_s']:.2f}"],
            ["python -c 'import singer_sdk'", f"{figures['import_sdk_s']:.2f}"],
            ["python -c 'import tap_openfunnel.tap'", f"{figures['import_tap_s']:.2f}"],
            ["tap-openfunnel --about", f"{figures['about_s']:.2f}"],
            ["tap-openfunnel --test (one balance call)", f"{figures['test_s']:.2f}"],
            ["a run with no jobs", f"{figures['zero_job_run_s']:.2f}"],
            *(
                [["--about from Meltano's plugin venv", f"{figures['meltano_venv_about_s']:.2f}"]]
                if "meltano_venv_about_s" in figures
                else []
            ),
        ],
    )
    print("    Every wall time below includes start-up; the 'net' columns subtract the no-job run.")
    return figures


def plain_round_trip(server: FakeOpenFunnel, job_id: str, repeats: int = 9) -> float:
    """One page request with plain ``requests`` (no tap code), median wall seconds.

    Args:
        server: The fake server, with its latency set.
        job_id: A completed job of the server.
        repeats: Requests to time, one after the other.

    Returns:
        The median round trip.
    """
    url = f"{server.url}/api/v1/tam/build/{job_id}"
    times = []
    with requests.Session() as session:
        session.headers["X-API-Key"] = API_KEY
        session.get(url, timeout=30).raise_for_status()  # the connection, opened
        for _ in range(repeats):
            began = time.perf_counter()
            session.get(url, params={"cursor": "page_0001"}, timeout=30).raise_for_status()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def section_a(bench: Bench, scale: Scale, startup: float) -> dict[str, t.Any]:
    """(a) One completed job read with page_concurrency 1, 4, 8 under server latency.

    Args:
        bench: The runner.
        scale: Sizes.
        startup: Wall seconds of a no-job run.

    Returns:
        One dict per concurrency (``runs``), and the floor at page_concurrency 8.
    """
    rows = scale.a_pages * PAGE_SIZE
    bound = scale.a_pages * scale.a_latency
    print(
        f"\n(a) Completed TAM job of {scale.a_pages} pages ({rows:,} rows, {PAGE_SIZE}/page), "
        f"{scale.a_latency * 1000:.0f} ms server latency per request.\n"
        f"    Sequential lower bound = {scale.a_pages} pages x {scale.a_latency * 1000:.0f} ms "
        f"= {bound:.2f} s. Target: page_concurrency 8 <= {TARGET_A} x bound."
    )
    results: list[dict[str, float]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(latency=scale.a_latency, page_size=PAGE_SIZE) as server:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        for concurrency in scale.a_concurrency:
            config = bench.config(server, tam_job_ids=[job_id], page_concurrency=concurrency)
            run = bench.tap_run(config)
            expect_records(run, "tam_companies", rows, f"(a) page_concurrency {concurrency}")
            ratio = run.wall / bound
            net = (run.wall - startup) / bound
            target = f"<= {TARGET_A:.2f}" if concurrency == 8 else ""
            result = verdict(ratio, TARGET_A) if concurrency == 8 else ""
            table.append(
                [
                    str(concurrency),
                    f"{run.wall:.2f}",
                    f"{ratio:.3f}",
                    f"{net:.3f}",
                    f"{rows / run.wall:,.0f}",
                    target,
                    result,
                ]
            )
            results.append(
                {
                    "page_concurrency": concurrency,
                    "wall_s": run.wall,
                    "x_bound": ratio,
                    "net_x_bound": net,
                }
            )
        round_trip = plain_round_trip(server, job_id)
    print_table(
        ["page_concurrency", "wall s", "x bound", "net x bound", "records/s", "target", ""],
        table,
    )
    # The poll that finds the job terminal brings page_0000; 8 requests at a time fetch
    # the rest, so the last of them ends after this many round trips in a row.
    trips = 1 + math.ceil((scale.a_pages - 1) / 8)
    floor = startup + trips * round_trip
    print(
        f"    Floor at page_concurrency 8 with this server, Python and machine: start-up "
        f"{startup:.2f} s + {trips} round trips in a row x {round_trip * 1000:.1f} ms (one page\n"
        f"    request with plain requests, timed here) = {floor:.2f} s = {floor / bound:.3f} x "
        "bound."
    )
    return {
        "runs": results,
        "round_trip_s": round_trip,
        "floor_s": floor,
        "floor_x_bound": floor / bound,
    }


def section_b(bench: Bench, scale: Scale) -> dict[str, t.Any]:
    """(b) Records per second of the tap against a bare requests + json.dumps loop.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        Figures per variant and the ratio.
    """
    rows = scale.b_rows
    default = f"tap, concurrency {DEFAULT_CONCURRENCY}"
    print(
        f"\n(b) Record path: completed TAM job of {rows:,} rows ({rows // PAGE_SIZE} pages), "
        "no server latency. Each process writes its\n    stdout to a pipe read by a separate "
        "drain process (benchmarks/drain.py). 'e2e' = records / wall, start-up and job "
        "polling\n    included; 'steady' = records between the first and the last record "
        f"line the drain read. Best of {scale.b_repeats}.\n"
        f"    Target: {default} (the default) e2e records/s >= {TARGET_B:.1f}x the bare loop's."
    )
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        empty_id = server.add_job(JobSpec(kind="tam", rows=0))

        def bare(job: str) -> Run:
            command = [
                sys.executable,
                str(HERE / "bare_loop.py"),
                f"--url={server.url}",
                f"--api-key={API_KEY}",
                f"--job-id={job}",
                f"--path={TAM_PATH}",
            ]
            return bench.run(command, timed_stream="tam_companies")

        def tap(concurrency: int) -> t.Callable[[str], Run]:
            return lambda job: bench.tap_run(
                bench.config(server, tam_job_ids=[job], page_concurrency=concurrency)
            )

        variants = {
            "bare loop": bare,
            default: tap(DEFAULT_CONCURRENCY),
            "tap, concurrency 1": tap(1),
        }
        # A job with no rows costs each variant its fixed share (start-up, imports, one
        # request); subtracting its CPU leaves the cost of the records.
        fixed = {name: variant(empty_id).cpu for name, variant in variants.items()}
        runs: dict[str, list[Run]] = {name: [] for name in variants}
        # Interleaved, so that a slow spell of a noisy machine hits every variant.
        for _ in range(scale.b_repeats):
            for name, variant in variants.items():
                run = variant(job_id)
                expect_records(run, "tam_companies", rows, f"(b) {name}")
                runs[name].append(run)
    best = {name: min(tries, key=lambda run: run.wall) for name, tries in runs.items()}
    bare_best = best["bare loop"]
    bare_steady = max(run.steady_rate("tam_companies") for run in runs["bare loop"])
    figures: dict[str, t.Any] = {"rows": rows, "variants": {}}
    table: list[list[str]] = []
    for name, run in best.items():
        steady = max(run.steady_rate("tam_companies") for run in runs[name])
        e2e_ratio = bare_best.wall / run.wall
        cpu_per_record = (run.cpu - fixed[name]) / rows * 1e6
        is_target = name == default
        table.append(
            [
                name,
                f"{run.wall:.2f}",
                f"{rows / run.wall:,.0f}",
                f"{e2e_ratio:.2f}",
                f"{steady:,.0f}",
                f"{steady / bare_steady:.2f}",
                f"{cpu_per_record:.0f}",
                f">= {TARGET_B:.2f}" if is_target else "",
                verdict(e2e_ratio, TARGET_B, at_most=False) if is_target else "",
            ]
        )
        figures["variants"][name] = {
            "wall_s": run.wall,
            "e2e_records_per_s": rows / run.wall,
            "e2e_ratio_to_bare": e2e_ratio,
            "steady_records_per_s": steady,
            "steady_ratio_to_bare": steady / bare_steady,
            "cpu_s": run.cpu,
            "fixed_cpu_s": fixed[name],
            "net_cpu_us_per_record": cpu_per_record,
        }
    print_table(
        [
            "",
            "wall s",
            "e2e rec/s",
            "e2e/bare",
            "steady rec/s",
            "steady/bare",
            "CPU us/rec",
            "target",
            "",
        ],
        table,
    )
    print(
        "    CPU us/rec: the child's own CPU, minus that of the same command on a job with "
        "no rows, per record.\n    The server's share (row generation, JSON encoding) runs "
        "in the bench process, the same for every variant."
    )
    figures["ratio"] = figures["variants"][default]["e2e_ratio_to_bare"]
    return figures


def section_c(bench: Bench, scale: Scale) -> list[dict[str, float]]:
    """(c) Peak RSS of the tap process for a small and a large job, per page_concurrency.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        Per page_concurrency: peak RSS of each job, in MiB, and the difference.
    """
    small, large = scale.c_rows
    goals = ", ".join(
        f"{target:.0f} MiB at page_concurrency {concurrency}"
        for concurrency, target in TARGET_C.items()
    )
    print(
        "\n(c) Peak RSS of the whole tap process (its own ru_maxrss, from wait4), no latency."
        f"\n    Target: {large:,} rows within {goals} of {small:,} rows."
    )
    results: list[dict[str, float]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        jobs = {rows: server.add_job(JobSpec(kind="tam", rows=rows)) for rows in (small, large)}
        for concurrency in scale.c_concurrency:
            peaks: dict[int, float] = {}
            for rows, job_id in jobs.items():
                config = bench.config(server, tam_job_ids=[job_id], page_concurrency=concurrency)
                run = bench.tap_run(config)
                expect_records(run, "tam_companies", rows, f"(c) {rows} rows")
                peaks[rows] = run.max_rss / MIB
            diff = peaks[large] - peaks[small]
            target = TARGET_C.get(concurrency)
            table.append(
                [
                    str(concurrency),
                    f"{peaks[small]:.1f}",
                    f"{peaks[large]:.1f}",
                    f"{diff:+.1f}",
                    f"<= {target:.0f}" if target is not None else "",
                    verdict(diff, target) if target is not None else "",
                ]
            )
            results.append(
                {
                    "page_concurrency": concurrency,
                    "small_rows": small,
                    "large_rows": large,
                    "small_mib": peaks[small],
                    "large_mib": peaks[large],
                    "diff_mib": diff,
                }
            )
    print_table(
        [
            "page_concurrency",
            f"{small:,} rows MiB",
            f"{large:,} rows MiB",
            "difference",
            "target",
            "",
        ],
        table,
    )
    return results


def section_d(bench: Bench, scale: Scale) -> dict[str, float]:
    """(d) Three jobs that turn terminal at different times, extracted in one run.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        The wall time, the slowest job's time and their ratio.
    """
    slowest = max(scale.d_finish)
    finish = ", ".join(f"{seconds:g}" for seconds in scale.d_finish)
    print(
        f"\n(d) Three jobs (TAM, lookalike, TAM; {scale.d_rows:,} rows each) pending then "
        f"running, terminal {finish} s after creation;\n    one tap run with poll_interval "
        "0.25, max_poll_interval 0.5. Wall time from creating the jobs to the tap's exit.\n"
        f"    Target: <= {TARGET_D} x the slowest job ({slowest:g} s)."
    )
    kinds: tuple[t.Literal["tam", "lookalike"], ...] = ("tam", "lookalike", "tam")
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        created = time.monotonic()
        jobs = [
            (
                kind,
                server.add_job(
                    JobSpec(
                        kind=kind,
                        rows=scale.d_rows,
                        pending_seconds=seconds / 2,
                        running_seconds=seconds / 2,
                    )
                ),
            )
            for kind, seconds in zip(kinds, scale.d_finish, strict=True)
        ]
        tam_ids = [job_id for kind, job_id in jobs if kind == "tam"]
        lookalike_ids = [job_id for kind, job_id in jobs if kind == "lookalike"]
        config = bench.config(
            server,
            tam_job_ids=tam_ids,
            lookalike_job_ids=lookalike_ids,
            poll_interval=0.25,
            max_poll_interval=0.5,
        )
        run = bench.tap_run(config)
        wall = run.ended - created
    expect_records(run, "tam_companies", scale.d_rows * len(tam_ids), "(d) TAM jobs")
    expect_records(
        run, "lookalike_companies", scale.d_rows * len(lookalike_ids), "(d) lookalike job"
    )
    ratio = wall / slowest
    print_table(
        ["", "wall s", "x slowest", "after slowest s", "target", ""],
        [
            [
                "3 jobs, one run",
                f"{wall:.2f}",
                f"{ratio:.2f}",
                f"{wall - slowest:.2f}",
                f"<= {TARGET_D:.2f}",
                verdict(ratio, TARGET_D),
            ]
        ],
    )
    return {"wall_s": wall, "slowest_s": slowest, "x_slowest": ratio}


def section_peers(bench: Bench, rows: int) -> dict[str, t.Any]:
    """(e) tap | target-duckdb against dlt's rest_api source, both into DuckDB, same job.

    Args:
        bench: The runner.
        rows: Rows of the job.

    Returns:
        Wall time, peak memory and rows landed of each pipeline.

    Raises:
        BenchError: If a pipeline failed or did not land every row.
    """
    try:
        shipped = peers.shipped_target_settings()
    except peers.PeerError as exc:
        raise BenchError(str(exc)) from None
    shipped_text = ", ".join(
        f"{key} {value:,}" if isinstance(value, int) else f"{key} {value}"
        for key, value in sorted(shipped.items())
    )
    print(
        f"\n(e) Side by side: one completed TAM job of {rows:,} rows ({rows // PAGE_SIZE} pages), "
        "no latency, into a fresh DuckDB file each.\n"
        f"    tap-openfunnel (defaults: page_concurrency {DEFAULT_CONCURRENCY}) | target-duckdb "
        f"({', '.join(peers.TARGET_REQUIREMENTS)}; upserts on job_id, rank),\n"
        f"      as meltano.yml sets it up ({shipped_text}), then with the target's own defaults\n"
        "      (batch_size_rows 100,000).\n"
        f"    dlt ({', '.join(peers.DLT_REQUIREMENTS)}): rest_api source, cursor paginator on "
        "next_cursor, write_disposition append.\n"
        "    Rows are counted in DuckDB. Peak RSS = highest sum over the pipeline's processes, "
        "sampled every 20 ms.\n"
        f"    Target (the pipeline as meltano.yml sets it up): >= "
        f"{peers.TARGET_SPEEDUP:.0f}x faster than dlt, with <= {peers.TARGET_MEMORY:.2f}x its "
        "peak RSS."
    )
    try:
        target_bin = peers.venv("target-duckdb", peers.TARGET_REQUIREMENTS)
        dlt_bin = peers.venv("dlt", peers.DLT_REQUIREMENTS)
        with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
            job_id = server.add_job(JobSpec(kind="tam", rows=rows))
            tap_config = bench.config(server, tam_job_ids=[job_id])

            def folder(name: str, repeat: int) -> Path:
                path = bench.workdir / f"peers-{name}-{repeat}"
                path.mkdir()
                return path

            names = ("tap", "own", "dlt")
            measured: dict[str, list[peers.PipelineRun]] = {name: [] for name in names}
            # Interleaved, so that a busy spell of the machine hits all three alike.
            for repeat in range(PEER_REPEATS):
                measured["tap"].append(
                    peers.run_tap_pipeline(
                        bench.tap,
                        tap_config,
                        target_bin,
                        folder("tap", repeat),
                        CHILD_TIMEOUT,
                        target_settings=shipped,
                    )
                )
                measured["own"].append(
                    peers.run_tap_pipeline(
                        bench.tap, tap_config, target_bin, folder("own", repeat), CHILD_TIMEOUT
                    )
                )
                measured["dlt"].append(
                    peers.run_dlt_pipeline(
                        dlt_bin,
                        url=server.url,
                        api_key=API_KEY,
                        job_id=job_id,
                        workdir=folder("dlt", repeat),
                        timeout=CHILD_TIMEOUT,
                    )
                )
    except peers.PeerError as exc:
        raise BenchError(str(exc)) from None
    labels = {
        "tap": "tap | target-duckdb (meltano.yml)",
        "own": "  same, target's own defaults",
        "dlt": "dlt rest_api",
    }
    for name, runs_of in measured.items():
        for run in runs_of:
            if run.rows != rows:
                msg = f"(e) {labels[name]} landed {run.rows} rows in DuckDB, expected {rows}"
                raise BenchError(msg)

    def median_run(name: str) -> peers.PipelineRun:
        return sorted(measured[name], key=lambda run: run.wall)[len(measured[name]) // 2]

    def median_peak(name: str) -> float:
        return statistics.median(run.peak_tree for run in measured[name])

    tap_run, own_run, dlt_run = (median_run(name) for name in names)
    speedup = dlt_run.wall / tap_run.wall
    memory = median_peak("tap") / median_peak("dlt")
    own_speedup = dlt_run.wall / own_run.wall
    own_memory = median_peak("own") / median_peak("dlt")
    print_table(
        [
            "pipeline",
            "wall s",
            "each run s",
            "rows in DuckDB",
            "peak RSS MiB",
            "per process: ru_maxrss MiB, CPU s",
        ],
        [
            [
                labels[name],
                f"{median_run(name).wall:.2f}",
                " ".join(f"{run.wall:.2f}" for run in measured[name]),
                f"{rows:,}",
                f"{median_peak(name) / MIB:,.0f}",
                ", ".join(
                    f"{key} {value / MIB:,.0f} MiB {median_run(name).cpu[key]:.1f} s"
                    for key, value in median_run(name).peaks.items()
                ),
            ]
            for name in names
        ],
    )
    print(
        f"    Medians of {PEER_REPEATS} interleaved runs; CPU and ru_maxrss are those of the "
        "median run."
    )
    print_table(
        ["", "meltano.yml", "target defaults", "target", ""],
        [
            [
                "speed (dlt wall / tap wall)",
                f"{speedup:.2f}x",
                f"{own_speedup:.2f}x",
                f">= {peers.TARGET_SPEEDUP:.0f}x",
                verdict(speedup, peers.TARGET_SPEEDUP, at_most=False),
            ],
            [
                "memory (tap peak / dlt peak)",
                f"{memory:.3f}x",
                f"{own_memory:.3f}x",
                f"<= {peers.TARGET_MEMORY:.2f}x",
                verdict(memory, peers.TARGET_MEMORY),
            ],
        ],
    )
    return {
        "rows": rows,
        "tap": {"wall_s": tap_run.wall, "peak_rss_mib": median_peak("tap") / MIB},
        "target_settings": shipped,
        "tap_target_defaults": {
            "wall_s": own_run.wall,
            "peak_rss_mib": median_peak("own") / MIB,
        },
        "dlt": {"wall_s": dlt_run.wall, "peak_rss_mib": median_peak("dlt") / MIB},
        "speedup": speedup,
        "memory_ratio": memory,
    }


# ---------------------------------------------------------------------------- main


def machine() -> str:
    """Describe the machine and the environment the figures come from.

    Returns:
        One paragraph.
    """
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    env = ", ".join(
        f"{name}={os.environ.get(name, '(unset)')}"
        for name in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MALLOC_ARENA_MAX")
    )
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"{memory:.0f} GiB; load average {load} at the start.\nPython "
        f"{platform.python_version()}, singer-sdk {metadata.version('singer-sdk')}, msgspec "
        f"{metadata.version('msgspec')}, requests {metadata.version('requests')}; {env}."
    )


def byte_compile() -> str:
    """Byte-compile the tap's package, as a wheel install is (``make install`` does too).

    The project's virtualenv holds the tap as an editable install, which pip does not
    compile; with PYTHONDONTWRITEBYTECODE set, every start would compile its modules
    again and the figures would measure that instead of the tap.

    Returns:
        A line for the header.
    """
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "tap_openfunnel")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"tap_openfunnel could not be byte-compiled: {done.stdout.strip()[-300:]}"
    return "tap_openfunnel byte-compiled before measuring, as a wheel install is."


def short_machine() -> str:
    """The machine in a few words, for the README's summary.

    Returns:
        CPUs, memory and Python version.
    """
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"singer-sdk {metadata.version('singer-sdk')}"
    )


def header(scale_name: str) -> None:
    """Print what ran where."""
    print(
        f"tap-openfunnel benchmark ({scale_name}) on {machine()}\n{byte_compile()}\n"
        "The fake server runs in this process (threaded, 127.0.0.1); the tap runs as its CLI "
        "in a fresh process per figure.\nFigures are not assertions: compare them within "
        "one run, machines are noisy.\n"
    )


class Tee(io.TextIOBase):
    """Writes to stdout and keeps a copy, for the Markdown report.

    Args:
        out: The real stdout.
    """

    def __init__(self, out: t.TextIO) -> None:
        self.out = out
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        """Write to both.

        Args:
            text: What was printed.

        Returns:
            Characters written.
        """
        self.out.write(text)
        self.out.flush()
        return self.copy.write(text)


def write_markdown(path: Path, command: str, output: str) -> None:
    """Write the report page: how it was made, then the run's output verbatim.

    Args:
        path: The Markdown file.
        command: The command line that produced it.
        output: Everything the run printed.
    """
    text = f"""# Benchmarks

Generated by `{command}` from the project's virtual environment (do not edit
by hand: run it again). Each section says which settings it used; the defaults
(`page_concurrency` {DEFAULT_CONCURRENCY}) come first. The machine and the environment variables
that matter are in the first lines of the output below.
The fake OpenFunnel server (`tap_openfunnel/sandbox`) serves 100 rows a page on loopback;
the tap runs as its own CLI process per figure. Ratios are taken within this one run: the
machine is shared and noisy, so compare figures with each other, not with another run.

- Start-up: medians of wall times; `--about` and `--test` pay for importing the Singer SDK,
  which is most of it (compare the two import lines).
- (a) latency hiding: 200 pages at 50 ms of server latency, whole run including start-up,
  against the sequential bound (pages x latency).
- (b) throughput: whole process (`e2e`) and steady-state records/s against
  `benchmarks/bare_loop.py` (requests + json, one page at a time) on the same job.
- (c) memory: peak RSS of the whole tap process, small against large job.
- (d) several jobs finishing at different times, read in one run.
- (e) with `--peers`: `tap-openfunnel | target-duckdb` against a dlt `rest_api` pipeline,
  both into DuckDB, rows counted in DuckDB.

Memory. Issue 12 reported peak RSS growing with the job's size at `page_concurrency` > 1
(1,000 rows 51 MiB, 100,000 rows 93-97 MiB at the default 4, while Python's traced heap
stayed near 28 MiB), and suspected pages decoded in the prefetch threads: each thread
allocates in its own glibc malloc arena, and rows decoded there were freed from the main
thread. On this (busy) machine that growth did not reproduce, with or without the change
(before, in two runs: +1.0 and +1.4 MiB at 4, +2.2 and +2.9 MiB at 8); glibc's
`malloc_info` at exit did show one arena per prefetch thread holding 0.5-0.8 MiB each,
the decoded pages' leftovers. The prefetch threads now fetch bytes only, and each page is
decoded (msgspec, json as the fallback) in the thread that writes its records: the
per-thread arenas hold 0.1-0.3 MiB; (c) below has the difference between 1,000 and
100,000 rows. No allocator setting (such as `MALLOC_ARENA_MAX`) is needed or set.

Throughput. The SDK's msgspec writer flushed stdout after every record; with
`PYTHONUNBUFFERED=1` (set on this machine, and by many schedulers) that is one write
system call per record. The tap now writes RECORD lines in 64 KiB blocks and flushes at
every STATE, so state never runs ahead of its records. It also skips the SDK's
per-record walk over the selection mask when every property is selected.

Start-up. Two costs of every start were not the tap's work. Modules were compiled at
every start: the editable install in `.venv` and the plugin venvs Meltano builds with uv
hold no bytecode, and with `PYTHONDONTWRITEBYTECODE=1` Python never writes it
(`--about` from Meltano's plugin venv took 0.77 s, 0.37 s from `.venv`). `make install`,
`scripts/setup_meltano.sh` and this benchmark now byte-compile, as a wheel install does.
The cyclic garbage collector ran again and again while those modules loaded, over every
object created so far, for about 1,900 objects of garbage (30-50 ms): the command
imports the tap with it off and then freezes what the imports built (`gc.freeze`). And
the interpreter spent 50-100 ms at exit freeing the ~500 modules the Singer SDK imports:
the command now flushes its output and log handlers and ends with `os._exit`. What is
left is importing the Singer SDK (fsspec and universal_pathlib for BATCH files,
jsonschema, requests, joblib), which the tap cannot make lazy. (`python -c 'import
tap_openfunnel.tap'` in the table pays for the collector and the teardown; the
command does not.)

Latency hiding. A prefetch worker now asks for the next page as soon as its answer is
in, instead of when the reading thread gets to that page (each round waited 4-9 ms for
it); at most 2 x `page_concurrency` page bodies wait undecoded, so memory stays bounded.

Where a target is missed or close, this is why:
- (a) is the whole run, start-up included, and sits at its floor on this machine, which
  the line under its table measures: the start-up (a run with no jobs), then one round
  trip for the poll that finds the job terminal (it also brings page_0000), then 25
  more in a row for the other 199 pages, 8 at a time, each as long as a page request
  made with plain `requests` takes against this server (about 51.9 ms for 50 ms of
  latency: Python's HTTP at both ends of loopback). The start-up is nearly all the
  Singer SDK's own imports (fsspec and universal_pathlib for BATCH files, jsonschema,
  requests, joblib for targets), which the tap cannot make lazy; below 0.16 needs a
  lighter `import singer_sdk`. The fake server's latency is the time from a request's
  arrival to its answer, its own work included, as the bound assumes. Until this round
  the work came on top of it (1.5-2.5 ms of Python per page, plus queueing among the
  handler threads): the page_concurrency 1 run took 1.12 x the bound, and at 8 the
  same tap code measured 1.69 s (0.17).
- (b) "e2e" includes start-up, longer for the tap (the Singer SDK) than for the bare
  loop; "steady" leaves it out. On this shared machine the e2e ratio at the defaults
  moved by about 0.15 either way between runs of the same code.
- (e) is bound by target-duckdb: the tap's own process is the small one (see "per
  process"). target-duckdb 0.8.0 flattens every record twice in Python and, by default,
  keeps up to 100,000 rows (`batch_size_rows`) in memory before loading. The project's
  meltano.yml sets 10,000: about half the memory for about 0.2 s more (a load per
  batch), and the target passes state on every 10,000 rows. (e) measures the pipeline
  as meltano.yml sets it up, and shows the target's own defaults beside it. While the
  target loads a batch it reads nothing; the tap asks for a 1 MiB pipe on its stdout
  (64 KiB by default), so it goes on writing meanwhile instead of stopping after about
  100 records: 4.25 s became 4.01 s with 10,000-row batches (medians of 5). The speed
  ratio is close to its goal and the machine's noise decides the verdict: in four full
  runs of this round's final code its median was 4.8x to 5.2x.

```text
{output.rstrip()}
```
"""
    path.write_text(text, encoding="utf-8")


README_START = "<!-- benchmark summary: generated by benchmarks/bench.py --readme -->"
README_END = "<!-- end of benchmark summary -->"


def readme_summary(command: str, figures: dict[str, t.Any]) -> str:
    """The README's benchmark block: each headline figure, its settings and its target.

    Args:
        command: The command line that produced the figures.
        figures: What the run measured.

    Returns:
        The Markdown block, markers included.
    """
    a8 = next(row for row in figures["a"]["runs"] if row["page_concurrency"] == 8)
    tap_b = figures["b"]["variants"][f"tap, concurrency {DEFAULT_CONCURRENCY}"]
    c = {row["page_concurrency"]: row for row in figures["c"]}
    c8, c_default = c.get(8), c.get(DEFAULT_CONCURRENCY)
    rows: list[tuple[str, str, str, str, str]] = [
        (
            "Start-up: `tap-openfunnel --about`",
            "defaults",
            f"{figures['startup']['about_s']:.2f} s",
            "",
            "",
        ),
        (
            "(a) 200 pages at 50 ms latency, whole run vs pages x latency",
            "`page_concurrency` 8",
            f"{a8['x_bound']:.3f} x bound (floor here {figures['a']['floor_x_bound']:.3f})",
            f"<= {TARGET_A}",
            verdict(a8["x_bound"], TARGET_A),
        ),
        (
            "(b) 50,000 rows, records/s vs a bare requests + json loop (whole process)",
            f"defaults (`page_concurrency` {DEFAULT_CONCURRENCY})",
            f"{tap_b['e2e_ratio_to_bare']:.2f}x (steady {tap_b['steady_ratio_to_bare']:.2f}x)",
            f">= {TARGET_B}x",
            verdict(tap_b["e2e_ratio_to_bare"], TARGET_B, at_most=False),
        ),
    ]
    for concurrency, row in ((DEFAULT_CONCURRENCY, c_default), (8, c8)):
        if row is not None:
            default = " (default)" if concurrency == DEFAULT_CONCURRENCY else ""
            rows.append(
                (
                    "(c) peak RSS, 100,000 rows minus 1,000 rows",
                    f"`page_concurrency` {concurrency}{default}",
                    f"{row['diff_mib']:+.1f} MiB",
                    f"<= {TARGET_C[concurrency]:.0f} MiB",
                    verdict(row["diff_mib"], TARGET_C[concurrency]),
                )
            )
    rows.append(
        (
            "(d) three jobs finishing at 2, 3, 4 s, one run",
            "defaults, `poll_interval` 0.25",
            f"{figures['d']['x_slowest']:.2f} x slowest job",
            f"<= {TARGET_D}",
            verdict(figures["d"]["x_slowest"], TARGET_D),
        )
    )
    e = figures.get("e")
    if e is not None:
        settings = ", ".join(
            f"{key} {value}" for key, value in sorted(e["target_settings"].items())
        )
        rows += [
            (
                "(e) 50,000 rows into DuckDB: dlt's wall time over the tap's pipeline's",
                f"tap defaults; target-duckdb as in meltano.yml ({settings})",
                f"{e['speedup']:.2f}x",
                f">= {peers.TARGET_SPEEDUP:.0f}x",
                verdict(e["speedup"], peers.TARGET_SPEEDUP, at_most=False),
            ),
            (
                "(e) same: the pipeline's peak RSS over dlt's",
                "same",
                f"{e['memory_ratio']:.3f}x",
                f"<= {peers.TARGET_MEMORY}x",
                verdict(e["memory_ratio"], peers.TARGET_MEMORY),
            ),
        ]
    table = [
        "| Figure | Settings | Result | Target | Met |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    return "\n".join(
        [
            README_START,
            (
                f"Measured by `{command}` on {figures['machine']}; the fake server on "
                "loopback, 100 rows a page. Every figure, and how each was taken: "
                "[docs/benchmarks.md](docs/benchmarks.md)."
            ),
            "",
            *table,
            README_END,
        ]
    )


def update_readme(path: Path, block: str) -> None:
    """Replace the README's benchmark block (between its markers) with ``block``.

    Args:
        path: The README.
        block: The new block, markers included.

    Raises:
        BenchError: If the README has no such block.
    """
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        msg = f"{path} has no benchmark block ({README_START!r} ... {README_END!r})"
        raise BenchError(msg)
    path.write_text(text[:start] + block + text[end + len(README_END) :], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every section and print the figures.

    Args:
        argv: Command line arguments (default: ``sys.argv[1:]``).

    Returns:
        0, unless a measured process crashed (1).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller jobs, fewer repeats")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run tap | target-duckdb against dlt into DuckDB (builds .bench-venvs/)",
    )
    parser.add_argument(
        "--peers-only", action="store_true", help="run only the side-by-side with dlt"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this Markdown file")
    parser.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON document"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="also rewrite this README's benchmark summary (a full run with --peers only)",
    )
    args = parser.parse_args(argv)
    if args.readme is not None and (args.quick or args.peers_only or not args.peers):
        parser.error("--readme takes a full run with --peers (no --quick, no --peers-only)")
    scale = QUICK if args.quick else DEFAULT
    tee = Tee(sys.stdout)
    began = time.monotonic()
    with contextlib.redirect_stdout(tee):
        header("quick" if args.quick else "default")
        with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as workdir:
            try:
                bench = Bench(Path(workdir))
                figures: dict[str, t.Any] = {
                    "mode": "quick" if args.quick else "default",
                    "machine": short_machine(),
                }
                if not args.peers_only:
                    startup = measure_startup(bench, scale)
                    figures["startup"] = startup
                    figures["a"] = section_a(bench, scale, startup["zero_job_run_s"])
                    figures["b"] = section_b(bench, scale)
                    figures["c"] = section_c(bench, scale)
                    figures["d"] = section_d(bench, scale)
                if args.peers or args.peers_only:
                    figures["e"] = section_peers(bench, scale.b_rows)
            except BenchError as exc:
                print(f"\nBenchmark aborted: {exc}", file=sys.stderr)
                return 1
        figures["total_s"] = time.monotonic() - began
        print(f"\nBenchmark took {figures['total_s']:.0f} s.")
    command = shlex.join([".venv/bin/python", "benchmarks/bench.py", *(argv or sys.argv[1:])])
    if args.markdown is not None:
        write_markdown(args.markdown, command, tee.copy.getvalue())
    if args.readme is not None:
        try:
            update_readme(args.readme, readme_summary(command, figures))
        except BenchError as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
