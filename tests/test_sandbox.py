"""The fake OpenFunnel server, exercised over real HTTP on loopback."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import requests
import support

from openfunnel_sandbox import FakeOpenFunnel, Faults, JobSpec
from openfunnel_sandbox import server as server_module

KEY, OTHER_KEY = "of_test_key", "of_other_key"
TAM, BULK = "/api/v1/tam/build", "/api/v1/account/search-lookalikes-bulk"
BASE = {"tam": TAM, "lookalike": BULK}


class FakeClock:
    """A monotonic clock the tests move by hand, so life cycles need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def server(clock):
    with FakeOpenFunnel(api_keys=(KEY, OTHER_KEY), clock=clock, cancel_seconds=0.3) as srv:
        yield srv


@pytest.fixture
def http():
    with requests.Session() as session:
        session.headers["X-API-Key"] = KEY
        yield session


def poll(server, http, kind, job_id, cursor=None, **params):
    response = http.get(
        f"{server.url}{BASE[kind]}/{job_id}", params={"cursor": cursor, **params}, timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()


def walk(server, http, kind, job_id):
    """Follow next_cursor from page_0000; returns the bodies of every page."""
    pages, cursor = [], None
    for _ in range(200):
        body = poll(server, http, kind, job_id, cursor)
        pages.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    pytest.fail("next_cursor never ended")


def post(server, http, path, body=None):
    return http.post(f"{server.url}{path}", json=body, timeout=5)


# --------------------------------------------------------------------------- life cycle
def test_tam_job_goes_pending_running_completed_band_by_band(server, http, clock):
    job_id = server.add_job(JobSpec(kind="tam", rows=600, pending_seconds=1, running_seconds=6))
    first = poll(server, http, "tam", job_id)
    assert (first["status"], first["processed"], first["rows"], first["manifest"]) == (
        "pending",
        0,
        [],
        None,
    )
    assert (first["bands_done"], first["bands_total"], first["degraded"]) == (0, 6, False)

    clock.advance(2.5)  # 1.5 s into running: band 1 of 6 is done, band 2 in flight
    running = poll(server, http, "tam", job_id)
    assert (running["status"], running["processed"], running["bands_done"]) == ("running", 100, 1)
    assert running["progress_message"].startswith("band 11-50: validating")
    assert (running["count"], running["next_cursor"], running["manifest"]) == (100, None, None)
    assert poll(server, http, "tam", job_id, "page_0001")["rows"] == []

    clock.advance(5)
    pages = walk(server, http, "tam", job_id)
    done = pages[0]
    assert (done["status"], done["progress_message"], done["bands_done"]) == (
        "completed",
        "completed",
        6,
    )
    assert done["manifest"] == {
        "pages": 6,
        "page_size": 100,
        "unique_count": 600,
        "partial": False,
        "degraded": False,
        "ranked": True,
        "stop_reason": None,
        "credits_consumed": 600,
    }
    assert [page["page"] for page in pages] == [f"page_{n:04d}" for n in range(6)]
    assert pages[0]["rows"][:100] == running["rows"], "pages are immutable once written"


def test_lookalike_job_streams_full_pages_only_until_terminal(server, http, clock):
    job_id = server.add_job(
        JobSpec(kind="lookalike", rows=250, pending_seconds=1, running_seconds=10)
    )
    pending = poll(server, http, "lookalike", job_id)
    assert (pending["status"], pending["processed"]) == ("pending", None)
    assert "bands_done" not in pending

    clock.advance(1 + 5.2)  # 130 rows delivered: one full page readable, the tail is not
    running = poll(server, http, "lookalike", job_id, limit=7)  # limit is accepted and ignored
    assert (running["status"], running["processed"]) == ("running", 130)
    assert (running["count"], running["next_cursor"]) == (100, None)
    assert running["progress_message"] == "qualifying_companies"

    clock.advance(5)
    pages = walk(server, http, "lookalike", job_id)
    assert [page["count"] for page in pages] == [100, 100, 50]
    manifest = pages[-1]["manifest"]
    assert (manifest["count"], manifest["pages"], manifest["credits_consumed"]) == (250, 3, 250)
    assert (manifest["derived_query"], manifest["resolved_seed_domains"]) == (None, None)


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        pytest.param("tam", "failed", id="tam-failed"),
        pytest.param("lookalike", "failed", id="bulk-failed"),
        pytest.param("tam", "cancelled", id="tam-cancelled"),
        pytest.param("lookalike", "cancelled", id="bulk-cancelled"),
    ],
)
def test_jobs_that_stop_early_keep_partial_rows_readable(server, http, clock, kind, outcome):
    spec = JobSpec(kind=kind, rows=400, outcome=outcome, running_seconds=4, partial_fraction=0.25)
    job_id = server.add_job(spec)
    clock.advance(3.9)
    assert poll(server, http, kind, job_id)["status"] == "running"
    clock.advance(0.2)
    pages = walk(server, http, kind, job_id)
    body = pages[0]
    assert body["status"] == outcome
    assert sum(page["count"] for page in pages) == 100
    assert body["manifest"]["partial"] is True
    tam_stop_reason = "cancelled" if outcome == "cancelled" else None
    assert body["manifest"].get("stop_reason") == (tam_stop_reason if kind == "tam" else None)
    assert (body["error_message"] is not None) == (outcome == "failed")
    assert server.credits_used == 100


def test_paused_outcome_never_ends_and_resume_completes_it(server, http, clock):
    job_id = server.add_job(JobSpec(kind="tam", rows=600, running_seconds=6, outcome="paused"))
    clock.advance(3600)
    body = poll(server, http, "tam", job_id)
    assert (body["status"], body["processed"], body["manifest"]) == ("paused", 300, None)
    assert post(server, http, f"{TAM}/{job_id}/resume").json()["status"] == "running"
    clock.advance(7)
    assert server.job_status(job_id) == "completed"
    assert server.job_delivered(job_id) == 600


def test_extra_statuses_come_before_pending(server, http, clock):
    job_id = server.add_job(
        JobSpec(kind="tam", extra_statuses=(("queued", 2.0),), pending_seconds=1)
    )
    assert poll(server, http, "tam", job_id)["status"] == "queued"
    clock.advance(2.5)
    assert poll(server, http, "tam", job_id)["status"] == "pending"
    clock.advance(1)
    assert poll(server, http, "tam", job_id)["status"] == "completed"


def test_empty_job_has_one_empty_page(server, http):
    body = poll(server, http, "tam", server.add_job(JobSpec(kind="tam", rows=0)))
    assert (body["rows"], body["next_cursor"], body["count"]) == ([], None, 0)
    assert (body["manifest"]["pages"], body["manifest"]["unique_count"]) == (1, 0)


def test_real_clock_job_finishes_on_its_own(http):
    with FakeOpenFunnel() as server:
        job_id = server.add_job(
            JobSpec(kind="lookalike", rows=30, pending_seconds=0.05, running_seconds=0.1)
        )
        deadline = time.monotonic() + 5
        while poll(server, http, "lookalike", job_id)["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert server.credits_used == 30


# --------------------------------------------------------------------------- pages
@pytest.mark.parametrize("cursor", ["page_1", "page-0001", "", "garbage", "cGFnZQ"])
def test_malformed_cursor_is_a_422(server, http, cursor):
    job_id = server.add_job(JobSpec(kind="tam"))
    response = http.get(f"{server.url}{TAM}/{job_id}", params={"cursor": cursor}, timeout=5)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_bulk_poll_limit_out_of_range_is_a_422(server, http, limit):
    job_id = server.add_job(JobSpec(kind="lookalike"))
    response = http.get(f"{server.url}{BULK}/{job_id}", params={"limit": limit}, timeout=5)
    assert response.status_code == 422


def test_unwritten_page_answers_empty_and_echoes_its_name(server, http):
    body = poll(server, http, "tam", server.add_job(JobSpec(kind="tam", rows=250)), "page_0042")
    assert (body["page"], body["rows"], body["count"], body["next_cursor"]) == (
        "page_0042",
        [],
        0,
        None,
    )


# --------------------------------------------------------------------------- control endpoints
def test_cancel_keeps_delivered_rows_and_then_conflicts(server, http, clock):
    job_id = server.add_job(JobSpec(kind="tam", rows=600, running_seconds=6))
    clock.advance(2.5)  # two bands (200 rows) delivered
    answer = post(server, http, f"{TAM}/{job_id}/cancel")
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelling")
    assert poll(server, http, "tam", job_id)["status"] == "cancelling"
    clock.advance(0.5)
    pages = walk(server, http, "tam", job_id)
    assert pages[0]["status"] == "cancelled"
    assert sum(page["count"] for page in pages) == 200
    assert pages[0]["manifest"]["stop_reason"] == "cancelled"
    assert post(server, http, f"{TAM}/{job_id}/cancel").status_code == 409
    assert server.credits_used == 200


def test_pause_waits_for_the_band_boundary_and_resume_continues(server, http, clock):
    job_id = server.add_job(JobSpec(kind="tam", rows=600, running_seconds=6))
    clock.advance(1.5)  # mid band 2
    assert post(server, http, f"{TAM}/{job_id}/pause").json()["status"] == "pausing"
    assert poll(server, http, "tam", job_id)["status"] == "pausing"
    clock.advance(0.6)  # band 2 ends at 2.0 s
    assert (server.job_status(job_id), server.job_delivered(job_id)) == ("paused", 200)
    assert post(server, http, f"{TAM}/{job_id}/pause").json()["status"] == "paused"
    clock.advance(100)
    assert server.job_delivered(job_id) == 200, "a paused job does not progress"
    assert post(server, http, f"{TAM}/{job_id}/resume").json()["status"] == "running"
    assert post(server, http, f"{TAM}/{job_id}/resume").status_code == 409
    clock.advance(4)
    assert server.job_status(job_id) == "completed"
    assert post(server, http, f"{TAM}/{job_id}/pause").status_code == 409


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param(f"{TAM}/no-such-job/cancel", 404, id="cancel-unknown"),
        pytest.param(f"{BULK}/no-such-job/cancel", 404, id="bulk-cancel-unknown"),
        pytest.param(f"{BULK}/JOB/pause", 404, id="bulk-has-no-pause"),
        pytest.param(f"{TAM}/JOB/cancel", 409, id="cancel-completed"),
        pytest.param(f"{TAM}/JOB/resume", 409, id="resume-completed"),
        pytest.param("/api/v1/nothing-here", 404, id="unknown-path"),
    ],
)
def test_control_errors(server, http, path, status):
    job_id = server.add_job(JobSpec(kind="tam"))
    assert post(server, http, path.replace("JOB", job_id)).status_code == status


def test_wrong_method_is_a_405(server, http):
    response = http.delete(f"{server.url}{TAM}", timeout=5)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")


# --------------------------------------------------------------------------- auth and submits
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "of_wrong"}], ids=["missing", "wrong"])
def test_bad_key_is_a_401(server, headers):
    response = requests.get(f"{server.url}/api/v1/credits/balance", headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (
        401,
        {"detail": "Invalid or missing API key"},
    )


def test_jobs_are_scoped_to_the_submitting_key(server, http):
    answer = post(server, http, TAM, {"query": "hospitals in the US"}).json()
    assert answer["status"] == "pending"
    assert answer["message"] == f"Poll GET {TAM}/{answer['job_id']}"
    shared = server.add_job(JobSpec(kind="tam"))
    other = {"X-API-Key": OTHER_KEY}
    assert (
        requests.get(f"{server.url}{TAM}/{answer['job_id']}", headers=other, timeout=5).status_code
        == 404
    )
    assert requests.get(f"{server.url}{TAM}/{shared}", headers=other, timeout=5).status_code == 200
    assert requests.get(f"{server.url}{BULK}/{shared}", headers=other, timeout=5).status_code == 404
    assert server.submit_count("tam") == 1


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        pytest.param(TAM, {}, ["body", "query"], id="tam-missing-query"),
        pytest.param(TAM, {"query": ""}, ["body", "query"], id="tam-empty-query"),
        pytest.param(TAM, {"query": "x" * 501}, ["body", "query"], id="tam-long-query"),
        pytest.param(TAM, {"query": 7}, ["body", "query"], id="tam-query-not-string"),
        pytest.param(TAM, {"query": "ok", "limit": 5}, ["body", "limit"], id="tam-extra-field"),
        pytest.param(TAM, ["query"], ["body"], id="tam-not-an-object"),
        pytest.param(BULK, {"limit": 10}, ["body"], id="bulk-needs-query-or-seeds"),
        pytest.param(BULK, {"query": "x" * 201}, ["body", "query"], id="bulk-long-query"),
        pytest.param(BULK, {"query": "q", "limit": 0}, ["body", "limit"], id="bulk-limit-zero"),
        pytest.param(BULK, {"query": "q", "limit": 10001}, ["body", "limit"], id="bulk-limit-high"),
        pytest.param(
            BULK, {"seed_domains": ["a.com"] * 11}, ["body", "seed_domains"], id="bulk-11-seeds"
        ),
        pytest.param(
            BULK, {"query": "q", "min_employees": -1}, ["body", "min_employees"], id="bulk-negative"
        ),
        pytest.param(
            BULK,
            {"query": "q", "funding_stages": ["Series Z"]},
            ["body", "funding_stages", 0],
            id="stage",
        ),
        pytest.param(
            BULK, {"query": "q", "search_type": "fuzzy"}, ["body", "search_type"], id="search-type"
        ),
        pytest.param(
            BULK, {"query": "q", "colour": "red"}, ["body", "colour"], id="bulk-extra-field"
        ),
    ],
)
def test_invalid_submits_are_422_and_create_nothing(server, http, path, body, loc):
    response = post(server, http, path, body)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    assert server.submit_count("tam") + server.submit_count("lookalike") == 0


def test_non_json_body_is_a_422(server, http):
    response = http.post(f"{server.url}{TAM}", data=b"{not json", timeout=5)
    assert (response.status_code, response.json()["detail"][0]["type"]) == (422, "json_invalid")


def test_bulk_submit_delivers_limit_rows_and_reports_seeds(server, http):
    body = {
        "seed_domains": ["https://www.Datadoghq.com/", "gone.example"],
        "query": "APM",
        "limit": 120,
    }
    answer = post(server, http, BULK, body).json()
    assert (answer["status"], answer["requested_limit"]) == ("pending", 120)
    manifest = walk(server, http, "lookalike", answer["job_id"])[0]["manifest"]
    assert manifest["count"] == 120
    assert manifest["resolved_seed_domains"] == ["datadoghq.com"]
    assert manifest["unresolved_seed_domains"] == ["gone.example"]
    assert "datadoghq.com" in manifest["derived_query"]
    only_unresolved = post(server, http, BULK, {"seed_domains": ["gone.example"]})
    assert (only_unresolved.status_code, only_unresolved.json()["error_code"]) == (
        400,
        "INVALID_REQUEST",
    )


def domains_of(server, http, kind, job_id):
    return [row["domain"] for page in walk(server, http, kind, job_id) for row in page["rows"]]


@pytest.mark.parametrize(
    ("kind", "path", "body"),
    [
        pytest.param("tam", TAM, {"query": "observability vendors"}, id="tam"),
        pytest.param("lookalike", BULK, {"query": "APM", "limit": 30}, id="lookalike"),
    ],
)
def test_refresh_drift_makes_refreshes_of_one_request_overlap(server, http, kind, path, body):
    server.submit_defaults[kind] = JobSpec(kind=kind, rows=30, page_size=7, refresh_drift=12)
    first, second = (post(server, http, path, body).json()["job_id"] for _ in range(2))
    other = post(server, http, path, {**body, "query": "something else"}).json()["job_id"]
    one, two = domains_of(server, http, kind, first), domains_of(server, http, kind, second)
    assert len(one) == len(two) == 30
    # The refresh drops the first 12 companies, keeps 18 (moved up 12 ranks), adds 12.
    assert two[:18] == one[12:]
    assert not set(two[18:]) & set(one)
    # Another request draws companies of its own, from its first row on.
    assert not set(domains_of(server, http, kind, other)) & set(one + two)


def test_without_refresh_drift_each_job_draws_rows_of_its_own(server, http):
    server.submit_defaults["tam"] = JobSpec(kind="tam", rows=30)
    first, second = (post(server, http, TAM, {"query": "q"}).json()["job_id"] for _ in range(2))
    assert not set(domains_of(server, http, "tam", first)) & set(
        domains_of(server, http, "tam", second)
    )


def test_credits_are_billed_at_terminal_and_guard_bulk_submits(clock, http):
    with FakeOpenFunnel(credits_total=500, clock=clock) as server:
        server.submit_defaults["lookalike"] = JobSpec(kind="lookalike", running_seconds=1)
        first = post(server, http, BULK, {"query": "q", "limit": 300})
        assert first.status_code == 200
        assert server.credits_used == 0, "billed once, at completion"
        clock.advance(2)
        balance = http.get(f"{server.url}/api/v1/credits/balance", timeout=5).json()
        assert balance == {"total_credits": 500.0, "credits_used": 300.0, "credits_left": 200.0}
        refused = post(server, http, BULK, {"query": "q", "limit": 201})
        assert (refused.status_code, refused.json()["error_code"]) == (400, "CREDITS_EXCEEDED")
        assert server.submit_count("lookalike") == 1


def test_redirect_mode_answers_307_to_the_other_host(server, http):
    server.redirect_to = "http://127.0.0.2:9"
    response = http.get(f"{server.url}{TAM}/abc?cursor=page_0001", allow_redirects=False, timeout=5)
    assert (response.status_code, response.headers["Location"]) == (
        307,
        "http://127.0.0.2:9/api/v1/tam/build/abc?cursor=page_0001",
    )


# --------------------------------------------------------------------------- faults
def _get_with_fault(kind, **faults):
    with FakeOpenFunnel() as server, requests.Session() as session:
        session.headers["X-API-Key"] = KEY
        job_id = server.add_job(JobSpec(kind="tam", rows=400))
        server.faults = Faults(rate=1.0, kinds=(kind,), **faults)
        try:
            outcome = session.get(f"{server.url}{TAM}/{job_id}", timeout=5)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            outcome = exc
        return outcome, list(server.requests)


def fake_server_time(monkeypatch, clock=None, sleep=None):
    """The server's own waits (latency, slow answers) on a clock the test controls."""
    clock = clock or support.FakeClock()
    fake = SimpleNamespace(monotonic=clock, sleep=sleep or clock.sleep)
    monkeypatch.setattr(server_module, "time", fake)
    return clock


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        pytest.param("429", 429, lambda r: r.headers["Retry-After"] == "2", id="429-seconds"),
        pytest.param(
            "429_date",
            429,
            lambda r: (
                email.utils.parsedate_to_datetime(r.headers["Retry-After"])
                > datetime.now(timezone.utc)
            ),
            id="429-http-date",
        ),
        pytest.param(
            "429_body",
            429,
            lambda r: (
                "Retry-After" not in r.headers and r.json()["details"]["retry_after_seconds"] == 1.5
            ),
            id="429-body",
        ),
        pytest.param(
            "500", 500, lambda r: r.json() == {"detail": "Internal Server Error"}, id="500"
        ),
        pytest.param("502", 502, lambda r: r.headers["Content-Type"] == "text/html", id="502-html"),
        pytest.param(
            "503", 503, lambda r: r.headers["Content-Type"] == "text/plain", id="503-text"
        ),
        pytest.param("slow", 200, lambda r: r.json()["status"] == "completed", id="slow"),
    ],
)
def test_answering_faults(kind, status, check, monkeypatch):
    clock = fake_server_time(monkeypatch)
    response, records = _get_with_fault(kind, retry_after=1.5, slow_seconds=0.2)
    assert response.status_code == status
    assert check(response)
    assert (records[-1].status, records[-1].fault) == (status, kind)
    assert clock.sleeps == ([0.2] if kind == "slow" else [])


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        pytest.param("drop", requests.ConnectionError, id="drop"),
        pytest.param("cutoff", requests.exceptions.ChunkedEncodingError, id="cutoff"),
    ],
)
def test_breaking_faults(kind, error):
    outcome, records = _get_with_fault(kind)
    assert isinstance(outcome, error)
    assert records[-1].fault == kind


def test_random_faults_are_seeded_and_spare_posts_by_default(server, http):
    job_id = server.add_job(JobSpec(kind="tam"))

    def faulted_run():
        server.faults = Faults(rate=0.5, kinds=("500",), seed=7)
        return [http.get(f"{server.url}{TAM}/{job_id}", timeout=5).status_code for _ in range(20)]

    first = faulted_run()
    assert first == faulted_run()
    assert 0 < first.count(500) < 20
    server.faults = Faults(rate=1.0, kinds=("500",))
    assert post(server, http, TAM, {"query": "q"}).status_code == 200


@pytest.mark.parametrize(
    ("entry", "expect", "created"),
    [
        pytest.param("ok", 200, 1, id="ok"),
        pytest.param("429", 429, 0, id="429"),
        pytest.param("500_after_create", 500, 1, id="500-after-create"),
        pytest.param("drop_before_create", requests.ConnectionError, 0, id="drop-before-create"),
        pytest.param("drop_after_create", requests.ConnectionError, 1, id="drop-after-create"),
        pytest.param("sleep_after_create:1", requests.ReadTimeout, 1, id="sleep-after-create"),
    ],
)
def test_submit_script(server, http, entry, expect, created):
    server.faults = Faults(submit_script=[entry])
    try:
        outcome = http.post(f"{server.url}{TAM}", json={"query": "q"}, timeout=(5, 0.3)).status_code
    except requests.RequestException as exc:
        outcome = exc
    assert outcome == expect if isinstance(expect, int) else isinstance(outcome, expect)
    assert server.submit_count("tam") == created
    assert post(server, http, TAM, {"query": "q"}).status_code == 200, "the script is used up"
    assert server.submit_count("tam") == created + 1


def test_faults_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown"):
        Faults(kinds=("teapot",))
    with pytest.raises(ValueError, match="unknown"):
        Faults(submit_script=["sleep_after_create:soon"])


# --------------------------------------------------------------------------- quirks
def _quirky(server, http, quirk, rows=300, **spec):
    job_id = server.add_job(JobSpec(kind="tam", rows=rows, quirks=frozenset({quirk}), **spec))
    return job_id, poll(server, http, "tam", job_id)


def test_quirk_numbers_as_strings(server, http):
    _, body = _quirky(server, http, "numbers_as_strings")
    assert isinstance(body["processed"], str)
    numbers = [row[field] for row in body["rows"] for field in ("employee_count", "match_score")]
    assert all(value is None or isinstance(value, str) for value in numbers)


def test_quirk_missing_fields(server, http):
    _, body = _quirky(server, http, "missing_fields")
    short = [row for row in body["rows"] if len(row) < 14]
    assert 5 <= len(short) <= 40
    assert all("name" in row for row in body["rows"])


def test_quirk_extra_fields(server, http):
    _, body = _quirky(server, http, "extra_fields")
    assert {"score_v2", "tags"} <= body["rows"][0].keys()
    assert "request_id" in body
    assert "schema_version" in body["manifest"]


def test_quirk_renamed_fields_from_the_jobs_half_on(server, http):
    job_id, _ = _quirky(server, http, "renamed_fields", rows=250)
    rows = [row for page in walk(server, http, "tam", job_id) for row in page["rows"]]
    assert all("name" in row and "company_name" not in row for row in rows[:125])
    assert all({"company_name", "website"} <= row.keys() for row in rows[125:])
    assert not any("name" in row or "domain" in row for row in rows[125:])


def test_quirk_new_manifest_field(server, http):
    _, body = _quirky(server, http, "new_manifest_field")
    assert body["manifest"]["credits_refunded"] == 7
    assert "credits_refunded" not in body["rows"][0]


def test_quirk_empty_page_with_cursor(server, http):
    job_id, _ = _quirky(server, http, "empty_page_with_cursor")
    pages = walk(server, http, "tam", job_id)
    assert [page["count"] for page in pages] == [100, 0, 100, 100]
    assert pages[1]["next_cursor"] == "page_0002"
    assert pages[0]["manifest"]["pages"] == 4
    assert len({row["domain"] for page in pages for row in page["rows"]}) == 300


def test_quirk_repeat_cursor(server, http):
    job_id, _ = _quirky(server, http, "repeat_cursor")
    assert poll(server, http, "tam", job_id, "page_0001")["next_cursor"] == "page_0001"


def test_quirk_manifest_mismatch(server, http):
    _, body = _quirky(server, http, "manifest_mismatch")
    assert body["manifest"]["unique_count"] == 305


def test_quirk_opaque_cursor(server, http):
    job_id, body = _quirky(server, http, "opaque_cursor")
    assert not body["next_cursor"].startswith("page_")
    pages = walk(server, http, "tam", job_id)
    assert [page["page"] for page in pages] == ["page_0000", "page_0001", "page_0002"]


def test_quirk_wrong_page(server, http):
    job_id, _ = _quirky(server, http, "wrong_page", rows=400)
    body = poll(server, http, "tam", job_id, "page_0002")
    assert body["page"] == "page_0003"
    assert body["rows"] == poll(server, http, "tam", job_id, "page_0003")["rows"]


def test_quirk_null_rows(server, http, clock):
    job_id, body = _quirky(server, http, "null_rows", pending_seconds=1)
    assert (body["rows"], body["count"]) == (None, 0)
    clock.advance(2)
    assert len(poll(server, http, "tam", job_id)["rows"]) == 100


def test_jobspec_rejects_nonsense():
    with pytest.raises(ValueError, match="quirks"):
        JobSpec(kind="tam", quirks=frozenset({"sparkles"}))
    with pytest.raises(ValueError, match="TAM only"):
        JobSpec(kind="lookalike", outcome="paused")


# --------------------------------------------------------------------------- data
def test_rows_are_awkward_unique_and_deterministic(server, http):
    job_id = server.add_job(JobSpec(kind="tam", rows=1000, job_id="fixed-job"))
    rows = [row for page in walk(server, http, "tam", job_id) for row in page["rows"]]
    assert len({row["domain"] for row in rows}) == 1000
    assert all(row["name"] for row in rows)
    assert any(not row["name"].isascii() for row in rows)
    assert any(row["hq_city"] and not row["hq_city"].isascii() for row in rows)
    assert any(row["match_score"] is None for row in rows)
    assert any(row["industries"] == [] for row in rows)
    reasons = [row["match_reason"] or "" for row in rows]
    assert all(any(char in reason for reason in reasons) for char in ('"', "\\", "\n"))
    assert {row["source_band"] for row in rows} >= {"1-10", "5001+"}
    with FakeOpenFunnel() as again:
        again.add_job(JobSpec(kind="tam", rows=1000, job_id="fixed-job"))
        assert poll(again, http, "tam", "fixed-job", "page_0004")["rows"] == rows[400:500]


def test_lookalike_rows_have_the_bulk_shape(server, http):
    rows = poll(server, http, "lookalike", server.add_job(JobSpec(kind="lookalike")))["rows"]
    assert set(rows[0]) == {
        "name",
        "domain",
        "linkedin_url",
        "headquarters",
        "match_reason",
        "company_size",
        "employee_count",
    }


def test_unseeded_servers_never_repeat_job_ids(http):
    ids = []
    for _ in range(2):
        with FakeOpenFunnel() as server:
            ids += [post(server, http, TAM, {"query": "q"}).json()["job_id"] for _ in range(3)]
            ids.append(server.add_job(JobSpec(kind="tam")))
    assert len(set(ids)) == len(ids) == 8


def test_same_seed_gives_same_job_ids(http):
    ids = []
    for _ in range(2):
        with FakeOpenFunnel(seed=3) as server:
            ids.append([post(server, http, TAM, {"query": "q"}).json()["job_id"] for _ in range(3)])
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 3


# --------------------------------------------------------------------------- transport
def test_keep_alive_reuses_one_connection(server, http):
    job_id = server.add_job(JobSpec(kind="tam"))
    for _ in range(20):
        poll(server, http, "tam", job_id)
    pools = http.get_adapter(server.url).poolmanager.pools
    keys = pools.keys()  # the container refuses plain iteration
    assert [pools[key].num_connections for key in keys] == [1]


def test_concurrent_readers_get_consistent_pages(server):
    job_id = server.add_job(JobSpec(kind="tam", rows=1600))
    server.latency = 0.01

    def read(page):
        with requests.Session() as session:
            session.headers["X-API-Key"] = KEY
            return [
                poll(server, session, "tam", job_id, f"page_{page:04d}")["rows"][0]["domain"]
                for _ in range(4)
            ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(read, range(16)))
    assert [len(set(result)) for result in results] == [1] * 16
    assert len({result[0] for result in results}) == 16
    assert server.request_count("GET", TAM) == 64


def test_stats_need_no_key_and_are_not_counted(server, http):
    post(server, http, TAM, {"query": "q"})
    stats = requests.get(f"{server.url}/_sandbox/stats", timeout=5).json()
    assert stats == {"submits": {"tam": 1, "lookalike": 0}, "requests": 1, "credits_used": 250.0}
    assert requests.get(f"{server.url}/_sandbox/stats", timeout=5).json()["requests"] == 1


def test_url_needs_start_and_host_must_be_loopback():
    with pytest.raises(Exception, match="start"):
        _ = FakeOpenFunnel().url
    with pytest.raises(ValueError, match="loopback"):
        FakeOpenFunnel(host="0.0.0.0")  # noqa: S104 - this is the address being refused


def test_cli_prints_its_json_line_and_stops_cleanly(tmp_path):
    config_path = tmp_path / "config.json"
    command = [
        sys.executable,
        "-m",
        "openfunnel_sandbox",
        "--port",
        "0",
        "--demo",
        "--write-config",
        str(config_path),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            info = json.loads(process.stdout.readline())
            headers = {"X-API-Key": info["api_key"]}
            job = requests.get(
                f"{info['url']}{TAM}/{info['tam_job_ids'][0]}", headers=headers, timeout=5
            ).json()
            assert (job["status"], job["manifest"]["unique_count"]) == ("completed", 1234)
            assert (
                json.loads(config_path.read_text())["lookalike_job_ids"]
                == info["lookalike_job_ids"]
            )
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0


def test_cli_refuses_a_public_address():
    command = [sys.executable, "-m", "openfunnel_sandbox", "--host", "0.0.0.0", "--port", "0"]  # noqa: S104
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_the_sandbox_refuses_to_serve_for_ever():
    with FakeOpenFunnel(api_keys=(KEY,), max_requests=3) as server, requests.Session() as s:
        codes = [
            s.get(f"{server.url}/api/v1/credits/balance", headers={"X-API-Key": KEY}).status_code
            for _ in range(5)
        ]
    assert codes == [200, 200, 200, 410, 410]


def test_a_read_is_answered_latency_after_it_arrived_its_work_included(server, http, monkeypatch):
    """Latency is what a remote API's answer takes, its own work included: the
    benchmarks' sequential bound (pages x latency) assumes exactly that."""
    job_id = server.add_job(JobSpec(kind="tam", rows=100))
    server.latency = 0.4
    clock = fake_server_time(monkeypatch)
    answer = server._answer  # the server's own work, slowed down below

    def slow_work(exchange):
        clock.sleep(0.3)
        return answer(exchange)

    monkeypatch.setattr(server, "_answer", slow_work)
    poll(server, http, "tam", job_id)
    # Not before the latency is up, and the 0.3 s of work is not added on top of it:
    # after the work, the answer waits out what is left of the latency.
    assert clock.sleeps == [0.3, pytest.approx(0.1)]
    assert clock.now == pytest.approx(0.4)


def test_a_write_acts_only_once_the_latency_is_up(server, http, monkeypatch):
    """A client that gives up during a submit's latency has created nothing."""
    server.latency = 1.0
    latency_up = threading.Event()
    waits: list[float] = []

    def wait_for_the_test(seconds: float) -> None:
        waits.append(seconds)
        latency_up.wait(30)

    fake_server_time(monkeypatch, sleep=wait_for_the_test)
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            http.post(f"{server.url}{TAM}", json={"query": "q"}, timeout=(5, 0.3))
        assert server.submit_count("tam") == 0
    finally:
        latency_up.set()
    deadline = time.monotonic() + 30
    while server.submit_count("tam") == 0 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert server.submit_count("tam") == 1  # the server went on and created it
    assert waits == [1.0]  # created once the latency was waited out, not before
