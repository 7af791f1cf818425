"""A throwaway PostgreSQL cluster for the benchmark: loopback, fsync off, removed after."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import typing as t
from dataclasses import dataclass
from pathlib import Path

from peers import PeerError

if t.TYPE_CHECKING:
    from collections.abc import Iterator

USER = "openfunnel"


@dataclass
class Cluster:
    """A running throwaway PostgreSQL cluster on loopback, trust authentication."""

    bin_dir: Path
    data: Path
    port: int
    run_as: list[str]
    host: str = "127.0.0.1"

    def psql(self, database: str, sql: str) -> str:
        """Run one statement; its unaligned output.

        Raises:
            PeerError: If it failed.
        """
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", USER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            msg = f"psql failed on {sql!r}: {done.stderr[-1500:]}"
            raise PeerError(msg)
        return done.stdout.strip()

    def url(self, database: str) -> str:
        """A connection URL for ``database`` (trust authentication: any password)."""
        return f"postgresql://{USER}:unused@{self.host}:{self.port}/{database}"

    def fresh_database(self, name: str) -> str:
        """Create an empty database; its name."""
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def cpu_seconds(self) -> float:
        """CPU spent so far by the cluster: its live processes, and those that ended.

        Backends are children of the postmaster; the CPU of ended ones is in its
        cutime/cstime once reaped, which the postmaster does at once.
        """
        tick = os.sysconf("SC_CLK_TCK")
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry.name), int(fields[1])
            if pid == postmaster:
                total += sum(int(value) for value in fields[11:15])  # with children's
            elif ppid == postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / tick


def _pg_bin() -> Path:
    folders = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    if on_path := shutil.which("initdb"):
        folders.append(Path(on_path).parent)
    for folder in folders:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    msg = "PostgreSQL's initdb, pg_ctl and psql were not found (apt-get install postgresql)"
    raise PeerError(msg)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Initdb in a temporary folder, start on loopback, stop and remove after.

    Yields:
        The running cluster.

    Raises:
        PeerError: If it could not be set up.
    """
    bin_dir = _pg_bin()
    run_as: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd  # noqa: PLC0415 - POSIX only, needed only as root

        entry = pwd.getpwnam("postgres")
        run_as, owner = ["runuser", "-u", "postgres", "--"], (entry.pw_uid, entry.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="tap-openfunnel-bench-pg-", dir="/tmp"))
    if owner:
        os.chown(base, *owner)
    cluster = Cluster(bin_dir, base / "data", _free_port(), run_as)
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(cluster.data)]
    # Durability is irrelevant to a cluster that lives for one benchmark.
    options = (
        f"-p {cluster.port} -k {base} -c listen_addresses={cluster.host} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        steps = [
            [*run_as, str(bin_dir / "initdb"), "-D", str(cluster.data), "-U", USER,
             "-A", "trust", "-E", "UTF8", "--no-sync"],
            [*pg_ctl, "-l", str(base / "server.log"), "-w", "-t", "60", "-o", options,
             "start"],
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                msg = f"{step[len(run_as)]} failed: {done.stdout[-800:]}{done.stderr[-800:]}"
                raise PeerError(msg)
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)
