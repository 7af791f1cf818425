"""Section (e): tap-openfunnel piped into target-duckdb against dlt's rest_api source."""

from __future__ import annotations

import json
import statistics
import typing as t

import peers
import startup
from harness import (
    API_KEY,
    CHILD_TIMEOUT,
    DEFAULT_CONCURRENCY,
    MIB,
    PAGE_SIZE,
    PEER_REPEATS,
    ROOT,
    Bench,
    BenchError,
    print_table,
    verdict,
)

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# The target-duckdb Meltano installs for `meltano run` (scripts/setup_meltano.sh).
MELTANO_TARGET = ROOT / ".meltano" / "loaders" / "target-duckdb" / "venv" / "bin" / "target-duckdb"


def _measure(
    bench: Bench, rows: int, shipped: dict[str, t.Any]
) -> dict[str, list[peers.PipelineRun]]:
    """Run every pipeline PEER_REPEATS times on one job, interleaved.

    Interleaved, so that a busy spell of the machine hits them all alike.

    Args:
        bench: The runner.
        rows: Rows of the job.
        shipped: target-duckdb's settings from meltano.yml.

    Returns:
        The runs of each pipeline, by name.
    """
    target_bin = peers.venv("target-duckdb", peers.TARGET_REQUIREMENTS)
    dlt_bin = peers.venv("dlt", peers.DLT_REQUIREMENTS)
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        tap_config = bench.config(server, tam_job_ids=[job_id])
        # The tap's output, saved once: the target alone reads it from a file.
        singer_file = bench.workdir / "peers-tap-output.singer"
        peers.capture_tap_output(bench.tap, tap_config, singer_file, CHILD_TIMEOUT)

        def folder(name: str, repeat: int) -> Path:
            path = bench.workdir / f"peers-{name}-{repeat}"
            path.mkdir()
            return path

        def meltano(repeat: int) -> peers.PipelineRun:
            workdir = folder("meltano", repeat)
            env = startup.meltano_env(workdir, server)
            env["TAP_OPENFUNNEL_TAM_JOB_IDS"] = json.dumps([job_id])
            return peers.run_meltano_pipeline(startup.MELTANO, env, workdir, CHILD_TIMEOUT)

        runners: dict[str, Callable[[int], peers.PipelineRun]] = {
            "tap": lambda repeat: peers.run_tap_pipeline(
                bench.tap,
                tap_config,
                target_bin,
                folder("tap", repeat),
                CHILD_TIMEOUT,
                target_settings=shipped,
            ),
            "own": lambda repeat: peers.run_tap_pipeline(
                bench.tap, tap_config, target_bin, folder("own", repeat), CHILD_TIMEOUT
            ),
            "alone": lambda repeat: peers.run_target_alone(
                singer_file,
                target_bin,
                folder("alone", repeat),
                CHILD_TIMEOUT,
                target_settings=shipped,
            ),
        }
        # What users run, when `make install` has set Meltano and its plugins up.
        if startup.MELTANO.exists() and MELTANO_TARGET.exists():
            runners["meltano"] = meltano
        runners["dlt"] = lambda repeat: peers.run_dlt_pipeline(
            dlt_bin,
            url=server.url,
            api_key=API_KEY,
            job_id=job_id,
            workdir=folder("dlt", repeat),
            timeout=CHILD_TIMEOUT,
        )
        measured: dict[str, list[peers.PipelineRun]] = {name: [] for name in runners}
        for repeat in range(PEER_REPEATS):
            for name, runner in runners.items():
                measured[name].append(runner(repeat))
    return measured


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
        measured = _measure(bench, rows, shipped)
    except peers.PeerError as exc:
        raise BenchError(str(exc)) from None
    labels = {
        "tap": "tap | target-duckdb (meltano.yml)",
        "own": "  same, target's own defaults",
        "alone": "target-duckdb alone, from a file",
        "meltano": "meltano run tap-openfunnel target-duckdb",
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

    tap_run, own_run, alone_run, dlt_run = (
        median_run(name) for name in ("tap", "own", "alone", "dlt")
    )
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
            for name in measured
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
    if "meltano" in measured:
        meltano_run = median_run("meltano")
        print(
            "    'meltano run': the same pipeline as users run it, from this project "
            "(environment dev, a fresh system database each run): Meltano's start-up,\n"
            "    its catalog discovery (one more tap start: Meltano caches no catalog for an "
            "editable install, pip_url -e . here) and its relaying of every line\n"
            f"    are in; {dlt_run.wall / meltano_run.wall:.2f}x dlt. CPU and ru_maxrss: "
            "Meltano's, with the tap and the target it waited for."
        )
    else:
        print(
            "    (No 'meltano run' row: Meltano and its plugins are not installed; "
            "`make install` sets them up.)"
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
        "meltano_run": (
            {"wall_s": median_run("meltano").wall, "peak_rss_mib": median_peak("meltano") / MIB}
            if "meltano" in measured
            else None
        ),
        "dlt": {"wall_s": dlt_run.wall, "peak_rss_mib": median_peak("dlt") / MIB},
        "speedup": speedup,
        "memory_ratio": memory,
    }
