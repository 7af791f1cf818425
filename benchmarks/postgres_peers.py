"""Section (e) into PostgreSQL: tap | target-postgres against dlt's rest_api, one cluster.

The pipeline users run most: the tap piped into MeltanoLabs' target-postgres (the loader
and settings meltano.yml defines, installed by ``make install``), against dlt's rest_api
source with its postgres destination (``.bench-venvs/dlt-postgres``), both into a fresh
database of the same throwaway cluster (initdb on loopback, fsync off), on the same job.
Where the time goes is measured, not guessed: the tap alone (its output to a file), the
target alone (from that file), and the CPU the cluster's processes spent in each run.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import peers
from harness import API_KEY, CHILD_TIMEOUT, MIB, PAGE_SIZE, PEER_REPEATS, ROOT, Bench, print_table
from pg_cluster import USER, Cluster, throwaway_cluster

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from collections.abc import Callable

TARGET_BIN = ROOT / ".meltano" / "loaders" / "target-postgres" / "venv" / "bin"
DLT_POSTGRES_REQUIREMENTS = ("dlt[postgres]==1.31.0",)
SCHEMA = "openfunnel"
DLT_DATASET = "openfunnel_dlt"


# Settings of target-postgres that trade nothing the tap needs: COPY instead of
# INSERT statements, and no second JSON Schema validation of records the tap has
# already shaped to the schema.
TUNED = {"use_copy": True, "validate_records": False}


def _target_config(
    cluster: Cluster, database: str, workdir: Path, extra: dict[str, t.Any] | None = None
) -> Path:
    settings = peers.shipped_target_settings(
        loader_name="target-postgres",
        left_out=("host", "port", "user", "password", "database", "sqlalchemy_url"),
    )
    settings.update(extra or {})
    config = workdir / "target-postgres.json"
    body = {
        **settings,
        "host": cluster.host,
        "port": cluster.port,
        "user": USER,
        "password": "unused-with-trust-auth",
        "database": database,
        "default_target_schema": SCHEMA,
    }
    config.write_text(json.dumps(body), encoding="utf-8")
    return config


def _pipe(
    first: list[str], second: list[str], workdir: Path, names: tuple[str, str]
) -> peers.PipelineRun:
    """``first | second``, both in one process group; measured."""
    logs = {name: workdir / f"{name}.log" for name in names}
    with logs[names[0]].open("wb") as log0, logs[names[1]].open("wb") as log1:
        started = time.monotonic()
        head = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=log0, process_group=0)
        tail = subprocess.Popen(
            second, stdin=head.stdout, stdout=subprocess.DEVNULL, stderr=log1,
            process_group=head.pid,
        )  # fmt: skip
        if head.stdout is not None:
            head.stdout.close()
        processes = {names[0]: head, names[1]: tail}
        measured = peers._follow(processes, started, CHILD_TIMEOUT)  # noqa: SLF001
    peers._check(processes, logs)  # noqa: SLF001
    return measured


def _single(
    command: list[str],
    workdir: Path,
    name: str,
    *,
    stdin: Path | None = None,
    stdout: Path | None = None,
) -> peers.PipelineRun:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log, contextlib.ExitStack() as stack:
        source = stack.enter_context(stdin.open("rb")) if stdin is not None else None
        out = stack.enter_context(stdout.open("wb")) if stdout is not None else log
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdin=source, stdout=out, stderr=log, process_group=0,
            env={**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false",
                 "DLT_DATA_DIR": str(workdir / "dlt-data"), "RUNTIME__LOG_LEVEL": "WARNING"},
            cwd=workdir,
        )  # fmt: skip
        measured = peers._follow({name: process}, started, CHILD_TIMEOUT)  # noqa: SLF001
    peers._check({name: process}, {name: log_path})  # noqa: SLF001
    return measured


@dataclass(frozen=True)
class Measured:
    """One run and the cluster's CPU seconds during it."""

    run: peers.PipelineRun
    database_cpu: float


def _measure(bench: Bench, rows: int) -> dict[str, list[Measured]]:
    """Every variant PEER_REPEATS times, interleaved, each into a fresh database."""
    if not (TARGET_BIN / "target-postgres").exists():
        msg = f"{TARGET_BIN / 'target-postgres'} is missing: `make install` installs it"
        raise peers.PeerError(msg)
    dlt_bin = peers.venv("dlt-postgres", DLT_POSTGRES_REQUIREMENTS)
    with FakeOpenFunnel(page_size=PAGE_SIZE) as server, throwaway_cluster() as cluster:
        job_id = server.add_job(JobSpec(kind="tam", rows=rows))
        tap_config = bench.config(server, tam_job_ids=[job_id])
        counter = iter(range(10_000))

        def workdir(name: str) -> Path:
            path = bench.workdir / f"pg-{name}-{next(counter)}"
            path.mkdir()
            return path

        singer_file = bench.workdir / "pg-tap-output.singer"

        def tap_alone() -> tuple[peers.PipelineRun, str, str]:
            folder = workdir("tap-alone")
            run = _single(
                [bench.tap, "--config", str(tap_config)],
                folder,
                "tap-openfunnel",
                stdout=singer_file,
            )
            return run, "", ""

        def tap_target(extra: dict[str, t.Any] | None = None) -> tuple[peers.PipelineRun, str, str]:
            folder = workdir("tap")
            database = cluster.fresh_database(folder.name.replace("-", "_"))
            config = _target_config(cluster, database, folder, extra)
            run = _pipe(
                [bench.tap, "--config", str(tap_config)],
                [str(TARGET_BIN / "target-postgres"), "--config", str(config)],
                folder,
                ("tap-openfunnel", "target-postgres"),
            )
            return run, database, f"{SCHEMA}.tam_companies"

        def target_alone() -> tuple[peers.PipelineRun, str, str]:
            folder = workdir("target")
            database = cluster.fresh_database(folder.name.replace("-", "_"))
            config = _target_config(cluster, database, folder)
            run = _single(
                [str(TARGET_BIN / "target-postgres"), "--config", str(config)],
                folder,
                "target-postgres",
                stdin=singer_file,
            )
            return run, database, f"{SCHEMA}.tam_companies"

        def dlt() -> tuple[peers.PipelineRun, str, str]:
            folder = workdir("dlt")
            database = cluster.fresh_database(folder.name.replace("-", "_"))
            command = [
                str(dlt_bin / "python"),
                str(Path(__file__).with_name("dlt_pipeline.py")),
                f"--url={server.url}",
                f"--api-key={API_KEY}",
                f"--job-id={job_id}",
                f"--postgres={cluster.url(database)}",
                f"--pipelines-dir={folder / 'dlt-pipelines'}",
                f"--dataset={DLT_DATASET}",
            ]
            return _single(command, folder, "dlt"), database, f"{DLT_DATASET}.tam_companies"

        runners: dict[str, Callable[[], tuple[peers.PipelineRun, str, str]]] = {
            "tap_alone": tap_alone,
            "tap_target": tap_target,
            "tap_target_tuned": lambda: tap_target(TUNED),
            "target_alone": target_alone,
            "dlt": dlt,
        }
        measured: dict[str, list[Measured]] = {name: [] for name in runners}
        for _ in range(PEER_REPEATS):
            for name, runner in runners.items():
                before = cluster.cpu_seconds()
                run, database, table = runner()
                spent = cluster.cpu_seconds() - before
                landed = (
                    rows
                    if not database
                    else int(
                        cluster.psql(database, f"SELECT count(*) FROM {table}")  # noqa: S608
                    )
                )
                measured[name].append(Measured(run.landed(landed), spent))
    return measured


LABELS = {
    "tap_target": "tap | target-postgres (meltano.yml)",
    "tap_target_tuned": "  same, use_copy on, validate_records off",
    "dlt": "dlt rest_api -> postgres",
    "tap_alone": "tap alone, output to a file",
    "target_alone": "target-postgres alone, from that file",
}


def section_postgres(bench: Bench, rows: int) -> dict[str, t.Any]:
    """(e) into PostgreSQL: wall, peak memory, rows landed, and where the time goes.

    Args:
        bench: The runner.
        rows: Rows of the job.

    Returns:
        Per variant: median wall, peak RSS, rows landed, CPU per process and database.

    Raises:
        peers.PeerError: If a pipeline failed or did not land every row.
    """
    print(
        f"\n(e, PostgreSQL) The same job ({rows:,} rows) into a fresh database of one "
        "throwaway PostgreSQL cluster (loopback, fsync off)\n"
        "    per run: tap-openfunnel (defaults) | target-postgres (MeltanoLabs, as "
        "meltano.yml sets it up) against dlt's rest_api source\n"
        f"    ({', '.join(DLT_POSTGRES_REQUIREMENTS)}, append), in-process sandbox server. "
        "'database CPU' = CPU of the cluster's processes during the run."
    )
    measured = _measure(bench, rows)
    for name, runs in measured.items():
        for each in runs:
            if each.run.rows != rows:
                msg = f"(e, PostgreSQL) {LABELS[name]} landed {each.run.rows} rows, not {rows}"
                raise peers.PeerError(msg)

    def median(name: str) -> Measured:
        runs = sorted(measured[name], key=lambda each: each.run.wall)
        return runs[len(runs) // 2]

    order = ("tap_target", "tap_target_tuned", "dlt", "tap_alone", "target_alone")
    print_table(
        ["", "wall s", "each run s", "rows landed", "peak RSS MiB", "CPU s per process",
         "database CPU s"],
        [
            [
                LABELS[name],
                f"{median(name).run.wall:.2f}",
                " ".join(f"{each.run.wall:.2f}" for each in measured[name]),
                f"{median(name).run.rows:,}" if name != "tap_alone" else "",
                f"{statistics.median(each.run.peak_tree for each in measured[name]) / MIB:,.0f}",
                ", ".join(f"{key} {value:.1f}" for key, value in median(name).run.cpu.items()),
                f"{median(name).database_cpu:.1f}",
            ]
            for name in order
        ],
    )  # fmt: skip
    pipe, tuned, dlt = median("tap_target"), median("tap_target_tuned"), median("dlt")
    print(
        f"    Medians of {PEER_REPEATS} interleaved runs. tap | target-postgres took "
        f"{pipe.run.wall:.2f} s against dlt's {dlt.run.wall:.2f} s "
        f"({dlt.run.wall / pipe.run.wall:.2f}x dlt's speed; with "
        f"{', '.join(f'{key} {value}' for key, value in TUNED.items())}: "
        f"{tuned.run.wall:.2f} s, {dlt.run.wall / tuned.run.wall:.2f}x).\n"
        f"    Where the pipeline's time goes: the tap alone needs "
        f"{median('tap_alone').run.wall:.2f} s, the target alone on the tap's output "
        f"{median('target_alone').run.wall:.2f} s, of which the database's CPU "
        f"{median('target_alone').database_cpu:.1f} s."
    )
    return {
        "rows": rows,
        **{
            name: {
                "wall_s": median(name).run.wall,
                "peak_rss_mib": statistics.median(e.run.peak_tree for e in measured[name]) / MIB,
                "rows_landed": median(name).run.rows,
                "cpu_s": median(name).run.cpu,
                "database_cpu_s": median(name).database_cpu,
            }
            for name in order
        },
        "speedup": dlt.run.wall / pipe.run.wall,
        "speedup_tuned": dlt.run.wall / tuned.run.wall,
    }


def main() -> int:
    """Run this section alone: ``.venv/bin/python benchmarks/postgres_peers.py [rows]``.

    Returns:
        0.
    """
    import sys  # noqa: PLC0415 - only the stand-alone run reads arguments

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory(prefix="tap-openfunnel-bench-") as folder:
        section_postgres(Bench(Path(folder)), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
