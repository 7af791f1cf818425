"""docs/meltano.md's per-warehouse blocks run as written: an empty shell to rows landed.

A fenced block right after ``<!-- docs-test: run -->`` runs in bash, keyless (the
``sandbox`` Meltano environment and the fake server it starts itself), in a scratch copy
of the checkout: the virtualenvs and plugins linked, what Meltano writes copied. Two
things differ from the doc: free loopback ports replace the fake server's 8765 (in the
block and in the copy of meltano.yml) and the cluster's 55432, so parallel runs do not
collide; and as root, ``PG_BIN`` (which the block honours) is a folder whose ``initdb``
and ``pg_ctl`` run PostgreSQL's as the ``postgres`` user, since PostgreSQL refuses to
run as root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from e2e_support import PROJECT_ROOT, find_pg_bin, free_port

pytestmark = pytest.mark.e2e

DOCS = PROJECT_ROOT / "docs" / "meltano.md"
MARKED = re.compile(
    r"^<!-- docs-test: run -->\n```sh\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)
LINKED = (".venv", ".meltano-venv", "tap_openfunnel", "schemas", "scripts", "docs")
COPIED = ("meltano.yml", "pyproject.toml", "tap-openfunnel.yml")
SANDBOX_PORT, PG_PORT = "8765", "55432"
BLOCK_TIMEOUT = 240


def blocks() -> list[str]:
    return [m["body"] for m in MARKED.finditer(DOCS.read_text(encoding="utf-8"))]


def test_the_docs_mark_a_block_per_local_warehouse():
    found = blocks()
    assert len(found) == 2
    assert "target-postgres" in found[0]
    assert "target-duckdb" in found[1]
    for body in found:
        assert "meltano --environment sandbox run" in body
        assert "TAP_OPENFUNNEL_API_KEY" not in body  # keyless


def scratch_checkout(sandbox_port: int) -> Path:
    """A copy of the checkout in /tmp (reachable by the postgres user when run as root)."""
    base = Path(tempfile.mkdtemp(prefix="tap-openfunnel-docs-", dir="/tmp"))
    checkout = base / "tap-openfunnel"
    checkout.mkdir()
    for name in LINKED:
        (checkout / name).symlink_to(PROJECT_ROOT / name)
    for name in COPIED:
        shutil.copy2(PROJECT_ROOT / name, checkout / name)
    shutil.copytree(PROJECT_ROOT / "plugins", checkout / "plugins")
    meltano_yml = checkout / "meltano.yml"
    text = meltano_yml.read_text(encoding="utf-8")
    assert f"http://127.0.0.1:{SANDBOX_PORT}" in text
    meltano_yml.write_text(text.replace(SANDBOX_PORT, str(sandbox_port)), encoding="utf-8")
    (checkout / "output").mkdir()
    (checkout / ".meltano").mkdir()
    for kind in ("extractors", "loaders"):
        (checkout / ".meltano" / kind).symlink_to(PROJECT_ROOT / ".meltano" / kind)
    return checkout


def run_block(body: str, checkout: Path, shell: dict[str, str]) -> tuple[int, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAP_OPENFUNNEL_", "TARGET_", "MELTANO_", "OPENFUNNEL_"))
    }
    env.update(
        {
            "HOME": str(checkout.parent),
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "MELTANO_HUB_URL": "http://127.0.0.1:9/hub",
            "MELTANO_HUB_API_ROOT": "http://127.0.0.1:9/hub/meltano/v1",
            "MELTANO_AUTO_INSTALL": "false",
            # The block's `mktemp -d` (the cluster's folder) inside the scratch folder.
            "TMPDIR": str(checkout.parent),
        }
    )
    env.update(shell)
    command = ["bash", "-euo", "pipefail", "-c", body]
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = postgres_user_shims(checkout.parent, env)
    # Its own process group, so that what it left running (the fake server, when the
    # block failed before its `kill`) is stopped with it; output to a file, which a
    # background process holding it open cannot stall.
    log = checkout.parent / "block.log"
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            command,
            cwd=checkout,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        process.wait(timeout=BLOCK_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        stop_clusters(checkout.parent, prefix)
    return process.returncode, log.read_text(encoding="utf-8", errors="replace")


def postgres_user_shims(base: Path, env: dict[str, str]) -> list[str]:
    """As root: PG_BIN with initdb and pg_ctl run as 'postgres' (owning the data folder).

    Returns:
        The command prefix that runs a tool as 'postgres'.
    """
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("PostgreSQL refuses to run as root, and `runuser` is missing.")
    real = find_pg_bin()
    shims = base / "pg-bin"
    shims.mkdir()
    base.chmod(0o755)  # the cluster's folder is made inside it
    for tool in ("initdb", "pg_ctl"):
        script = shims / tool
        script.write_text(
            "#!/bin/bash\n"
            '# Test shim: the data folder (-D) goes to "postgres", which runs the tool.\n'
            'args=("$@")\n'
            'for i in "${!args[@]}"; do\n'
            '  [[ ${args[i]} == -D ]] && chown postgres: "${args[i+1]}"\n'
            "done\n"
            f'exec {runuser} -u postgres -- {real / tool} "$@"\n',
            encoding="utf-8",
        )
        script.chmod(0o755)
    for tool in ("createdb", "psql"):
        (shims / tool).symlink_to(real / tool)
    env["PG_BIN"] = str(shims)
    return [runuser, "-u", "postgres", "--"]


def stop_clusters(base: Path, prefix: list[str]) -> None:
    """Stop a PostgreSQL cluster the block started under ``base`` and did not stop."""
    for pid_file in base.rglob("postmaster.pid"):
        subprocess.run(
            [*prefix, str(find_pg_bin() / "pg_ctl"), "-D", str(pid_file.parent), "-m",
             "immediate", "-w", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip


# A user's own settings in the shell (or .env), which the sandbox environment's `env:`
# must override: else the key would be refused by the fake server, or worse, the builds
# submitted to the real API.
USER_SHELL = {
    "TAP_OPENFUNNEL_API_KEY": "of_users_real_key",
    "TAP_OPENFUNNEL_API_URL": "http://127.0.0.1:9",
    "TAP_OPENFUNNEL_TAM_JOB_IDS": '["00000000-0000-4000-8000-000000000000"]',
}


@pytest.mark.parametrize(
    ("index", "shell", "expected"),
    [
        pytest.param(0, {}, ("tam_companies|1234", "lookalike_companies|250"), id="postgres"),
        pytest.param(1, USER_SHELL, ("tam_companies", "1,234"), id="duckdb-users-shell"),
    ],
)
def test_docs_block_lands_rows_as_written(index, shell, expected):
    find_pg_bin()  # fails with the install hint when PostgreSQL's binaries are missing
    sandbox_port = free_port()
    checkout = scratch_checkout(sandbox_port)
    body = blocks()[index].replace(SANDBOX_PORT, str(sandbox_port))
    body = body.replace(PG_PORT, str(free_port()))
    # The block starts the fake server with its default port: pass the free one.
    body = body.replace("--demo >", f"--demo --port {sandbox_port} >")
    returncode, output = run_block(body, checkout, shell)
    try:
        assert returncode == 0, output[-4000:]
        for text in expected:
            assert text in output, output[-4000:]
        assert "Traceback" not in output
    finally:
        shutil.rmtree(checkout.parent, ignore_errors=True)
