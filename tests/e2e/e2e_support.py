"""Helpers of the end-to-end tests: Meltano commands, a throwaway PostgreSQL, processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from openfunnel_sandbox import FakeOpenFunnel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MELTANO_VENV = Path(os.environ.get("MELTANO_VENV", PROJECT_ROOT / ".meltano-venv"))
MELTANO_BIN = MELTANO_VENV / "bin" / "meltano"
PLUGIN_EXECUTABLES = {
    "tap-openfunnel": PROJECT_ROOT / ".meltano/extractors/tap-openfunnel/venv/bin/tap-openfunnel",
    "target-postgres": PROJECT_ROOT / ".meltano/loaders/target-postgres/venv/bin/target-postgres",
    "target-duckdb": PROJECT_ROOT / ".meltano/loaders/target-duckdb/venv/bin/target-duckdb",
}
# DuckDB files are read with the loader's own duckdb (1.2.2), which the project's
# virtualenv does not need to carry.
DUCKDB_PYTHON = PROJECT_ROOT / ".meltano/loaders/target-duckdb/venv/bin/python"
SHOW_DUCKDB = PROJECT_ROOT / "scripts" / "show_duckdb.py"
SETUP_HINT = (
    "Set up Meltano and its plugins with `make test` (or `scripts/setup_meltano.sh`): it "
    "creates .meltano-venv/ with `pip install 'meltano>=4,<5'` and runs `meltano install`."
)
PG_HINT = (
    "Install PostgreSQL's server binaries (Debian: `apt-get install -y postgresql`, which "
    "puts initdb, pg_ctl and psql in /usr/lib/postgresql/<version>/bin), or point PG_BIN "
    "at the folder holding them."
)
E2E_API_KEY = "of_e2e_key_7b1d"
# Every subprocess gets a deadline: a hung pipeline fails its test instead of CI.
RUN_TIMEOUT = 180
# Variables of a developer's shell that would change what the pipelines do.
_FOREIGN_PREFIXES = ("TAP_OPENFUNNEL_", "TARGET_POSTGRES_", "TARGET_DUCKDB_", "MELTANO_")


# Integer columns of every stream kind, whose warehouse type the e2e tests check: the
# schemas' 64-bit bounds must give 64-bit integer columns, never strings or 128-bit.
INTEGER_COLUMNS = (
    ("tam_companies", "rank"),
    ("tam_companies", "employee_count"),
    ("tam_companies", "match_score"),
    ("lookalike_companies", "employee_count"),
    ("jobs", "pages"),
)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The end of a command's output, for an assertion message."""
    output = (result.stdout or "") + (result.stderr or "")
    return f"exit {result.returncode}; output ends with:\n{output[-4000:]}"


# --------------------------------------------------------------------------- Meltano


def check_meltano_installed() -> None:
    """Fail (never skip) with the install command when Meltano or a plugin is missing."""
    if not MELTANO_BIN.is_file():
        pytest.fail(f"Meltano is not installed at {MELTANO_BIN}. {SETUP_HINT}", pytrace=False)
    missing = [name for name, path in PLUGIN_EXECUTABLES.items() if not path.is_file()]
    if missing or not DUCKDB_PYTHON.is_file():
        pytest.fail(f"Meltano plugins are not installed: {missing}. {SETUP_HINT}", pytrace=False)
    # scripts/setup_meltano.sh stamps what the plugins were installed from: the tap's
    # plugin is an editable install, but a dependency added since would be missing.
    stamp = PROJECT_ROOT / ".meltano" / ".plugins-installed"
    current = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "plugins_fingerprint.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    if stamp.is_file() and stamp.read_text().strip() != current:
        pytest.fail(
            "meltano.yml or the tap's dependencies changed since `meltano install`. " + SETUP_HINT,
            pytrace=False,
        )


@dataclass
class MeltanoProject:
    """The project's ``meltano.yml``, run with a private system database and environment."""

    system_db: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Build the environment: this process's, less a developer's pipeline settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        env.update(
            {
                "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
                # State of each test lives in its own system database, never in the
                # project's .meltano/meltano.db.
                "MELTANO_DATABASE_URI": f"sqlite:///{self.system_db}",
                "MELTANO_ENVIRONMENT": "dev",
                # A missing plugin must fail with SETUP_HINT, not go and fetch it.
                "MELTANO_AUTO_INSTALL": "false",
                # Nothing may need Meltano Hub: point it at a closed loopback port.
                "MELTANO_HUB_URL": "http://127.0.0.1:9/hub",
                "MELTANO_HUB_API_ROOT": "http://127.0.0.1:9/hub/meltano/v1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = {**env, **self.env}

    def command(self, *args: str) -> list[str]:
        return [str(MELTANO_BIN), *args]

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT,
        cwd: Path = PROJECT_ROOT,
    ) -> subprocess.CompletedProcess[str]:
        """Run one Meltano command to its end, capturing its output."""
        return subprocess.run(
            self.command(*args),
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self, *args: str, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start one Meltano command in a process group of its own, output to ``log``.

        A file rather than a pipe: nobody reads a pipe while the test waits, and a full
        one would stall the pipeline.
        """
        with log.open("w", encoding="utf-8") as output:
            return subprocess.Popen(
                self.command(*args),
                cwd=PROJECT_ROOT,
                env={**self.env, **(env or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def state(self, state_id: str) -> dict[str, Any]:
        """The Singer state Meltano holds for ``state_id`` ({} when there is none)."""
        result = self.run("state", "get", state_id, timeout=60)
        assert result.returncode == 0, describe(result)
        text = result.stdout.strip()
        return json.loads(text).get("singer_state", {}) if text else {}


def scratch_project(root: Path) -> Path:
    """A copy of this Meltano project in ``root``, around the plugins ``meltano install`` made.

    What Meltano writes (meltano.yml, .env, plugins/) is copied, so that a test may change
    it; the plugins' virtualenvs are linked.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in ("meltano.yml", "tap-openfunnel.yml", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "plugins", root / "plugins")
    (root / ".meltano").mkdir()
    for kind in ("extractors", "loaders"):
        (root / ".meltano" / kind).symlink_to(PROJECT_ROOT / ".meltano" / kind)
    return root


def tap_env(
    server: FakeOpenFunnel, *, tam: list[str], lookalike: list[str], **extra: Any
) -> dict[str, str]:
    """The tap's settings as the environment variables Meltano reads (arrays as JSON).

    Number settings come through Meltano as whole numbers (``kind: integer``: see
    scripts/plugin_settings.py).
    """
    settings: dict[str, Any] = {
        "api_url": server.url,
        "api_key": E2E_API_KEY,
        "tam_job_ids": tam,
        "lookalike_job_ids": lookalike,
        # The tests run this checkout's meltano.yml: entries a user added there with
        # `meltano config set` would otherwise be submitted too and change every count.
        "tam_builds": [],
        "lookalike_searches": [],
        **extra,
    }
    return {
        f"TAP_OPENFUNNEL_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.items()
    }


# ------------------------------------------------------------------------ PostgreSQL


def find_pg_bin() -> Path:
    """The folder with initdb, pg_ctl and psql: PG_BIN, Debian's newest, or PATH."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    pytest.fail(f"PostgreSQL's initdb, pg_ctl and psql were not found. {PG_HINT}", pytrace=False)
    raise AssertionError  # pragma: no cover - pytest.fail raises


def _cluster_owner() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix and uid/gid that run the server tools (never root)."""
    if os.geteuid() != 0:
        return [], None
    import pwd  # noqa: PLC0415 - POSIX only, and needed only as root

    runuser = shutil.which("runuser")
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        entry = None
    if runuser is None or entry is None:
        pytest.fail(
            "PostgreSQL refuses to run as root, and `runuser` or the 'postgres' user is "
            f"missing. {PG_HINT}",
            pytrace=False,
        )
    return [runuser, "-u", "postgres", "--"], (entry.pw_uid, entry.pw_gid)


@dataclass
class PostgresCluster:
    """A running throwaway cluster on loopback with trust authentication."""

    bin_dir: Path
    port: int
    user: str = "openfunnel"
    host: str = "127.0.0.1"

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
             "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"psql failed on {sql!r}: {result.stderr}"
        return result.stdout.strip()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """initdb into a temporary folder, start on a free loopback port, stop and remove after.

    Yields:
        The running cluster.
    """
    bin_dir = find_pg_bin()
    prefix, owner = _cluster_owner()
    # As root the folder must be reachable by 'postgres': /tmp is, pytest's tmp is not.
    tmp = "/tmp" if owner else None  # noqa: S108 - a private mkdtemp inside it
    base = Path(tempfile.mkdtemp(prefix="tap-openfunnel-pg-", dir=tmp))
    if owner:
        os.chown(base, *owner)
    data, log = base / "data", base / "server.log"
    cluster = PostgresCluster(bin_dir=bin_dir, port=free_port())
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", cluster.user,
             "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed:\n{initdb.stdout}{initdb.stderr}", pytrace=False)
        # Durability is irrelevant to a cluster that lives for one test session.
        options = (
            f"-p {cluster.port} -k {base} -c listen_addresses={cluster.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = subprocess.run(
            [*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if started.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{started.stderr}{server_log}", pytrace=False)
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class PostgresDatabase:
    """One database of the cluster, where one test's pipelines load."""

    cluster: PostgresCluster
    name: str
    schema: str = "openfunnel"

    def query(self, sql: str) -> str:
        return self.cluster.psql(self.name, sql)

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"'

    # The S608 suppressions below: every name in these queries is the test's own.
    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) FROM {self.table(table)}"))  # noqa: S608

    def count_if_exists(self, table: str) -> int:
        exists = self.query(f"SELECT to_regclass('{self.table(table)}') IS NOT NULL")
        return self.count(table) if exists == "t" else 0

    def duplicates(self, table: str, keys: tuple[str, ...] = ("job_id", "rank")) -> int:
        """Key values present in more than one row."""
        cols = ", ".join(f'"{key}"' for key in keys)
        grouped = f"SELECT {cols} FROM {self.table(table)} GROUP BY {cols} HAVING count(*) > 1"  # noqa: S608
        return int(self.query(f"SELECT count(*) FROM ({grouped}) AS dup"))  # noqa: S608

    def counts_by_job(self, table: str) -> dict[str, int]:
        sql = f"SELECT job_id, count(*) FROM {self.table(table)} GROUP BY 1"  # noqa: S608
        rows = self.query(sql)
        return {job: int(n) for job, n in (line.split("|") for line in rows.splitlines())}

    @property
    def target_env(self) -> dict[str, str]:
        """target-postgres settings as the environment variables Meltano reads."""
        return {
            "TARGET_POSTGRES_HOST": self.cluster.host,
            "TARGET_POSTGRES_PORT": str(self.cluster.port),
            "TARGET_POSTGRES_USER": self.cluster.user,
            "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
            "TARGET_POSTGRES_DATABASE": self.name,
            "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": self.schema,
        }


# --------------------------------------------------------------------------- DuckDB


def duckdb_summary(path: Path, schema: str = "openfunnel") -> dict[str, Any]:
    """Rows and duplicate keys per table of a DuckDB file, via scripts/show_duckdb.py."""
    result = subprocess.run(
        [str(DUCKDB_PYTHON), str(SHOW_DUCKDB), str(path), "--schema", schema, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"show_duckdb.py failed:\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


# ------------------------------------------------------------------------ processes


def children_of(pid: int) -> list[int]:
    """Direct children of a process, read from /proc (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # After the parenthesised command name come: state, ppid, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def kill_group(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a process started with start_new_session; reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
