"""Side by side with a peer: tap | target-duckdb against dlt's rest_api source, into DuckDB.

Each pipeline gets its own virtual environment under ``.bench-venvs/`` (built once, then
reused while its stamp file matches the pinned requirements), as Meltano would install
each plugin. Both read the same completed job from one fake server, one after the other;
the rows each landed are counted in DuckDB itself, not in anyone's logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import yaml

if t.TYPE_CHECKING:
    from collections.abc import Sequence

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".bench-venvs"
MELTANO_YML = HERE.parent / "meltano.yml"
MIB = 2**20

# target-duckdb 0.8.0 loads through a CSV read that, with duckdb 1.3 or newer, drops
# the first row of every batch; 1.2.2 loads them all (see ../shared notes, meltano.yml).
TARGET_REQUIREMENTS = ("target-duckdb==0.8.0", "duckdb==1.2.2")
DLT_REQUIREMENTS = ("dlt[duckdb]==1.31.0",)
# Goals of issue 12: the tap's pipeline at least 5x faster, with at most a tenth of the
# memory of the peer's.
TARGET_SPEEDUP = 5.0
TARGET_MEMORY = 0.10


class PeerError(Exception):
    """A peer pipeline could not be built or run, so there is nothing to compare."""


def shipped_target_settings(
    meltano_yml: Path = MELTANO_YML,
    *,
    loader_name: str = "target-duckdb",
    left_out: tuple[str, ...] = ("filepath",),
) -> dict[str, t.Any]:
    """The settings of a loader that the project's meltano.yml gives a value.

    What ``meltano run tap-openfunnel <loader>`` passes the target, so (e) measures
    the pipeline users run; where it loads (``left_out``) is each run's own.

    Args:
        meltano_yml: The project file.
        loader_name: The loader.
        left_out: Settings each run sets itself.

    Returns:
        Setting name to value.

    Raises:
        PeerError: If meltano.yml defines no such loader.
    """
    project = yaml.safe_load(meltano_yml.read_text(encoding="utf-8"))
    for loader in project.get("plugins", {}).get("loaders", []):
        if loader.get("name") == loader_name:
            values = {
                setting["name"]: setting["value"]
                for setting in loader.get("settings", [])
                if "value" in setting
            }
            values.update(loader.get("config") or {})
            for name in left_out:
                values.pop(name, None)
            return values
    msg = f"{meltano_yml} defines no {loader_name} loader"
    raise PeerError(msg)


def venv(name: str, requirements: Sequence[str]) -> Path:
    """A virtual environment with ``requirements``, built on first use.

    Args:
        name: Folder name under ``.bench-venvs/``.
        requirements: pip requirement strings (pinned).

    Returns:
        Its ``bin`` folder.

    Raises:
        PeerError: If it could not be built.
    """
    folder = VENVS / name
    stamp = folder / ".bench-stamp"
    # Console scripts name their interpreter by absolute path: a venv copied or moved
    # from another checkout looks complete but cannot start, so the path is stamped too.
    wanted = "\n".join([str(folder.resolve()), *requirements])
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return folder / "bin"
    print(f"    building {folder} ({', '.join(requirements)}); later runs reuse it ...")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(folder)],
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            msg = f"{' '.join(step)} failed:\n{done.stderr[-2000:]}"
            raise PeerError(msg)
    stamp.write_text(wanted, encoding="utf-8")
    return folder / "bin"


@dataclass(frozen=True)
class PipelineRun:
    """One pipeline, measured.

    Attributes:
        wall: Seconds from starting its first process to the exit of its last.
        peak_tree: Highest sum of the resident sets of all its processes, sampled.
        peaks: Each top-level process's own peak RSS (ru_maxrss, from wait4).
        rows: Rows counted in the DuckDB table afterwards.
        cpu: Each top-level process's CPU seconds, user and system (from wait4).
    """

    wall: float
    peak_tree: int
    peaks: dict[str, int]
    rows: int
    cpu: dict[str, float]

    def landed(self, rows: int) -> PipelineRun:
        """The same run, with the rows counted in its database."""
        return dataclasses.replace(self, rows=rows)


class TreeSampler:
    """Samples the summed RSS of every process in one process group, every 20 ms.

    ``ru_maxrss`` gives each process's own exact peak but misses helpers a process
    spawns, and a pipeline's processes peak at different moments: the sampled sum is
    what the machine had to hold at once.

    Args:
        group: The process group id.
    """

    def __init__(self, group: int) -> None:
        self.group = group
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> t.Self:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling; ``peak`` holds the result."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._sample())

    def _sample(self) -> int:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                # Fields after the command name (which may hold spaces) are ")"-split.
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) != self.group:
                    continue
                total += int(Path(entry.path, "statm").read_text().split()[1]) * self._page
            except (OSError, IndexError, ValueError):
                continue  # the process ended between listing and reading
        return total


def _wait(
    processes: dict[str, subprocess.Popen[bytes]], timeout: float
) -> tuple[dict[str, int], dict[str, float]]:
    peaks: dict[str, int] = {}
    cpu: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    for name, process in processes.items():
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                for other in processes.values():
                    other.kill()
                msg = f"{name} did not finish within {timeout:.0f} s"
                raise PeerError(msg)
            time.sleep(0.01)
        process.returncode = os.waitstatus_to_exitcode(status)
        peaks[name] = usage.ru_maxrss * 1024
        cpu[name] = usage.ru_utime + usage.ru_stime
    return peaks, cpu


def _follow(
    processes: dict[str, subprocess.Popen[bytes]], started: float, timeout: float
) -> PipelineRun:
    """Wait for a pipeline's processes, sampling the memory of the first one's group.

    Args:
        processes: The pipeline's processes; the first leads the process group.
        started: ``time.monotonic()`` just before the first was started.
        timeout: Seconds before giving up.

    Returns:
        The run, with no rows counted yet (see :meth:`PipelineRun.landed`).
    """
    leader = next(iter(processes.values()))
    with TreeSampler(leader.pid) as sampler:
        peaks, cpu = _wait(processes, timeout)
    wall = time.monotonic() - started
    return PipelineRun(wall=wall, peak_tree=sampler.peak, peaks=peaks, rows=0, cpu=cpu)


def _check(processes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    for name, process in processes.items():
        if process.returncode != 0:
            tail = "\n".join(logs[name].read_text(errors="replace").splitlines()[-20:])
            msg = f"{name} exited {process.returncode}; the end of its stderr:\n{tail}"
            raise PeerError(msg)


def count_rows(python: Path, database: Path, table: str) -> int:
    """Count a table's rows with the duckdb of the environment that wrote the file.

    Args:
        python: That environment's Python.
        database: The DuckDB file.
        table: ``schema.table``.

    Returns:
        The row count.

    Raises:
        PeerError: If the table cannot be read.
    """
    code = (
        "import duckdb, sys; "
        "con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(con.execute(f'select count(*) from {sys.argv[2]}').fetchall()[0][0])"
    )
    done = subprocess.run(
        [str(python), "-c", code, str(database), table],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        msg = f"counting {table} in {database} failed: {done.stderr[-1500:]}"
        raise PeerError(msg)
    return int(done.stdout.strip())


def run_tap_pipeline(  # noqa: PLR0913 - the pipeline's parts and the sandbox
    tap: str,
    tap_config: Path,
    target_bin: Path,
    workdir: Path,
    timeout: float,
    *,
    target_settings: dict[str, t.Any] | None = None,
) -> PipelineRun:
    """``tap-openfunnel --config ... | target-duckdb --config ...``, measured.

    Args:
        tap: The tap's console script.
        tap_config: Its config file.
        target_bin: The target's environment's ``bin`` folder.
        workdir: Where the database, config and logs go.
        timeout: Seconds before giving up.
        target_settings: target-duckdb's settings besides ``filepath`` (None: its own
            defaults, with the schema ``openfunnel``).

    Returns:
        The measured run.
    """
    database, target_config, table = _target_config(workdir, target_settings)
    logs = {"tap-openfunnel": workdir / "tap.log", "target-duckdb": workdir / "target.log"}
    with logs["tap-openfunnel"].open("wb") as tap_log, logs["target-duckdb"].open("wb") as tlog:
        started = time.monotonic()
        tap_process = subprocess.Popen(
            [tap, "--config", str(tap_config)],
            stdout=subprocess.PIPE,
            stderr=tap_log,
            process_group=0,  # a group of its own, which the target joins
        )
        target = subprocess.Popen(
            [str(target_bin / "target-duckdb"), "--config", str(target_config)],
            stdin=tap_process.stdout,
            stdout=subprocess.DEVNULL,
            stderr=tlog,
            process_group=tap_process.pid,
        )
        if tap_process.stdout is not None:
            tap_process.stdout.close()
        processes = {"tap-openfunnel": tap_process, "target-duckdb": target}
        measured = _follow(processes, started, timeout)
    _check(processes, logs)
    return measured.landed(count_rows(target_bin / "python", database, table))


def _target_config(
    workdir: Path, target_settings: dict[str, t.Any] | None
) -> tuple[Path, Path, str]:
    """Write target-duckdb's config for a fresh database in ``workdir``.

    Returns:
        The database file, the config file and the ``schema.table`` rows land in.
    """
    database = workdir / "tap.duckdb"
    target_config = workdir / "target-duckdb.json"
    settings = {"default_target_schema": "openfunnel", **(target_settings or {})}
    target_config.write_text(json.dumps({**settings, "filepath": str(database)}), encoding="utf-8")
    return database, target_config, f"{settings['default_target_schema']}.tam_companies"


def capture_tap_output(tap: str, tap_config: Path, output: Path, timeout: float) -> None:
    """Run the tap alone and keep its Singer output in ``output``.

    Args:
        tap: The tap's console script.
        tap_config: Its config file.
        output: Where its stdout goes.
        timeout: Seconds before giving up.

    Raises:
        PeerError: If the tap failed.
    """
    log = output.with_suffix(".log")
    with output.open("wb") as out, log.open("wb") as err:
        process = subprocess.Popen([tap, "--config", str(tap_config)], stdout=out, stderr=err)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            msg = f"tap-openfunnel did not finish within {timeout:.0f} s"
            raise PeerError(msg) from None
    _check({"tap-openfunnel": process}, {"tap-openfunnel": log})


def run_target_alone(
    singer_file: Path,
    target_bin: Path,
    workdir: Path,
    timeout: float,
    *,
    target_settings: dict[str, t.Any] | None = None,
) -> PipelineRun:
    """``target-duckdb < file``: the target on the tap's saved output, with no tap running.

    The target's own time for these rows, start-up included, and so the floor of
    ``tap | target-duckdb``: the tap can only add to it.

    Args:
        singer_file: The tap's output (:func:`capture_tap_output`).
        target_bin: The target's environment's ``bin`` folder.
        workdir: Where the database, config and log go.
        timeout: Seconds before giving up.
        target_settings: As for :func:`run_tap_pipeline`.

    Returns:
        The measured run.
    """
    database, target_config, table = _target_config(workdir, target_settings)
    logs = {"target-duckdb": workdir / "target.log"}
    with singer_file.open("rb") as messages, logs["target-duckdb"].open("wb") as log:
        started = time.monotonic()
        target = subprocess.Popen(
            [str(target_bin / "target-duckdb"), "--config", str(target_config)],
            stdin=messages,
            stdout=subprocess.DEVNULL,
            stderr=log,
            process_group=0,
        )
        processes = {"target-duckdb": target}
        measured = _follow(processes, started, timeout)
    _check(processes, logs)
    return measured.landed(count_rows(target_bin / "python", database, table))


def run_meltano_pipeline(
    meltano: Path, env: dict[str, str], workdir: Path, timeout: float
) -> PipelineRun:
    """``meltano run tap-openfunnel target-duckdb`` in the project, as users run it.

    Meltano's start-up, its catalog discovery (a second tap start: Meltano caches no
    catalog for an editable install, ``pip_url: -e .`` as in this project; installed
    from a package, the tap is discovered once), the relaying of every line from tap to
    target and the state it stores are all in.

    Args:
        meltano: The ``meltano`` command (``make install`` builds it).
        env: Meltano's environment (``startup.meltano_env``), the job to read included.
        workdir: Where the database, Meltano's system database and the log go.
        timeout: Seconds before giving up.

    Returns:
        The measured run. Its CPU and ru_maxrss are Meltano's with the tap and the
        target it waited for.
    """
    database = workdir / "meltano.duckdb"
    env = {**env, "TARGET_DUCKDB_FILEPATH": str(database)}
    logs = {"meltano": workdir / "meltano.log"}
    with logs["meltano"].open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [str(meltano), "run", "tap-openfunnel", "target-duckdb"],
            stdout=log,
            stderr=log,
            env=env,
            cwd=HERE.parent,
            process_group=0,
        )
        measured = _follow({"meltano": process}, started, timeout)
    _check({"meltano": process}, logs)
    target_python = HERE.parent / ".meltano/loaders/target-duckdb/venv/bin/python"
    return measured.landed(count_rows(target_python, database, "openfunnel.tam_companies"))


def run_dlt_pipeline(  # noqa: PLR0913 - the fake server's coordinates and the sandbox
    dlt_bin: Path, *, url: str, api_key: str, job_id: str, workdir: Path, timeout: float
) -> PipelineRun:
    """Dlt's rest_api source into DuckDB (benchmarks/dlt_pipeline.py), measured.

    Args:
        dlt_bin: dlt's environment's ``bin`` folder.
        url: The fake server's base URL.
        api_key: Its key.
        job_id: The completed job.
        workdir: Where the database, dlt's folder and the log go.
        timeout: Seconds before giving up.

    Returns:
        The measured run.
    """
    database = workdir / "dlt.duckdb"
    env = {
        **os.environ,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DLT_DATA_DIR": str(workdir / "dlt-data"),
        "RUNTIME__LOG_LEVEL": "WARNING",
    }
    command = [
        str(dlt_bin / "python"),
        str(HERE / "dlt_pipeline.py"),
        f"--url={url}",
        f"--api-key={api_key}",
        f"--job-id={job_id}",
        f"--database={database}",
        f"--pipelines-dir={workdir / 'dlt-pipelines'}",
    ]
    logs = {"dlt": workdir / "dlt.log"}
    with logs["dlt"].open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=log, stderr=log, env=env, cwd=workdir, process_group=0
        )
        measured = _follow({"dlt": process}, started, timeout)
    _check({"dlt": process}, logs)
    return measured.landed(count_rows(dlt_bin / "python", database, "openfunnel_dlt.tam_companies"))
