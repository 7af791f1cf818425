"""The submission journal: never paying twice across pipelines, state files, kills, runs at once."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from support import API_KEY, base_config, parse_messages, tap_command, tap_env, write_json

from openfunnel_sandbox import Faults, JobSpec, transport
from tap_openfunnel.entries import parse_entries
from tap_openfunnel.exceptions import NotFoundError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.journal import Journal, JournalError, account_of
from tap_openfunnel.journal_lock import SubmitLock
from tap_openfunnel.planner import Action, Planner
from tap_openfunnel.settings import Settings
from tap_openfunnel.submissions import INTENT, NOT_SENT, SUBMITTED, UnconfirmedSubmitError

TAM_QUERY = "observability vendors in Europe"
ROWS = 120


@pytest.fixture
def tam_server(server):
    server.submit_defaults["tam"] = JobSpec(
        kind="tam", rows=ROWS, pending_seconds=0.1, running_seconds=0.2
    )
    return server


def tam_config(server, **overrides):
    return base_config(server, tam_builds=[{"query": TAM_QUERY}], **overrides)


def journal_path(private_state_home):
    return private_state_home / "tap-openfunnel" / "journal.sqlite3"


def rows_of(run):
    return {record["rank"] for record in run.records("tam_companies")}


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# What a second pipeline, loader or state finds ---------------------------------------


def test_a_second_loader_with_an_empty_state_reattaches_instead_of_buying_again(
    tam_server, run_tap, private_state_home
):
    first = run_tap(tam_config(tam_server))
    assert first.returncode == 0, first.stderr
    assert tam_server.submit_count("tam") == 1

    # Another pipeline (Meltano keeps one state per loader): no state at all.
    dry = run_tap(tam_config(tam_server, dry_run=True))
    assert dry.returncode == 0, dry.stderr
    assert "re-attach" in dry.stderr
    assert f"Journal: {journal_path(private_state_home)} (1 submission(s)" in dry.stderr
    assert "Submits: none" in dry.stderr

    second = run_tap(tam_config(tam_server))
    assert second.returncode == 0, second.stderr
    assert tam_server.submit_count("tam") == 1
    assert rows_of(second) == set(range(1, ROWS + 1))  # read again, not bought again
    assert str(journal_path(private_state_home)) in second.stderr

    # That pipeline's state now knows the job as its own: its next run reads nothing.
    third = run_tap(tam_config(tam_server), state=second.last_state)
    assert third.returncode == 0, third.stderr
    assert tam_server.submit_count("tam") == 1
    assert third.records("tam_companies") == []
    assert API_KEY not in first.stderr + second.stderr + third.stderr + dry.stderr


def test_the_journal_file_alone_holds_every_submission(tam_server, run_tap, tmp_path):
    # A backup, a CI cache or a volume may keep journal.sqlite3 without its -wal file.
    path = tmp_path / "journal.sqlite3"
    run = run_tap(tam_config(tam_server, journal_path=str(path)))
    assert run.returncode == 0, run.stderr
    copy = tmp_path / "copy" / "journal.sqlite3"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    with contextlib.closing(sqlite3.connect(copy)) as db:
        rows = db.execute("SELECT job_id, status FROM submissions").fetchall()
    assert [status for _, status in rows] == ["submitted"]
    assert rows[0][0]


def test_without_the_journal_only_the_state_remembers(tam_server, run_tap, private_state_home):
    """The documented consequence of 'journal: false'."""
    for _ in range(2):
        run = run_tap(tam_config(tam_server, journal=False))
        assert run.returncode == 0, run.stderr
    assert tam_server.submit_count("tam") == 2
    assert not journal_path(private_state_home).exists()


def test_the_journal_is_per_api_key_and_holds_a_digest_never_the_key(
    tam_server, run_tap, private_state_home
):
    run = run_tap(tam_config(tam_server))
    assert run.returncode == 0, run.stderr
    raw = journal_path(private_state_home).read_bytes()
    assert API_KEY.encode() not in raw
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    mine = Journal(journal_path(private_state_home), api_key=API_KEY, api_url=tam_server.url)
    other = Journal(journal_path(private_state_home), api_key="of_other", api_url=tam_server.url)
    found = mine.latest(entry)
    assert found is not None
    assert found.status == SUBMITTED
    assert found.job_id == run.records("jobs")[0]["job_id"]
    assert other.latest(entry) is None
    assert account_of(API_KEY) != account_of("of_other")


def test_dry_run_does_not_create_the_journal(tam_server, run_tap, private_state_home):
    run = run_tap(tam_config(tam_server, dry_run=True))
    assert run.returncode == 0, run.stderr
    assert "not created yet" in run.stderr
    assert not journal_path(private_state_home).exists()
    assert tam_server.submit_count("tam") == 0


def another_programs_database(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE runs (id INTEGER)")
        db.commit()


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda path: path.write_bytes(b"not a database, " * 100), id="garbage"),
        pytest.param(lambda path: path.mkdir(), id="a-folder"),
        pytest.param(another_programs_database, id="another-programs-db"),
        pytest.param(
            lambda path: (path.parent / "blocker").write_text("a file"), id="parent-is-a-file"
        ),
    ],
)
def test_a_journal_that_cannot_be_opened_stops_the_run_before_any_submit(
    tam_server, run_tap, tmp_path, make_bad
):
    path = tmp_path / "j" / "journal.sqlite3"
    path.parent.mkdir()
    make_bad(path)
    if (path.parent / "blocker").exists():
        path = path.parent / "blocker" / "journal.sqlite3"
    run = run_tap(tam_config(tam_server, journal_path=str(path)))
    assert run.returncode != 0
    assert f"The submission journal {path} could not be" in run.stderr
    assert "journal: false" in run.stderr
    assert "Traceback" not in run.stderr
    assert tam_server.submit_count("tam") == 0


# The submit window ---------------------------------------------------------------------


def test_killed_between_intent_and_answer_the_next_run_does_not_submit_again(
    tam_server, run_tap, tmp_path
):
    # The job is created, then the answer takes long: the tap is killed waiting for it.
    tam_server.faults = Faults(submit_script=["sleep_after_create:20"])
    config = tam_config(tam_server, request_timeout=60)
    proc = subprocess.Popen(
        tap_command(write_json(tmp_path / "c.json", config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=tap_env(),
    )
    wait_until(lambda: tam_server.submit_count("tam") == 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    again = run_tap(config)
    assert again.returncode != 0
    assert tam_server.submit_count("tam") == 1
    assert f"tam_builds[0] ({TAM_QUERY!r}) was being submitted at 20" in again.stderr
    assert "a job may exist and be billed" in again.stderr
    assert "'tam_job_ids'" in again.stderr
    assert "unconfirmed_submits" in again.stderr
    assert "Traceback" not in again.stderr
    dry = run_tap(tam_config(tam_server, dry_run=True))
    assert "blocked" in dry.stderr
    assert "Submits: none" in dry.stderr

    # The user's way out when no job is wanted: one run that allows a new submit.
    resubmitted = run_tap(tam_config(tam_server, unconfirmed_submits="resubmit"))
    assert resubmitted.returncode == 0, resubmitted.stderr
    assert tam_server.submit_count("tam") == 2
    assert rows_of(resubmitted) == set(range(1, ROWS + 1))
    # And from then on the entry is known again: no third purchase.
    after = run_tap(config)
    assert after.returncode == 0, after.stderr
    assert tam_server.submit_count("tam") == 2


@pytest.mark.parametrize(
    ("script", "next_run_submits"),
    [
        pytest.param(["500_after_create"], False, id="maybe-created-blocks-the-next-run"),
        pytest.param(["429"], True, id="refused-leaves-no-trace"),
    ],
)
def test_a_failed_submit_blocks_the_entry_only_when_a_job_may_exist(
    tam_server, run_tap, script, next_run_submits
):
    tam_server.faults = Faults(submit_script=script, retry_after=0)
    first = run_tap(tam_config(tam_server, max_retries=0))
    assert first.returncode != 0
    # What the failed run says to do is what the next run will accept.
    assert ("unconfirmed_submits" in first.stderr) is not next_run_submits
    created = tam_server.submit_count("tam")
    tam_server.faults = Faults()
    second = run_tap(tam_config(tam_server))
    if next_run_submits:
        assert second.returncode == 0, second.stderr
        assert tam_server.submit_count("tam") == created + 1
    else:
        assert second.returncode != 0
        assert "may exist and be billed" in second.stderr
        assert tam_server.submit_count("tam") == created


# Two runs at once ------------------------------------------------------------------------


def test_two_taps_at_once_on_one_journal_submit_once(tam_server, tmp_path, monkeypatch):
    # The first tap's submit is answered only once the second, started meanwhile, has
    # planned the same entry and waits for the first one's submit; it then re-attaches
    # to that job.
    second_waits = threading.Event()
    # The server holds the submit's answer (sleep_after_create) until then, not longer.
    monkeypatch.setattr(transport, "time", SimpleNamespace(sleep=second_waits.wait))
    tam_server.faults = Faults(submit_script=["sleep_after_create:50"])
    config_path = write_json(tmp_path / "c.json", tam_config(tam_server, request_timeout=60))

    def start(name):
        err = (tmp_path / f"{name}.err").open("w")
        out = (tmp_path / f"{name}.out").open("w")
        return subprocess.Popen(tap_command(config_path), stdout=out, stderr=err, env=tap_env())

    first = start("first")
    wait_until(lambda: tam_server.submit_count("tam") == 1)
    second = start("second")
    try:
        waiting = "another run is submitting it right now"
        wait_until(lambda: waiting in (tmp_path / "second.err").read_text())
    finally:
        second_waits.set()
    assert first.wait(timeout=120) == 0, (tmp_path / "first.err").read_text()
    assert second.wait(timeout=120) == 0, (tmp_path / "second.err").read_text()
    assert tam_server.submit_count("tam") == 1
    second_log = (tmp_path / "second.err").read_text()
    assert "another run is submitting it right now" in second_log
    assert "another run submitted it meanwhile" in second_log
    for name in ("first", "second"):
        messages = parse_messages((tmp_path / f"{name}.out").read_text())
        ranks = [
            m["record"]["rank"]
            for m in messages
            if m["type"] == "RECORD" and m["stream"] == "tam_companies"
        ]
        assert sorted(ranks) == list(range(1, ROWS + 1)), name


def test_the_journal_lock_holds_across_lookup_intent_and_answer(tmp_path):
    """In process: a second journal object sees the first one's intent as in flight."""
    path = tmp_path / "journal.sqlite3"
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    first = Journal(path, api_key=API_KEY, api_url="http://127.0.0.1:1")
    second = Journal(path, api_key=API_KEY, api_url="http://127.0.0.1:1", lock_wait=0.3)
    assert first.latest(entry) is None
    assert second.latest(entry) is None
    seen_from_inside = []

    def send():
        seen = second.latest(entry)
        seen_from_inside.append(seen.status if seen else None)
        with pytest.raises(JournalError, match="another tap-openfunnel run"):
            second.submit_once(entry, lambda: "never", resubmit_unconfirmed=False)
        return "job-1"

    outcome = first.submit_once(entry, send, resubmit_unconfirmed=False)
    assert outcome.sent_here
    assert seen_from_inside == ["in_flight"]
    # Its lock released, the second sees a newer, confirmed submit: no second POST.
    reattached = second.submit_once(entry, lambda: "never", resubmit_unconfirmed=False)
    assert (reattached.job_id, reattached.sent_here) == ("job-1", False)


def test_an_intent_left_by_a_dead_run_is_not_in_flight(tmp_path):
    path = tmp_path / "journal.sqlite3"
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    journal = Journal(path, api_key=API_KEY, api_url="http://127.0.0.1:1")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO submissions (account, api_url, job_type, fingerprint, entry, "
            "submitted_at, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                account_of(API_KEY),
                "http://127.0.0.1:1",
                entry.job_type.value,
                entry.fingerprint,
                entry.label,
                "2026-12-01T00:00:00+00:00",
                INTENT,
            ),
        )
    found = journal.latest(entry)
    assert found is not None
    assert found.status == INTENT
    with pytest.raises(UnconfirmedSubmitError, match="2026-12-01T00:00:00"):
        Journal(path, api_key=API_KEY, api_url="http://127.0.0.1:1").submit_once(
            entry, lambda: "never", resubmit_unconfirmed=False
        )


# The planner's decisions with a journal --------------------------------------------------

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
API_URL = "http://127.0.0.1:1"
DAY = "2026-11-29T12:00:00+00:00"  # a day before NOW
MONTH = "2026-10-30T12:00:00+00:00"  # a month before NOW


class KnownJobs:
    """The job API as the planner sees it: some jobs known, everything counted."""

    def __init__(self, known):
        self.known = set(known)
        self.polls = []

    def poll(self, job_type, job_id, cursor):
        self.polls.append(job_id)
        if job_id not in self.known:
            msg = "HTTP 404"
            raise NotFoundError(msg, status=404)
        return {"job_id": job_id, "status": "running"}

    def balance(self):
        return {"credits_left": 1e9}


def journal_row(path, entry, *, job_id, submitted_at, status=SUBMITTED):
    Journal(path, api_key=API_KEY, api_url=API_URL)  # creates the file
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO submissions (account, api_url, job_type, fingerprint, entry, job_id, "
            "submitted_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account_of(API_KEY),
                API_URL,
                entry.job_type.value,
                entry.fingerprint,
                entry.label,
                job_id,
                submitted_at,
                status,
            ),
        )


@pytest.mark.parametrize(
    ("row", "state", "config", "expected"),
    [
        pytest.param(
            {"job_id": "j-new", "submitted_at": DAY},
            None,
            {},
            (Action.REATTACH, "j-new"),
            id="another-pipeline-bought-it",
        ),
        pytest.param(
            {"job_id": "j-new", "submitted_at": DAY},
            {"job_id": "j-old", "submitted_at": MONTH, "done": True},
            {},
            (Action.REATTACH, "j-new"),
            id="journal-newer-than-state",
        ),
        pytest.param(
            {"job_id": "j-old", "submitted_at": MONTH},
            {"job_id": "j-old", "submitted_at": MONTH, "done": True},
            {},
            (Action.SKIP, "j-old"),
            id="same-job-state-knows-it-is-read",
        ),
        pytest.param(
            {"job_id": "j-old", "submitted_at": MONTH},
            {"job_id": "j-new", "submitted_at": DAY, "done": True},
            {},
            (Action.SKIP, "j-new"),
            id="state-newer-than-journal",
        ),
        pytest.param(
            {"job_id": "j-new", "submitted_at": MONTH},
            None,
            {"refresh_after": 7},
            (Action.REFRESH, None),
            id="older-than-refresh-after",
        ),
        pytest.param(
            {"job_id": "j-gone", "submitted_at": DAY},
            None,
            {},
            (Action.SUBMIT, None),
            id="gone",
        ),
        pytest.param(
            {"job_id": None, "submitted_at": DAY, "status": INTENT},
            None,
            {},
            (Action.BLOCKED, None),
            id="unconfirmed-at-most-once",
        ),
        pytest.param(
            {"job_id": None, "submitted_at": DAY, "status": INTENT},
            {"job_id": "j-old", "submitted_at": MONTH, "done": True},
            {},
            (Action.BLOCKED, None),
            id="unconfirmed-newer-than-state",
        ),
        pytest.param(
            {"job_id": None, "submitted_at": DAY, "status": INTENT},
            None,
            {"unconfirmed_submits": "resubmit"},
            (Action.SUBMIT, None),
            id="unconfirmed-at-least-once",
        ),
        pytest.param(
            {"job_id": None, "submitted_at": DAY, "status": NOT_SENT},
            None,
            {},
            (Action.SUBMIT, None),
            id="refused-submit-is-no-purchase",
        ),
    ],
)
def test_the_planner_reads_the_journal_beside_state(tmp_path, row, state, config, expected):
    path = tmp_path / "journal.sqlite3"
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    journal_row(path, entry, **row)
    states = []
    if state is not None:
        job_id = state.pop("job_id")
        states = [{"context": {"job_id": job_id}, "fingerprint": entry.fingerprint, **state}]
    settings = Settings.from_config(
        {"api_key": API_KEY, "api_url": API_URL, "tam_builds": [{"query": TAM_QUERY}], **config}
    )
    planner = Planner(
        settings,
        KnownJobs({"j-new", "j-old"}),  # type: ignore[arg-type]
        {JobType.TAM: "tam_companies"},
        lambda _name: states,
        now=lambda: NOW,
        journal=Journal(path, api_key=API_KEY, api_url=API_URL),
    )
    (decision,) = planner.plan().jobs
    assert (decision.action, decision.job_id) == expected, decision.reason
    if decision.action is Action.REATTACH:
        assert str(path) in decision.reason
        assert decision.submitted_at == row["submitted_at"]
    if decision.action is Action.BLOCKED:
        assert "tam_builds[0]" in decision.reason
        assert DAY in decision.reason


def test_the_intent_is_on_disk_before_the_post_and_the_job_id_after(tmp_path):
    path = tmp_path / "journal.sqlite3"
    entry = parse_entries([{"query": TAM_QUERY}], [])[0]
    journal = Journal(path, api_key=API_KEY, api_url=API_URL)
    journal.latest(entry)

    def rows():
        # Another connection, as another process would read it.
        with contextlib.closing(sqlite3.connect(path)) as db:
            return db.execute("SELECT status, job_id FROM submissions").fetchall()

    def send():
        assert rows() == [(INTENT, None)]
        return "job-1"

    journal.submit_once(entry, send, resubmit_unconfirmed=False)
    assert rows() == [(SUBMITTED, "job-1")]


def test_a_run_waiting_for_another_runs_submit_still_stops_on_sigterm(tam_server, tmp_path):
    path = tmp_path / "journal.sqlite3"
    Journal(path, api_key=API_KEY, api_url=tam_server.url)
    config = tam_config(tam_server, journal_path=str(path))
    holder = SubmitLock(path.with_name(path.name + "-lock"), wait=1)
    with holder.hold():
        proc = subprocess.Popen(
            tap_command(write_json(tmp_path / "c.json", config)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=tap_env(),
        )
        # The tap has planned and is waiting for the lock once it asked for the balance.
        wait_until(lambda: tam_server.request_count("GET", "/api/v1/credits/balance") >= 1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert tam_server.submit_count("tam") == 0
