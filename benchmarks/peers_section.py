"""Section (e): tap-openfunnel piped into target-duckdb against dlt's rest_api source."""

from __future__ import annotations

import statistics
import typing as t

import peers
from harness import (
    API_KEY,
    CHILD_TIMEOUT,
    DEFAULT_CONCURRENCY,
    MIB,
    PAGE_SIZE,
    PEER_REPEATS,
    Bench,
    BenchError,
    print_table,
    verdict,
)

from tap_openfunnel.sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from pathlib import Path


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

            # The tap's output, saved once: the target alone reads it from a file.
            singer_file = bench.workdir / "peers-tap-output.singer"
            peers.capture_tap_output(bench.tap, tap_config, singer_file, CHILD_TIMEOUT)
            names = ("tap", "own", "alone", "dlt")
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
                measured["alone"].append(
                    peers.run_target_alone(
                        singer_file,
                        target_bin,
                        folder("alone", repeat),
                        CHILD_TIMEOUT,
                        target_settings=shipped,
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
        "alone": "target-duckdb alone, from a file",
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

    tap_run, own_run, alone_run, dlt_run = (median_run(name) for name in names)
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
        "median run.\n"
        "    'alone': target-duckdb (meltano.yml settings) reading the tap's saved output from "
        "a file, no tap running: the target's\n"
        f"    own time, which the pipeline can only add to. With this target the tap's pipeline "
        f"cannot beat {alone_run.wall:.2f} s, {dlt_run.wall / alone_run.wall:.2f}x dlt."
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
        "target_alone": {"wall_s": alone_run.wall, "peak_rss_mib": median_peak("alone") / MIB},
        "dlt": {"wall_s": dlt_run.wall, "peak_rss_mib": median_peak("dlt") / MIB},
        "speedup": speedup,
        "memory_ratio": memory,
    }
