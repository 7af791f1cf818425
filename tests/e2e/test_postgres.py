"""`meltano run tap-openfunnel target-postgres` into a real PostgreSQL: every row, once."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import pytest
from e2e_support import (
    RUN_TIMEOUT,
    children_of,
    command_line,
    describe,
    kill_group,
    tap_env,
    wait_for,
)

from openfunnel_sandbox import JobSpec

pytestmark = pytest.mark.e2e

STATE_ID = "dev:tap-openfunnel-to-target-postgres"
TAM_PATH = "/api/v1/tam/build/"
TAM_ROWS, LOOKALIKE_ROWS, PAGE_SIZE = 1234, 250, 100
TAM_PAGES = -(-TAM_ROWS // PAGE_SIZE)


def partition(state: dict, stream: str, job_id: str) -> dict:
    partitions = state.get("bookmarks", {}).get(stream, {}).get("partitions", [])
    return next((p for p in partitions if p.get("context", {}).get("job_id") == job_id), {})


def test_meltano_run_loads_every_row_once(meltano, fake_api, pg_database):
    tam = fake_api.add_job(JobSpec(kind="tam", rows=TAM_ROWS))
    lookalike = fake_api.add_job(JobSpec(kind="lookalike", rows=LOOKALIKE_ROWS))
    env = {**tap_env(fake_api, tam=[tam], lookalike=[lookalike]), **pg_database.target_env}

    first = meltano.run("run", "tap-openfunnel", "target-postgres", env=env)

    assert first.returncode == 0, describe(first)
    assert pg_database.count("tam_companies") == TAM_ROWS
    assert pg_database.count("lookalike_companies") == LOOKALIKE_ROWS
    assert pg_database.count("jobs") == 2
    assert pg_database.counts_by_job("tam_companies") == {tam: TAM_ROWS}
    for table in ("tam_companies", "lookalike_companies"):
        assert pg_database.duplicates(table) == 0
    assert pg_database.duplicates("jobs", keys=("job_id",)) == 0
    # The schemas' 64-bit bounds: BIGINT columns, and values that fit them.
    types = dict(
        line.rsplit("|", 1)
        for line in pg_database.query(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'openfunnel'"
        ).splitlines()
    )
    for column in ("tam_companies.rank", "tam_companies.employee_count", "jobs.pages"):
        assert types[column] == "bigint", (column, types)
    assert types["tam_companies.industries"] == "ARRAY", types  # text[]
    assert (
        pg_database.query(
            'SELECT count(*) FROM "openfunnel"."tam_companies" WHERE industries IS NULL'
        )
        == "0"
    )
    state = meltano.state(STATE_ID)
    assert partition(state, "tam_companies", tam).get("done") is True
    assert partition(state, "lookalike_companies", lookalike).get("done") is True

    # A full refresh sends every row again: target-postgres upserts on the key
    # properties (job_id, rank), so the tables keep one row per company.
    again = meltano.run("run", "--full-refresh", "tap-openfunnel", "target-postgres", env=env)

    assert again.returncode == 0, describe(again)
    assert pg_database.count("tam_companies") == TAM_ROWS
    assert pg_database.count("lookalike_companies") == LOOKALIKE_ROWS
    assert pg_database.count("jobs") == 2
    assert pg_database.duplicates("tam_companies") == 0


def tap_process(meltano_pid: int) -> int | None:
    """The extracting tap among Meltano's children (not its discovery run)."""
    for pid in children_of(meltano_pid):
        line = command_line(pid)
        if "tap-openfunnel" in line and "--catalog" in line:
            return pid
    return None


@pytest.mark.parametrize(
    "interruption",
    [
        # The tap is stopped (SIGTERM: a deploy, a node drain, `kill`): it writes its
        # state and exits non-zero; the target loads what it received and passes the
        # state on; Meltano records it, and the next run goes on from the next page.
        # Rows the target got after the last STATE are sent again and upserted.
        pytest.param("tap-terminated", id="tap-terminated"),
        # The whole pipeline dies at once (SIGKILL: out of memory, a lost machine).
        # SDK targets emit STATE only when they drain every sink (at the end, or every
        # 5 minutes), so Meltano may hold no state of the run: the re-run reads the
        # jobs again and the upsert on (job_id, rank) keeps one row per company.
        pytest.param("pipeline-killed", id="pipeline-killed"),
    ],
)
def test_interrupted_run_resumes_without_duplicates(
    meltano, fake_api, pg_database, tmp_path, interruption
):
    tam = fake_api.add_job(JobSpec(kind="tam", rows=TAM_ROWS, page_size=PAGE_SIZE))
    lookalike = fake_api.add_job(
        JobSpec(kind="lookalike", rows=LOOKALIKE_ROWS, page_size=PAGE_SIZE)
    )
    env = {
        **tap_env(fake_api, tam=[tam], lookalike=[lookalike], page_concurrency=1),
        **pg_database.target_env,
        # Small batches, so that rows reach PostgreSQL while the run goes on.
        "TARGET_POSTGRES_BATCH_SIZE_ROWS": "50",
    }
    # The TAM job's 6th GET (its first page comes with the first poll) waits until the
    # test opens the gate: the run is interrupted with 5 pages read and 8 to go, however
    # far the target lags behind the tap.
    gate = Gate(fake_api, TAM_PATH + tam, hold_from=6)
    log_path = tmp_path / "first.log"
    first = meltano.popen("run", "tap-openfunnel", "target-postgres", env=env, log=log_path)

    def tap_held_and_rows_loaded() -> bool:
        if first.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"meltano run ended (exit {first.returncode}) too early:\n{tail}")
        return gate.holding.is_set() and pg_database.count_if_exists("tam_companies") >= 50

    try:
        wait_for(
            tap_held_and_rows_loaded,
            timeout=120,
            interval=0.1,
            what="the tap to wait at the gate with tam_companies rows in PostgreSQL",
        )
        if interruption == "tap-terminated":
            tap = tap_process(first.pid)
            assert tap is not None, "the tap was not found among Meltano's processes"
            os.kill(tap, signal.SIGTERM)
            # The held request is answered once the tap had time to handle the signal:
            # an exiting tap joins its page-fetching threads.
            time.sleep(0.5)
            gate.open()
            first.wait(timeout=RUN_TIMEOUT)
        else:
            kill_group(first, signal.SIGKILL)
    finally:
        gate.open()
        kill_group(first, signal.SIGKILL)
    log = log_path.read_text(errors="replace")
    assert first.returncode != 0, f"the interrupted run looked clean:\n{log[-3000:]}"
    assert 0 < pg_database.count("tam_companies") < TAM_ROWS
    if interruption == "tap-terminated":
        saved = partition(meltano.state(STATE_ID), "tam_companies", tam)
        assert 0 < saved.get("rows_read", 0) < TAM_ROWS, f"no mid-job state: {saved}\n{log[-3000:]}"
        assert saved.get("next_cursor"), saved

    pages_before = tam_pages(fake_api, tam)
    if interruption == "pipeline-killed":
        # Meltano's record of the killed run still says "running" (for 5 minutes without
        # a heartbeat): the next run is refused, as docs/meltano.md says.
        refused = meltano.run("run", "tap-openfunnel", "target-postgres", env=env)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, describe(refused)
        assert "pipeline is already running" in said, describe(refused)
        assert "'--force' option" in said, describe(refused)
    # --force lets the next run start, as an operator would after a crash.
    resumed = meltano.run("run", "--force", "tap-openfunnel", "target-postgres", env=env)

    assert resumed.returncode == 0, describe(resumed)
    assert pg_database.count("tam_companies") == TAM_ROWS
    assert pg_database.count("lookalike_companies") == LOOKALIKE_ROWS
    assert pg_database.count("jobs") == 2
    assert pg_database.duplicates("tam_companies") == 0
    assert pg_database.duplicates("lookalike_companies") == 0
    assert pg_database.counts_by_job("tam_companies") == {tam: TAM_ROWS}
    if interruption == "tap-terminated":
        # It went on from the saved page instead of reading the whole job again.
        assert tam_pages(fake_api, tam) - pages_before < TAM_PAGES


class Gate:
    """Holds a path's GETs from the ``hold_from``-th on, until the test opens it."""

    def __init__(self, server, path: str, *, hold_from: int) -> None:
        self.holding = threading.Event()
        self._opened = threading.Event()
        self._seen = itertools.count(1)
        answer = server.handle

        def handle(exchange):
            counted = exchange.method == "GET" and exchange.path == path
            if counted and next(self._seen) >= hold_from and not self._opened.is_set():
                self.holding.set()
                self._opened.wait(timeout=RUN_TIMEOUT)
            return answer(exchange)

        server.handle = handle

    def open(self) -> None:
        self._opened.set()


def tam_pages(server, job_id: str) -> int:
    """GETs of one TAM job: its polls and pages (a poll answers with a page)."""
    return server.request_count("GET", TAM_PATH + job_id)
