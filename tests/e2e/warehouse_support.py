"""Snowflake and BigQuery for the end-to-end tests: the doc's loader blocks, emulators, queries.

Each warehouse test runs Meltano in a project of its own (a temporary folder) whose
``meltano.yml`` is this project's with one change: the loader is the copy-paste block
of docs/meltano.md, its ``executable`` pointed at the emulator wrapper in
``tests/e2e/warehouses/``. The plugins' virtualenvs are the ones ``meltano install`` made
under ``.meltano/`` (linked, not copied); the wrappers' extra packages (fakesnow in the
Snowflake loader's virtualenv, local-bigquery in a Python 3.13 virtualenv of its own)
come from scripts/setup_warehouses.sh, which ``make install`` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from e2e_support import PROJECT_ROOT, SETUP_HINT, describe, free_port

from openfunnel_sandbox import JobSpec
from openfunnel_sandbox.data import page_rows

if TYPE_CHECKING:
    from collections.abc import Iterator

DOCS = PROJECT_ROOT / "docs" / "meltano.md"
WRAPPERS = Path(__file__).resolve().parent / "warehouses"
LOADERS = PROJECT_ROOT / ".meltano" / "loaders"
EMULATOR_VENV = PROJECT_ROOT / ".e2e" / "bigquery-emulator"
WAREHOUSE_SETUP_HINT = (
    "Set up the emulators with `make install` (or `scripts/setup_warehouses.sh`): fakesnow "
    "in the target-snowflake virtualenv, local-bigquery in .e2e/bigquery-emulator/ (Python "
    "3.13). " + SETUP_HINT
)
QUERY_TIMEOUT = 120
# The loader blocks of docs/meltano.md: a ```yaml fence right after this marker line.
_BLOCK = re.compile(r"<!-- loader: (?P<name>[\w-]+) -->\s*```yaml\n(?P<yaml>.*?)```", re.DOTALL)


def doc_loader_blocks() -> dict[str, dict[str, Any]]:
    """The loader definitions of docs/meltano.md's copy-paste blocks, by name."""
    blocks = {}
    for match in _BLOCK.finditer(DOCS.read_text(encoding="utf-8")):
        (loader,) = yaml.safe_load(match["yaml"])["plugins"]["loaders"]
        assert loader["name"] == match["name"], f"block marked {match['name']} defines {loader}"
        blocks[loader["name"]] = loader
    return blocks


def project_loader(name: str) -> dict[str, Any]:
    """A loader's definition in the project's meltano.yml."""
    meltano_yml = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))
    return next(p for p in meltano_yml["plugins"]["loaders"] if p["name"] == name)


def build_project(root: Path, loader_name: str, wrapper: str) -> Path:
    """A Meltano project in ``root``: ours, with the doc's block as the loader.

    Args:
        root: An empty folder.
        loader_name: target-snowflake or target-bigquery.
        wrapper: The file in tests/e2e/warehouses/ that Meltano runs as the loader.

    Returns:
        The project folder.
    """
    loader = dict(doc_loader_blocks()[loader_name])
    # Inside a plugin's virtualenv an absolute executable is taken as it is.
    loader["executable"] = str(WRAPPERS / wrapper)
    meltano_yml = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))
    loaders = meltano_yml["plugins"]["loaders"]
    loaders[:] = [loader if p["name"] == loader_name else p for p in loaders]
    root.mkdir(parents=True, exist_ok=True)
    (root / "meltano.yml").write_text(yaml.safe_dump(meltano_yml, sort_keys=False))
    # The extractor's definition is its lockfile.
    shutil.copytree(PROJECT_ROOT / "plugins", root / "plugins")
    for kind, name in (("extractors", "tap-openfunnel"), ("loaders", loader_name)):
        installed = PROJECT_ROOT / ".meltano" / kind / name
        if not (installed / "venv" / "bin" / "python").is_file():
            pytest.fail(f"{name} is not installed at {installed}. {SETUP_HINT}", pytrace=False)
        (root / ".meltano" / kind).mkdir(parents=True, exist_ok=True)
        (root / ".meltano" / kind / name).symlink_to(installed)
    return root


def python_of(loader_name: str) -> Path:
    """The Python of a loader's virtualenv."""
    return LOADERS / loader_name / "venv" / "bin" / "python"


def ask(command: list[str], requests: list[Any], env: dict[str, str] | None = None) -> list[Any]:
    """Run a query helper: JSON requests on stdin, JSON answers on stdout."""
    result = subprocess.run(
        command,
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=QUERY_TIMEOUT,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{command[1]} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- Snowflake


def check_fakesnow_installed() -> None:
    """Fail (never skip) when the Snowflake emulator is missing."""
    probe = subprocess.run(
        [str(python_of("target-snowflake")), "-c", "import fakesnow, target_snowflake"],
        capture_output=True,
        text=True,
        timeout=QUERY_TIMEOUT,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(f"fakesnow is not installed. {WAREHOUSE_SETUP_HINT}", pytrace=False)


@dataclass
class FakeSnowflake:
    """fakesnow's DuckDB files in a folder, read after the target exited (DuckDB locks them)."""

    db_path: Path
    database: str = "TAMDB"

    def query(self, *sql: str, schema: str) -> list[list[list[Any]]]:
        command = [
            str(python_of("target-snowflake")),
            str(WRAPPERS / "snowflake_query.py"),
            str(self.db_path),
            self.database,
            schema,
        ]
        return ask(command, list(sql))


# ---------------------------------------------------------------------------- BigQuery


@dataclass
class BigQueryEmulator:
    """A running local-bigquery on two free loopback ports."""

    rest: str
    grpc: str
    project: str = "local"

    def ask(self, *requests: dict[str, str]) -> list[Any]:
        command = [
            str(python_of("target-bigquery")),
            str(WRAPPERS / "bigquery_query.py"),
            self.rest,
            self.project,
        ]
        return ask(command, list(requests), env={"NO_GCE_CHECK": "True"})

    def query(self, *sql: str) -> list[list[list[Any]]]:
        return self.ask(*({"sql": s} for s in sql))

    @property
    def target_env(self) -> dict[str, str]:
        """What the wrapper and the google clients need to reach the emulator."""
        return {
            "BQ_EMULATOR_REST": self.rest,
            "BQ_EMULATOR_GRPC": self.grpc,
            "NO_GCE_CHECK": "True",
        }


@contextlib.contextmanager
def bigquery_emulator(folder: Path) -> Iterator[BigQueryEmulator]:
    """Start local-bigquery with its data in ``folder``; stop it at the end.

    Yields:
        The running emulator.
    """
    python = EMULATOR_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(
            f"The BigQuery emulator is not installed at {EMULATOR_VENV}. {WAREHOUSE_SETUP_HINT}",
            pytrace=False,
        )
    rest_port, grpc_port = free_port(), free_port()
    (folder / "extensions").mkdir(parents=True)
    log = folder / "emulator.log"
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            [str(python), str(WRAPPERS / "bigquery_emulator.py"),
             "--data-dir", str(folder / "data"), "--host", "127.0.0.1",
             "--port", str(rest_port), "--grpc-port", str(grpc_port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DUCKDB_EXTENSION_DIR": str(folder / "extensions")},
            start_new_session=True,
        )  # fmt: skip
    emulator = BigQueryEmulator(rest=f"http://127.0.0.1:{rest_port}", grpc=f"127.0.0.1:{grpc_port}")
    try:
        deadline = time.monotonic() + 60
        while not _listening(rest_port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"local-bigquery did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield emulator
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)


def _listening(port: int) -> bool:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------- what the API sent


def api_rows(job_id: str, kind: str, rows: int) -> list[dict[str, Any]]:
    """Every row the fake server serves for a job of ``rows`` rows made with JobSpec's defaults."""
    spec = JobSpec(kind=kind, rows=rows)
    return page_rows(
        kind,
        job_id,
        0,
        rows,
        query=spec.query,
        rows_total=rows,
        bands_total=spec.bands_total,
    )


def null_counts(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, int]:
    """Per field, the rows where the API sent null or nothing."""
    return {name: sum(row.get(name) is None for row in rows) for name in fields}


def rerun_one_page_back(  # noqa: PLR0913 - the e2e fixtures it needs, each one
    meltano: Any,
    project: Path,
    env: dict[str, str],
    fake_api: Any,
    *,
    loader: str,
    tam_job: str,
) -> subprocess.CompletedProcess[str]:
    """Set Meltano's state one page before the TAM job's end, as after an interruption,
    and run the pipeline again: pages 11 and 12 are sent again and must be merged.

    Returns:
        The second run's result (already checked to have exited 0 and re-read pages).
    """
    state_id = f"dev:tap-openfunnel-to-{loader}"
    state = json.loads(meltano.run("state", "get", state_id, cwd=project).stdout)
    partitions = state["singer_state"]["bookmarks"]["tam_companies"]["partitions"]
    (partition,) = [p for p in partitions if p["context"]["job_id"] == tam_job]
    partition.pop("done", None)
    partition["next_cursor"] = "page_0011"
    partition["rows_read"] = 11 * 100
    set_state = meltano.run(
        "state", "set", "--force", state_id, json.dumps(state), cwd=project, env=env
    )
    assert set_state.returncode == 0, describe(set_state)
    path = f"/api/v1/tam/build/{tam_job}"
    gets_before = fake_api.request_count("GET", path)
    second = meltano.run("run", "tap-openfunnel", loader, env=env, cwd=project)
    assert second.returncode == 0, describe(second)
    assert fake_api.request_count("GET", path) - gets_before >= 2, "no page re-sent"
    return second
