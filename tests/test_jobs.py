"""Job life cycles: the poller through every outcome on a fake clock, and each outcome in a run."""

from __future__ import annotations

import logging

import pytest
from support import (
    FakeClock,
    base_config,
    ranks,
)

from openfunnel_sandbox import JobSpec
from tap_openfunnel.exceptions import (
    JobError,
    JobNotFoundError,
    JobTimeoutError,
    NotFoundError,
    RetriesExhaustedError,
)
from tap_openfunnel.jobs import JobPoller, JobType


def scripted(statuses: dict[str, list[str]]):
    """A fetch that answers each job's statuses in turn, repeating the last one."""
    calls: dict[str, int] = {}

    def fetch(job_type: JobType, job_id: str, cursor: str | None):
        script = statuses[job_id]
        index = calls.get(job_id, 0)
        calls[job_id] = index + 1
        status = script[min(index, len(script) - 1)]
        if status == "404":
            msg = "gone"
            raise NotFoundError(msg, status=404, path="/x")
        if status == "throttled":
            msg = "429s"
            raise RetriesExhaustedError(msg, status=429, path="/x")
        return {"job_id": job_id, "status": status, "processed": index, "rows": []}

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def make_poller(fetch, clock: FakeClock, *, timeout: float = 100.0) -> JobPoller:
    return JobPoller(
        fetch,
        poll_interval=1.0,
        max_poll_interval=8.0,
        job_timeout=timeout,
        clock=clock,
        sleep=clock.sleep,
    )


@pytest.mark.parametrize(
    ("script", "final"),
    [
        pytest.param(["pending", "running", "running", "completed"], "completed", id="completed"),
        pytest.param(["pending", "running", "failed"], "failed", id="failed"),
        pytest.param(["running", "cancelling", "cancelled"], "cancelled", id="cancelled"),
        pytest.param(["completed"], "completed", id="already-terminal"),
    ],
)
def test_waits_until_terminal(script, final):
    clock = FakeClock()
    fetch = scripted({"j1": script})
    poller = make_poller(fetch, clock)
    poller.track("j1", JobType.TAM)
    snapshot = poller.wait_for("j1")
    assert snapshot.status == final
    assert snapshot.terminal
    assert fetch.calls["j1"] == len(script)
    assert poller.jobs["j1"].terminal_at is not None


def test_interval_doubles_up_to_the_cap():
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["running"] * 7 + ["completed"]}), clock)
    poller.track("j1", JobType.TAM)
    poller.wait_for("j1")
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_paused_job_times_out_naming_the_job(caplog):
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["running", "paused"]}), clock, timeout=30.0)
    poller.track("j1", JobType.TAM)
    with caplog.at_level(logging.WARNING), pytest.raises(JobTimeoutError) as info:
        poller.wait_for("j1")
    assert info.value.job_id == "j1"
    assert "j1" in str(info.value)
    assert "paused" in str(info.value)
    assert clock.now == pytest.approx(30.0)
    assert any("paused" in record.message for record in caplog.records)


def test_unknown_status_is_not_terminal_and_warns(caplog):
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["queued_for_gpu", "queued_for_gpu", "completed"]}), clock)
    poller.track("j1", JobType.LOOKALIKE)
    with caplog.at_level(logging.WARNING):
        snapshot = poller.wait_for("j1")
    assert snapshot.status == "completed"
    warnings = [r for r in caplog.records if "queued_for_gpu" in r.message]
    assert len(warnings) == 1


def test_unknown_status_forever_times_out():
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["mystery"]}), clock, timeout=10.0)
    poller.track("j1", JobType.TAM)
    with pytest.raises(JobTimeoutError):
        poller.wait_for("j1")


def test_not_found_is_a_job_error():
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["404"]}), clock)
    poller.track("j1", JobType.TAM)
    with pytest.raises(JobNotFoundError, match="not found for this API key"):
        poller.wait_for("j1")


def test_throttled_poll_keeps_waiting():
    clock = FakeClock()
    poller = make_poller(scripted({"j1": ["throttled", "throttled", "completed"]}), clock)
    poller.track("j1", JobType.TAM)
    assert poller.wait_for("j1").status == "completed"


def test_an_outage_on_one_job_fails_that_job_only():
    clock = FakeClock()

    def fetch(job_type, job_id, cursor):
        if job_id == "j1":
            message = "GET /x still failed after 8 retries (last: HTTP 503)."
            raise RetriesExhaustedError(message, status=503, path="/x")
        return {"status": "completed"}

    poller = make_poller(fetch, clock)
    poller.track("j1", JobType.TAM)
    poller.track("j2", JobType.TAM)
    with pytest.raises(JobError, match=r"Job j1: polling it failed\. GET /x still failed"):
        poller.wait_for("j1")
    assert poller.wait_for("j2").status == "completed"


def test_jobs_are_waited_on_together():
    """Three jobs finishing at ~2, 3 and 4 s: the total wait is the slowest, not the sum."""
    clock = FakeClock()

    def fetch(job_type, job_id, cursor):
        done_at = {"a": 2.0, "b": 3.0, "c": 4.0}[job_id]
        return {"status": "completed" if clock.now >= done_at else "running"}

    poller = JobPoller(
        fetch,
        poll_interval=0.25,
        max_poll_interval=0.5,
        job_timeout=60,
        clock=clock,
        sleep=clock.sleep,
    )
    for job_id in "abc":
        poller.track(job_id, JobType.TAM)
    for job_id in "abc":
        poller.wait_for(job_id)
    assert 4.0 <= clock.now <= 4.5


def test_an_interval_limit_polls_sooner_and_the_own_schedule_resumes_unchanged():
    clock = FakeClock()
    fetch = scripted({"j1": ["running"] * 6 + ["completed"]})
    limits = iter([0.25, 0.25, 100.0])
    poller = JobPoller(
        fetch,
        poll_interval=1.0,
        max_poll_interval=8.0,
        job_timeout=100.0,
        clock=clock,
        sleep=clock.sleep,
        interval_limit=lambda _job: next(limits, None),
    )
    poller.track("j1", JobType.TAM)
    poller.wait_for("j1")
    # Two waits cut short by the limit, then 1, 2, 4, 8 as if they had not happened; a
    # limit above the job's own interval (100 s, then none) never makes it wait longer.
    assert clock.sleeps == [0.25, 0.25, 1.0, 2.0, 4.0, 8.0]


def test_pending_then_running_job_is_waited_for(polled_server, run_tap):
    server = polled_server  # its jobs age by one second per request, not by the wall clock
    job = server.add_job(JobSpec(kind="tam", rows=450, pending_seconds=1.5, running_seconds=2.0))
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    # The job completes at its fourth second: the tap polled it until then.
    polls = [r for r in server.requests if r.method == "GET" and not r.query.get("cursor")]
    assert len(polls) >= 4
    assert ranks(run.records("tam_companies"), job) == list(range(1, 451))
    assert "status pending" in run.stderr
    assert "status running" in run.stderr
    # Never read a page before the job was terminal: the poll answers are the only
    # requests while the job runs, and rows come from the completed set.
    assert run.records("jobs")[0]["status"] == "completed"


def test_paused_job_fails_within_seconds_naming_the_job(polled_server, run_tap):
    server = polled_server  # paused from its second poll on, however slow the machine
    paused = server.add_job(JobSpec(kind="tam", rows=600, running_seconds=0.2, outcome="paused"))
    # The run ends by itself (run_tap's timeout fails a run that hangs), by job_timeout.
    run = run_tap(base_config(server, tam_job_ids=[paused], job_timeout=1))
    assert run.returncode != 0
    assert paused in run.stderr
    assert "job_timeout" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records("jobs")[0]["status"] == "paused"


def test_failed_job_exits_nonzero_after_other_jobs_are_delivered(server, run_tap):
    good = server.add_job(JobSpec(kind="tam", rows=321))
    bad = server.add_job(
        JobSpec(kind="lookalike", rows=300, outcome="failed", error_message="Seed index offline")
    )
    run = run_tap(base_config(server, tam_job_ids=[good], lookalike_job_ids=[bad]))
    assert run.returncode == 1
    assert bad in run.stderr
    assert "Seed index offline" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.records("tam_companies")) == 321
    assert run.records("lookalike_companies") == []
    assert {r["status"] for r in run.records("jobs")} == {"completed", "failed"}
    assert run.messages[-1]["type"] == "STATE"


def test_unknown_job_exits_nonzero_naming_it(server, run_tap):
    good = server.add_job(JobSpec(kind="tam", rows=10))
    missing = "00000000-0000-4000-8000-000000000000"
    run = run_tap(base_config(server, tam_job_ids=[good, missing]))
    assert run.returncode == 1
    assert missing in run.stderr
    assert "not found for this API key" in run.stderr
    assert len(run.records("tam_companies")) == 10


def test_cancelled_job_delivers_its_pages_and_warns(server, run_tap):
    job = server.add_job(
        JobSpec(kind="lookalike", rows=800, outcome="cancelled", partial_fraction=0.5)
    )
    run = run_tap(base_config(server, lookalike_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("lookalike_companies")
    assert len(rows) == server.job_delivered(job) == 400
    assert "partial" in run.stderr
    record = run.records("jobs")[0]
    assert record["status"] == "cancelled"
    assert record["partial"] is True
