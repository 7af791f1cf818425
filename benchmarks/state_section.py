"""Section (f): the tap once its state has grown, as it does over months of nightly runs."""

from __future__ import annotations

import json
import typing as t
import uuid

from harness import (
    DEFAULT_CONCURRENCY,
    MIB,
    PAGE_SIZE,
    Bench,
    Scale,
    expect_records,
    print_table,
)

from tap_openfunnel.sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from pathlib import Path


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
