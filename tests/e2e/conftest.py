"""End-to-end fixtures: Meltano in its own virtualenv, a throwaway PostgreSQL, the fake API.

The tests drive the project's real ``meltano.yml`` and the plugins ``meltano install``
put under ``.meltano/``; each test gets its own Meltano system database (so state never
leaks between tests or into the project's ``.meltano/meltano.db``), its own target
database or file, and a fake OpenFunnel server on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tap_openfunnel.sandbox import FakeOpenFunnel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MELTANO_VENV = Path(os.environ.get("MELTANO_VENV", PROJECT_ROOT / ".meltano-venv"))
MELTANO_BIN = MELTANO_VENV / "bin" / "meltano"
PLUGIN_EXECUTABLES = {
    "tap-openfunnel": ".meltano/extractors/tap-openfunnel/venv/bin/tap-openfunnel",
    "target-postgres": ".meltano/loaders/target-postgres/venv/bin/target-postgres",
    "target-duckdb": ".meltano/loaders/target-duckdb/venv/bin/target-duckdb",
}
DUCKDB_PYTHON = PROJECT_ROOT / ".meltano/loaders/target-duckdb/venv/bin/python"
SHOW_DUCKDB = PROJECT_ROOT / "scripts" / "show_duckdb.py"
SETUP_HINT = (
    "Set up Meltano and its plugins with `make test` (or `scripts/setup_meltano.sh`): it "
    "creates .meltano-venv/ with `pip install 'meltano>=4,<5'` and runs `meltano install`."
)
PG_HINT = (
    "Install PostgreSQL's server binaries (Debian: `apt-get install -y postgresql`, which "
    "puts initdb and pg_ctl in /usr/lib/postgresql/<version>/bin), or point PG_BIN at the "
    "folder holding them."
)
E2E_API_KEY = "of_e2e_key_7b1d"
# Every subprocess gets a deadline: a hung pipeline fails the test instead of CI.
RUN_TIMEOUT = 180
# Variables of the developer's shell that would change what the pipeline does.
_FOREIGN_PREFIXES = ("TAP_OPENFUNNEL_", "TARGET_POSTGRES_", "TARGET_DUCKDB_", "MELTANO_")


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- Meltano


@dataclass
class MeltanoProject:
    """The project's ``meltano.yml``, run with a private system database and env."""

    root: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [str(MELTANO_BIN), *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run one Meltano command to the end and capture its output."""
        return subprocess.run(
            self.command(*args),
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start one Meltano command in its own process group (so it can be signalled)."""
        return subprocess.Popen(
            self.command(*args),
            cwd=self.root,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def state(self, state_id: str) -> dict[str, Any]:
        """Return the Singer state Meltano holds for ``state_id`` ({} when none)."""
        result = self.run("state", "get", state_id, timeout=60)
        assert result.returncode == 0, describe(result)
        text = result.stdout.strip()
        return json.loads(text) if text else {}


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The end of a command's output, for an assertion message."""
    output = (result.stdout or "") + (result.stderr or "")
    return f"exit {result.returncode}; output ends with:\n{output[-4000:]}"


@pytest.fixture(scope="session")
def meltano_installation() -> Path:
    """Meltano and the plugins the tests use, installed; fail (not skip) when missing."""
    if not MELTANO_BIN.is_file():
        pytest.fail(f"Meltano is not installed at {MELTANO_BIN}. {SETUP_HINT}", pytrace=False)
    missing = [name for name, path in PLUGIN_EXECUTABLES.items() if not (PROJECT_ROOT / path).is_file()]
    if missing or not DUCKDB_PYTHON.is_file():
        pytest.fail(f"Meltano plugins not installed: {missing}. {SETUP_HINT}", pytrace=False)
    return MELTANO_BIN


def clean_env() -> dict[str, str]:
    """This process's environment without the settings a developer may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}


@pytest.fixture
def meltano(meltano_installation, tmp_path) -> MeltanoProject:
    env = clean_env()
    env.update(
        {
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",
            "MELTANO_ENVIRONMENT": "dev",
            # A missing plugin must fail the test with SETUP_HINT, not reach for PyPI.
            "MELTANO_AUTO_INSTALL": "false",
            "MELTANO_CLI_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return MeltanoProject(root=PROJECT_ROOT, env=env)


# ------------------------------------------------------------------------- fake API


@pytest.fixture
def fake_api():
    with FakeOpenFunnel(api_keys=(E2E_API_KEY,)) as server:
        yield server


def tap_env(server: FakeOpenFunnel, *, tam: list[str], lookalike: list[str], **extra: Any) -> dict[str, str]:
    """The tap's settings as the environment variables Meltano reads."""
    settings: dict[str, Any] = {
        "api_url": server.url,
        "api_key": E2E_API_KEY,
        "tam_job_ids": tam,
        "lookalike_job_ids": lookalike,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "max_retry_wait": 0.1,
        **extra,
    }
    return {
        f"TAP_OPENFUNNEL_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.items()
    }


# ------------------------------------------------------------------------ PostgreSQL


def find_pg_bin() -> Path:
    """The folder with initdb and pg_ctl: PG_BIN, else Debian's newest, else PATH."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    pytest.fail(f"PostgreSQL's initdb/pg_ctl/psql were not found. {PG_HINT}", pytrace=False)
    raise AssertionError  # unreachable: pytest.fail raises


@dataclass
class PostgresCluster:
    """A running throwaway cluster on loopback, with trust authentication."""

    bin_dir: Path
    port: int
    user: str = "openfunnel"
    host: str = "127.0.0.1"

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
                "-c", sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"psql failed: {result.stderr}"
        return result.stdout.strip()


def _as_cluster_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its server tools as 'postgres' then."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("Running as root, but `runuser` (util-linux) is missing.", pytrace=False)
    return [runuser, "-u", "postgres", "--", *command]


def _cluster_owner_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 - POSIX only, and only needed as root

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"Running as root, but there is no 'postgres' user. {PG_HINT}", pytrace=False)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session: initdb into a temp dir, start, stop at the end."""
    bin_dir = find_pg_bin()
    owner = _cluster_owner_ids()
    # As root the folder must be reachable by 'postgres': /tmp is, pytest's tmp is not.
    base = Path(tempfile.mkdtemp(prefix="tap-openfunnel-pg-", dir="/tmp" if owner else None))
    if owner:
        os.chown(base, *owner)
    data, log = base / "data", base / "server.log"
    cluster = PostgresCluster(bin_dir=bin_dir, port=free_port())
    run = {"capture_output": True, "text": True, "timeout": 120, "check": False}
    initdb = subprocess.run(
        _as_cluster_owner(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", cluster.user, "-A", "trust",
             "-E", "UTF8", "--no-sync"]
        ),
        **run,
    )
    if initdb.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {initdb.stdout}{initdb.stderr}", pytrace=False)
    options = (
        f"-p {cluster.port} -k {base} -c listen_addresses={cluster.host} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = subprocess.run(
        _as_cluster_owner([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"]),
        **run,
    )
    try:
        if started.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"pg_ctl start failed: {started.stdout}{started.stderr}{server_log}", pytrace=False)
        yield cluster
    finally:
        subprocess.run(_as_cluster_owner([*pg_ctl, "-m", "immediate", "stop"]), **run)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class PostgresDatabase:
    cluster: PostgresCluster
    name: str
    schema: str = "openfunnel"

    def query(self, sql: str) -> str:
        return self.cluster.psql(self.name, sql)

    def count(self, table: str) -> int:
        return int(self.query(f'SELECT count(*) FROM "{self.schema}"."{table}"'))

    def duplicate_keys(self, table: str, keys: tuple[str, ...] = ("job_id", "rank")) -> int:
        columns = ", ".join(f'"{key}"' for key in keys)
        return int(
            self.query(
                f'SELECT count(*) FROM (SELECT {columns} FROM "{self.schema}"."{table}" '
                f"GROUP BY {columns} HAVING count(*) > 1) AS dup"
            )
        )

    @property
    def target_env(self) -> dict[str, str]:
        """target-postgres settings as the environment variables Meltano reads."""
        return {
            "TARGET_POSTGRES_HOST": self.cluster.host,
            "TARGET_POSTGRES_PORT": str(self.cluster.port),
            "TARGET_POSTGRES_USER": self.cluster.user,
            "TARGET_POSTGRES_PASSWORD": "unused-trust-auth",
            "TARGET_POSTGRES_DATABASE": self.name,
            "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": self.schema,
        }


@pytest.fixture
def pg_database(postgres, request) -> PostgresDatabase:
    """A fresh database per test, so that row counts are exact."""
    name = "e2e_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    postgres.psql("postgres", f'DROP DATABASE IF EXISTS "{name}"')
    postgres.psql("postgres", f'CREATE DATABASE "{name}"')
    return PostgresDatabase(cluster=postgres, name=name)


# --------------------------------------------------------------------------- DuckDB


def duckdb_counts(path: Path, schema: str = "openfunnel") -> dict[str, Any]:
    """Row counts per table and duplicate keys, read with the loader's own duckdb 1.2.2."""
    result = subprocess.run(
        [str(DUCKDB_PYTHON), str(SHOW_DUCKDB), str(path), "--schema", schema, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"show_duckdb.py failed: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


# ------------------------------------------------------------------------ processes


def children_of(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc), for signalling one pipeline member."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # Fields after the parenthesised command name: state, ppid, ...
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def wait_for(predicate, *, timeout: float, interval: float = 0.02, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_group(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal a process group started with start_new_session, and reap its leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)

