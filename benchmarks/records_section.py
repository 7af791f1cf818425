"""Section (b): records per second against a bare loop, with two servers side by side.

- the in-process sandbox, which renders every page per request in the benchmark's own
  process (a slow server: prefetching hides it);
- ``fast_server.py``, a process of its own answering from memory with pre-rendered
  bytes: the figure measures the client alone.

Run alone with ``.venv/bin/python benchmarks/records_section.py`` (``--quick``: smaller;
``--fast-only --repeats 5``: the fast server only, five interleaved runs of each variant).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import typing as t
from pathlib import Path

from fast_server import FastServer
from harness import (
    API_KEY,
    DEFAULT,
    DEFAULT_CONCURRENCY,
    HERE,
    PAGE_SIZE,
    QUICK,
    TAM_PATH,
    TARGET_B,
    Bench,
    Run,
    Scale,
    expect_records,
    print_table,
    verdict,
)

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

TARGET_B_STEADY = 1.2  # steady-state records/s >= 1.2 x the bare loop's
BARE = "bare loop"
BARE_SDK = "bare loop, importing singer_sdk"
DEFAULT_TAP = f"tap, concurrency {DEFAULT_CONCURRENCY}"
SERVERS = {
    "sandbox": "in-process sandbox (renders each page per request, in the benchmark process)",
    "fast": "fast server (its own process, pre-rendered pages from memory)",
}


class Served(t.Protocol):
    """What a run needs of a server: its URL."""

    url: str


def measure(
    bench: Bench, scale: Scale, server: Served, job_id: str, empty_id: str
) -> dict[str, t.Any]:
    """Every variant on one server, interleaved; medians, and the ratios to the bare loops.

    Args:
        bench: The runner.
        scale: Sizes.
        server: The server.
        job_id: A completed job of ``scale.b_rows`` rows.
        empty_id: A completed job with no rows.

    Returns:
        Figures per variant.
    """
    rows = scale.b_rows

    def bare(*extra: str) -> t.Callable[[str], Run]:
        def run(job: str) -> Run:
            command = [
                sys.executable,
                str(HERE / "bare_loop.py"),
                f"--url={server.url}",
                f"--api-key={API_KEY}",
                f"--job-id={job}",
                f"--path={TAM_PATH}",
                *extra,
            ]
            return bench.run(command, timed_stream="tam_companies")

        return run

    def tap(concurrency: int) -> t.Callable[[str], Run]:
        return lambda job: bench.tap_run(
            bench.config(server, tam_job_ids=[job], page_concurrency=concurrency)  # type: ignore[arg-type]
        )

    variants = {
        BARE: bare(),
        BARE_SDK: bare("--import-singer-sdk"),
        DEFAULT_TAP: tap(DEFAULT_CONCURRENCY),
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
    wall = {name: statistics.median(run.wall for run in tries) for name, tries in runs.items()}
    steady = {
        name: statistics.median(run.steady_rate("tam_companies") for run in tries)
        for name, tries in runs.items()
    }
    cpu = {name: statistics.median(run.cpu for run in tries) for name, tries in runs.items()}
    return {
        name: {
            "wall_s": wall[name],
            "e2e_records_per_s": rows / wall[name],
            "e2e_ratio_to_bare_sdk": wall[BARE_SDK] / wall[name],
            "e2e_ratio_to_bare": wall[BARE] / wall[name],
            "steady_records_per_s": steady[name],
            "steady_ratio_to_bare": steady[name] / steady[BARE],
            "cpu_s": cpu[name],
            "fixed_cpu_s": fixed[name],
            "net_cpu_us_per_record": (cpu[name] - fixed[name]) / rows * 1e6,
        }
        for name in variants
    }


def print_server(name: str, variants: dict[str, dict[str, t.Any]]) -> None:
    """One server's table.

    Args:
        name: The server's key in :data:`SERVERS`.
        variants: From :func:`measure`.
    """
    print(f"    Server: {SERVERS[name]}")
    table = []
    for variant, row in variants.items():
        is_target = variant == DEFAULT_TAP
        table.append(
            [
                variant,
                f"{row['wall_s']:.2f}",
                f"{row['e2e_records_per_s']:,.0f}",
                f"{row['e2e_ratio_to_bare_sdk']:.2f}",
                f"{row['e2e_ratio_to_bare']:.2f}",
                f"{row['steady_records_per_s']:,.0f}",
                f"{row['steady_ratio_to_bare']:.2f}",
                f"{row['net_cpu_us_per_record']:.0f}",
                (
                    verdict(row["e2e_ratio_to_bare_sdk"], TARGET_B, at_most=False)
                    + " / "
                    + verdict(row["steady_ratio_to_bare"], TARGET_B_STEADY, at_most=False)
                )
                if is_target
                else "",
            ]
        )
    print_table(
        [
            "",
            "wall s",
            "e2e rec/s",
            "e2e/bare+sdk",
            "e2e/bare",
            "steady rec/s",
            "steady/bare",
            "CPU us/rec",
            "e2e / steady",
        ],
        table,
    )


def section_b(bench: Bench, scale: Scale, *, sandbox_too: bool = True) -> dict[str, t.Any]:
    """(b) Records per second of the tap against bare requests + json loops, two servers.

    Args:
        bench: The runner.
        scale: Sizes.
        sandbox_too: Measure on the in-process sandbox as well as on the fast server.

    Returns:
        Figures per server and variant; ``variants`` and ``ratio`` are the fast server's.
    """
    rows = scale.b_rows
    print(
        f"\n(b) Record path: completed TAM job of {rows:,} rows ({rows // PAGE_SIZE} pages), "
        "no server latency. Each process writes its\n    stdout to a pipe read by a separate "
        "drain process (benchmarks/drain.py). 'e2e' = records / wall, start-up and job "
        "polling\n    included; 'steady' = records between the first and the last record "
        f"line the drain read. Medians of {scale.b_repeats} interleaved runs.\n"
        f"    Targets: {DEFAULT_TAP} (the default) e2e records/s >= {TARGET_B:.1f}x the bare "
        f"loop that imports singer_sdk first, steady >= {TARGET_B_STEADY:.1f}x the bare "
        "loop's.\n    Two servers, side by side: the targets count on the fast one, where "
        "the client's own CPU decides."
    )
    servers: dict[str, dict[str, t.Any]] = {}
    if sandbox_too:
        with FakeOpenFunnel(page_size=PAGE_SIZE) as sandbox:
            job_id = sandbox.add_job(JobSpec(kind="tam", rows=rows))
            empty_id = sandbox.add_job(JobSpec(kind="tam", rows=0))
            servers["sandbox"] = measure(bench, scale, sandbox, job_id, empty_id)
        print_server("sandbox", servers["sandbox"])
    with FastServer([rows, 0]) as fast:
        servers["fast"] = measure(bench, scale, fast, fast.jobs[0], fast.jobs[1])
    print_server("fast", servers["fast"])
    print(
        "    CPU us/rec: the child's own CPU, minus that of the same command on a job with "
        "no rows, per record.\n    e2e/bare+sdk: against the bare loop that imports "
        "singer_sdk first (the same start-up as the tap's)."
    )
    fast_default = servers["fast"][DEFAULT_TAP]
    return {
        "rows": rows,
        "servers": servers,
        "variants": servers["fast"],
        "ratio": fast_default["e2e_ratio_to_bare_sdk"],
    }


def main() -> int:
    """Run section (b) alone.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller job, one run each")
    parser.add_argument(
        "--fast-only", action="store_true", help="the fast server only (where the targets count)"
    )
    parser.add_argument("--repeats", type=int, help="interleaved runs of each variant")
    args = parser.parse_args()
    scale = QUICK if args.quick else DEFAULT
    if args.repeats is not None:
        scale = dataclasses.replace(scale, b_repeats=max(args.repeats, 1))
    with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as workdir:
        section_b(Bench(Path(workdir)), scale, sandbox_too=not args.fast_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
