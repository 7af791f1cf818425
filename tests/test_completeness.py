"""A job is done only when read whole: every page answer is checked, and the user's checks pass.

Each case runs the real CLI against tests/hostile.py with a sound job ("good", 250 rows)
beside a 500-row job ("bad") whose answers go wrong part-way. The bad job must never
be marked done, its rows before the bad answer are delivered once, and a rerun resumes
from the page state kept.
"""

from __future__ import annotations

from typing import Any

import pytest
from hostile import TAM_PATH, HostileAPI, HostileJob, page_number, run_tap_against
from support import API_KEY, TapRun

GOOD = "good-job"
BAD = "bad-job"


def run_tap(api: HostileAPI, tmp_path, state: dict[str, Any] | None = None, **settings: Any):
    run = run_tap_against(
        api,
        tmp_path,
        state=state,
        **{"tam_job_ids": [GOOD, BAD], "max_retries": 1, "request_timeout": 5, **settings},
    )
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert API_KEY not in run.stdout + run.stderr
    return run


def ranks(run: TapRun, job_id: str) -> list[int]:
    return [r["rank"] for r in run.records("tam_companies") if r["job_id"] == job_id]


def partition(state: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    assert state is not None
    for entry in state["bookmarks"]["tam_companies"]["partitions"]:
        if entry["context"]["job_id"] == job_id:
            # The reading position; terminal_at (when the job was first seen finished)
            # is test_output's concern.
            return {k: v for k, v in entry.items() if k not in {"context", "terminal_at"}}
    return {}


def spoil(api: HostileAPI, page: int, **changes: Any) -> None:
    """From now on, the bad job's answer for ``page`` carries ``changes`` (None: drop the field)."""
    original = api.answer

    def answer(job_id: str, cursor: str | None):
        status, headers, body = original(job_id, cursor)
        if job_id == BAD and page_number(cursor) == page and isinstance(body, dict):
            for name, value in changes.items():
                if value is None:
                    body.pop(name, None)
                else:
                    body[name] = value
        return status, headers, body

    api.answer = answer  # type: ignore[method-assign]


LATER_PAGE = [
    pytest.param({"status": "running", "rows": [], "next_cursor": None}, "'running'", id="running"),
    pytest.param({"status": "pending", "next_cursor": None}, "'pending'", id="pending"),
    pytest.param({"status": "failed"}, "'failed'", id="failed"),
    pytest.param({"status": "cancelled", "next_cursor": None}, "'cancelled'", id="cancelled"),
    pytest.param({"status": None}, "status as missing", id="no-status"),
    pytest.param({"status": 7}, "status as 7", id="status-not-a-string"),
    pytest.param({"job_id": GOOD}, "is for job 'good-job'", id="another-job"),
]


@pytest.mark.parametrize(("changes", "needle"), LATER_PAGE)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_later_page_that_is_not_the_finished_job_leaves_it_resumable(
    tmp_path, changes, needle, concurrency
):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=500)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        spoil(api, 2, **changes)
        run = run_tap(api, tmp_path, page_concurrency=concurrency)
    assert run.returncode == 1
    assert needle in run.stderr
    assert f"Job {BAD}: the answer for page 'page_0002'" in run.stderr
    assert ranks(run, GOOD) == list(range(1, 251))
    assert ranks(run, BAD) == list(range(1, 201))
    assert partition(run.last_state, BAD) == {"next_cursor": "page_0002", "rows_read": 200}
    assert partition(run.last_state, GOOD) == {"rows_read": 250, "done": True}


def test_the_rerun_resumes_at_the_page_state_kept_and_finishes_the_job(tmp_path):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=500)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        spoil(api, 2, status="running", rows=[], next_cursor=None)
        first = run_tap(api, tmp_path)
    with HostileAPI(jobs, api_key=API_KEY) as api:
        second = run_tap(api, tmp_path, state=first.last_state)
    assert first.returncode == 1
    assert second.returncode == 0, second.stderr[-2000:]
    assert ranks(first, BAD) + ranks(second, BAD) == list(range(1, 501))
    assert ranks(second, GOOD) == []
    assert partition(second.last_state, BAD) == {"rows_read": 500, "done": True}


def test_a_poll_answer_for_another_job_fails_that_job_before_any_row(tmp_path):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=500)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        spoil(api, 0, job_id="someone-else")
        run = run_tap(api, tmp_path)
    assert run.returncode == 1
    assert "is for job 'someone-else'" in run.stderr
    assert ranks(run, BAD) == []
    assert ranks(run, GOOD) == list(range(1, 251))
    assert partition(run.last_state, BAD).get("done") is not True
    # The jobs stream (and the budget guard) never took the other job's answer as this one's.
    (job,) = [r for r in run.records("jobs") if r["job_id"] == BAD]
    assert "is for job 'someone-else'" in job["tap_error"]
    assert job["status"] is None


def short_by_ten(api: HostileAPI) -> None:
    """The bad job's manifest promises 510 companies; its pages hold 500."""
    original = api.answer

    def answer(job_id: str, cursor: str | None):
        status, headers, body = original(job_id, cursor)
        if job_id == BAD and isinstance(body, dict):
            body["manifest"] = {**body["manifest"], "unique_count": 510}
        return status, headers, body

    api.answer = answer  # type: ignore[method-assign]


def test_a_failed_strict_row_count_leaves_the_job_to_be_read_again_until_relaxed(tmp_path):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=500)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        short_by_ten(api)
        strict = run_tap(api, tmp_path, strict_row_count=True)
        again = run_tap(api, tmp_path, state=strict.last_state, strict_row_count=True)
        relaxed = run_tap(api, tmp_path, state=again.last_state)
    for failed in (strict, again):
        assert failed.returncode == 1
        assert "read 500 rows but the manifest's unique_count says 510" in failed.stderr
        assert "not marked done" in failed.stderr
        # The whole job went out, with the same ranks each time (one copy after upserts).
        assert ranks(failed, BAD) == list(range(1, 501))
        assert partition(failed.last_state, BAD) == {"rows_read": 0, "next_cursor": None}
    assert ranks(again, GOOD) == []
    assert relaxed.returncode == 0, relaxed.stderr[-2000:]
    assert ranks(relaxed, BAD) == list(range(1, 501))
    assert partition(relaxed.last_state, BAD) == {"rows_read": 500, "done": True}


def test_a_strict_row_count_that_agrees_marks_the_job_done(tmp_path):
    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=500)}, api_key=API_KEY) as api:
        run = run_tap(api, tmp_path, strict_row_count=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert partition(run.last_state, BAD) == {"rows_read": 500, "done": True}


def test_every_request_has_exactly_the_job_path_of_the_reference(tmp_path):
    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=500)}, api_key=API_KEY) as api:
        run = run_tap(api, tmp_path)
        paths = {served.path for served in api.served}
    assert run.returncode == 0, run.stderr[-2000:]
    assert paths == {TAM_PATH + GOOD, TAM_PATH + BAD}
