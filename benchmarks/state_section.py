"""Section (f): the tap once its state has grown, as it does over months of nightly runs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness import (
    CHILD_TIMEOUT,
    DEFAULT,
    DEFAULT_CONCURRENCY,
    MIB,
    PAGE_SIZE,
    QUICK,
    Bench,
    BenchError,
    Scale,
    expect_records,
    print_table,
)

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

# Rows of each job of the many-jobs run: small jobs, so that STATE, not records, is
# what grows.
MANY_JOBS_ROWS = 2
_COMPANY_RECORD = b'{"type":"RECORD","stream":"tam_companies"'
_STATE = b'{"type":"STATE"'


def grown_state(path: Path, partitions: int) -> None:
    """Write a state holding ``partitions`` finished jobs of tam_builds entries.

    Each partition is what a submitted job read to the end leaves behind (docs/state.md):
    its job id, the entry's fingerprint and request, when it was submitted, the rows
    read and ``done``. Ids are fixed, so every run of the benchmark reads the same state.

    Args:
        path: The state file to write.
        partitions: How many.
    """
    entries = [
        {
            "context": {"job_id": str(uuid.UUID(int=index + 1, version=4))},
            "origin": "submitted",
            "fingerprint": f"{index:064x}",
            "submitted_at": "2026-01-01T02:00:03+00:00",
            "request": {"query": f"cloud observability and monitoring tools, market {index}"},
            "rows_read": 1234,
            "done": True,
        }
        for index in range(partitions)
    ]
    state = {"bookmarks": {"tam_companies": {"partitions": entries}}}
    path.write_text(json.dumps(state), encoding="utf-8")


def section_f(bench: Bench, scale: Scale) -> list[dict[str, float]]:
    """(f) The (b) job read with an empty state, then with a state of many finished jobs.

    The state keeps a partition for every job ever read, and every STATE line holds the
    whole state: after a year of nightly runs that each read a new job, a few hundred
    partitions ride along with every STATE line.

    Args:
        bench: The runner.
        scale: Sizes.

    Returns:
        One dict per state size.
    """
    rows = scale.b_rows
    print(
        f"\n(f) State that has grown: the completed TAM job of {rows:,} rows ({rows // PAGE_SIZE} "
        f"pages), no latency, defaults (page_concurrency {DEFAULT_CONCURRENCY}),\n"
        f"    read with an empty state, then with a state holding {scale.f_partitions:,} "
        "finished jobs (as after that many nightly runs that each read a new job).\n"
        "    'output MiB': everything the tap wrote; the difference is STATE lines, each "
        "holding the whole state (after every page while it is\n"
        "    smaller than a page of records, then once the records since the last one "
        "outweigh it)."
    )
    results: list[dict[str, float]] = []
    table: list[list[str]] = []
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        config = bench.config(server, tam_job_ids=[job_id])
        empty_wall = None
        for partitions in (0, scale.f_partitions):
            state = bench.workdir / f"state-{partitions}.json"
            grown_state(state, partitions)
            run = bench.run(
                [bench.tap, "--config", str(config), "--state", str(state)],
                timed_stream="tam_companies",
            )
            expect_records(run, "tam_companies", rows, f"(f) {partitions} partitions")
            empty_wall = empty_wall or run.wall
            table.append(
                [
                    f"{partitions:,}",
                    f"{state.stat().st_size / 1024:,.0f}",
                    f"{run.wall:.2f}",
                    f"{run.wall / empty_wall:.2f}",
                    f"{run.output_bytes / MIB:,.0f}",
                ]
            )
            results.append(
                {
                    "partitions": partitions,
                    "wall_s": run.wall,
                    "x_empty": run.wall / empty_wall,
                    "output_mib": run.output_bytes / MIB,
                }
            )
    print_table(
        ["finished jobs in state", "state KiB", "wall s", "x empty state", "output MiB"], table
    )
    return results


@dataclass(frozen=True)
class ManyJobsRun:
    """One run of many small jobs: its wall time and what it wrote."""

    jobs: int
    wall: float
    record_bytes: int
    state_bytes: int
    state_lines: int


def many_jobs_run(bench: Bench, jobs: int, rows: int) -> ManyJobsRun:
    """Run the tap on ``jobs`` completed TAM jobs of ``rows`` rows each, from an empty state.

    Stdout goes to a file (not the drain), so that STATE lines can be told apart from
    RECORD lines by their prefix afterwards.

    Args:
        bench: The runner (its workdir and tap).
        jobs: How many jobs, all in ``tam_job_ids``.
        rows: Rows per job.

    Returns:
        The run's figures.

    Raises:
        BenchError: The tap failed, or did not deliver every row.
    """
    with FakeOpenFunnel(page_size=PAGE_SIZE, max_requests=10 * jobs + 100) as server:
        ids = [server.add_job(JobSpec(kind="tam", rows=rows)) for _ in range(jobs)]
        config = bench.config(server, tam_job_ids=ids, poll_interval=0.05, max_poll_interval=0.1)
        out = bench.workdir / f"many-{jobs}.out"
        log = bench.workdir / f"many-{jobs}.log"
        with out.open("wb") as stdout, log.open("wb") as stderr:
            started = time.monotonic()
            code = subprocess.run(
                [bench.tap, "--config", str(config)],
                stdout=stdout,
                stderr=stderr,
                timeout=CHILD_TIMEOUT,
                check=False,
            ).returncode
            wall = time.monotonic() - started
    records = record_bytes = state_lines = state_bytes = 0
    with out.open("rb") as lines:
        for line in lines:
            if line.startswith(_COMPANY_RECORD):
                records += 1
                record_bytes += len(line)
            elif line.startswith(_STATE):
                state_lines += 1
                state_bytes += len(line)
    if code != 0 or records != jobs * rows:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        msg = (
            f"{jobs} jobs: exit {code}, {records} of {jobs * rows} records; "
            f"the end of its stderr:\n{tail}"
        )
        raise BenchError(msg)
    return ManyJobsRun(jobs, wall, record_bytes, state_bytes, state_lines)


def section_f_jobs(bench: Bench, scale: Scale) -> dict[str, float]:
    """(f) continued: many small jobs in one config, and the STATE they make the tap write.

    Every job has its own partition in state and every STATE line holds the whole
    state, so STATE written after each finished job would grow with the square of the
    jobs. The ratio of STATE bytes between the two runs, against the ratio of jobs,
    tells linear (about 5) from quadratic (about 25).

    Args:
        bench: The runner.
        scale: Sizes (``f_partitions`` jobs, then five times as many).

    Returns:
        The figures of both runs and their ratios.
    """
    small, large = scale.f_partitions, 5 * scale.f_partitions
    rows = MANY_JOBS_ROWS
    print(
        f"\n(f) Many small jobs in one config: {small:,} and then {large:,} completed TAM "
        f"jobs of {rows} rows each (one page), read from an empty state at the defaults.\n"
        "    STATE bytes are every STATE line the tap wrote; linear growth makes the "
        f"ratio about {large // small}, quadratic about {(large // small) ** 2}."
    )
    runs = [many_jobs_run(bench, jobs, rows) for jobs in (small, large)]
    table = [
        [
            f"{run.jobs:,}",
            f"{run.wall:.1f}",
            f"{run.record_bytes / MIB:,.2f}",
            f"{run.state_lines:,}",
            f"{run.state_bytes / MIB:,.2f}",
        ]
        for run in runs
    ]
    first, second = runs
    table.append(
        [
            f"ratio x{second.jobs / first.jobs:.0f}",
            f"{second.wall / first.wall:.1f}",
            f"{second.record_bytes / first.record_bytes:.1f}",
            f"{second.state_lines / first.state_lines:.1f}",
            f"{second.state_bytes / first.state_bytes:.1f}",
        ]
    )
    print_table(["jobs", "wall s", "RECORD MiB", "STATE lines", "STATE MiB"], table)
    return {
        "jobs": [run.jobs for run in runs],
        "wall_s": [run.wall for run in runs],
        "state_bytes": [run.state_bytes for run in runs],
        "record_bytes": [run.record_bytes for run in runs],
        "state_ratio": second.state_bytes / first.state_bytes,
        "wall_ratio": second.wall / first.wall,
    }


def main() -> int:
    """Run this section alone: ``.venv/bin/python benchmarks/state_section.py [--quick]``.

    Returns:
        0, or 1 when a measured process failed.
    """
    scale = QUICK if "--quick" in sys.argv[1:] else DEFAULT
    with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as workdir:
        try:
            section_f_jobs(Bench(Path(workdir)), scale)
        except BenchError as exc:
            print(f"\nBenchmark aborted: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
