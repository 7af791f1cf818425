"""The HTTP client: Retry-After and backoff, faults and timeouts retried, bad keys and redirects."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from hostile import BAD, GOOD, HostileAPI, HostileJob, assert_clean, run_against
from support import ALL_FAULTS, API_KEY, base_config

from openfunnel_sandbox import FakeOpenFunnel, Faults, JobSpec
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.exceptions import RetriesExhaustedError
from tap_openfunnel.retries import RetryPolicy


def client_for(server, **retry):
    return OpenFunnelClient(
        api_url=server.url, api_key=API_KEY, timeout=2, retry=RetryPolicy(**retry)
    )


@pytest.mark.parametrize("kind", ["429", "429_date", "429_body"])
def test_retry_after_is_honoured(server, kind, sleeps):
    server.faults = Faults(rate=1.0, kinds=(kind,), retry_after=3)
    client = client_for(server, max_retries=2, max_wait=10)
    with pytest.raises(RetriesExhaustedError) as info:
        client.get("/api/v1/credits/balance")
    message = str(info.value)
    assert "/api/v1/credits/balance" in message
    assert "HTTP 429" in message
    assert API_KEY not in message
    assert len(sleeps) == 2
    # An HTTP date has one-second resolution; seconds and the body are exact.
    assert all(1.0 <= wait <= 3.0 for wait in sleeps)
    if kind != "429_date":
        assert sleeps == [3.0, 3.0]


def test_retry_after_is_capped_by_max_retry_wait(server, sleeps):
    server.faults = Faults(rate=1.0, kinds=("429",), retry_after=90)
    with pytest.raises(RetriesExhaustedError):
        client_for(server, max_retries=1, max_wait=5).get("/api/v1/credits/balance")
    assert sleeps == [5.0]


def test_backoff_is_exponential_with_jitter_and_capped(server, sleeps):
    server.faults = Faults(rate=1.0, kinds=("503",))
    with pytest.raises(RetriesExhaustedError, match="HTTP 503"):
        client_for(server, max_retries=6, max_wait=8, base_wait=1).get("/api/v1/credits/balance")
    ceilings = [1, 2, 4, 8, 8, 8]
    assert len(sleeps) == 6
    for wait, ceiling in zip(sleeps, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling


@pytest.mark.parametrize("kind", ["drop", "cutoff", "500", "502", "slow"])
def test_network_and_server_faults_are_retried(server, kind, sleeps):
    server.faults = Faults(rate=0.6, kinds=(kind,), seed=3, slow_seconds=0.1)
    client = client_for(server, max_retries=20, max_wait=0.01)
    for _ in range(5):
        assert "credits_left" in client.get("/api/v1/credits/balance")
    faults = [r.fault for r in server.requests if r.fault]
    assert faults, "the fault plan injected nothing"
    if kind != "slow":
        assert len(sleeps) == len(faults)


def test_chaos_run_delivers_every_row_exactly_once(server, run_tap):
    server.faults = Faults(rate=0.3, kinds=ALL_FAULTS, retry_after=0, slow_seconds=0.2, seed=7)
    tam = server.add_job(JobSpec(kind="tam", rows=2000))
    tam2 = server.add_job(JobSpec(kind="tam", rows=450, pending_seconds=0.2, running_seconds=0.5))
    look = server.add_job(JobSpec(kind="lookalike", rows=500))
    config = base_config(
        server, tam_job_ids=[tam, tam2], lookalike_job_ids=[look], max_retries=12, request_timeout=5
    )
    run = run_tap(config, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    tam_rows = run.records("tam_companies")
    keys = [(r["job_id"], r["rank"]) for r in tam_rows]
    assert len(keys) == len(set(keys)) == 2450
    assert sorted(r["rank"] for r in tam_rows if r["job_id"] == tam) == list(range(1, 2001))
    look_rows = run.records("lookalike_companies")
    assert sorted(r["rank"] for r in look_rows) == list(range(1, 501))
    faulted = [r for r in server.requests if r.fault]
    assert len(faulted) >= 0.2 * len(server.requests)
    assert {r.fault for r in faulted} >= {"drop", "cutoff", "429", "500"}


def test_wrong_key_fails_fast_about_authentication(server, run_tap):
    job = server.add_job(JobSpec(kind="tam", rows=10))
    wrong = "of_wrong_key_should_never_print"
    run = run_tap(base_config(server, tam_job_ids=[job], api_key=wrong))
    assert run.returncode != 0
    assert "Authentication failed" in run.stderr
    assert "api_key" in run.stderr
    assert "Traceback" not in run.stderr
    assert wrong not in run.stdout + run.stderr
    assert server.request_count() == 1  # a refused key is not retried


@pytest.mark.parametrize(
    "url", ["http://api.openfunnel.dev", "http://10.1.2.3:8080", "ftp://127.0.0.1/x"]
)
def test_plain_http_to_a_remote_host_is_refused(run_tap, url):
    run = run_tap({"api_key": API_KEY, "api_url": url, "tam_job_ids": ["x"]})
    assert run.returncode != 0
    assert "api_url" in run.stderr
    assert "Traceback" not in run.stderr


def test_redirects_are_not_followed_so_the_key_stays_home(server, run_tap):
    with FakeOpenFunnel(api_keys=("other",)) as elsewhere:
        job = server.add_job(JobSpec(kind="tam", rows=10))
        server.redirect_to = elsewhere.url
        run = run_tap(base_config(server, tam_job_ids=[job]))
        assert run.returncode != 0
        assert "redirect" in run.stderr
        assert elsewhere.request_count() == 0
        assert API_KEY not in run.stdout + run.stderr


def test_read_timeouts_are_retried(server, sleeps):
    server.faults = Faults(rate=0.5, kinds=("slow",), seed=1, slow_seconds=0.6)
    client = OpenFunnelClient(
        api_url=server.url,
        api_key=API_KEY,
        timeout=0.3,
        retry=RetryPolicy(max_retries=20, max_wait=0.01),
    )
    for _ in range(4):
        assert "credits_left" in client.get("/api/v1/credits/balance")
    assert sleeps, "no request timed out"
    # The server logs a slowed request once it has answered it, after the client left.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and server.request_count() < 4 + len(sleeps):
        threading.Event().wait(0.05)
    slow = [r for r in server.requests if r.fault == "slow"]
    assert len(slow) == len(sleeps)  # every answer that came too late was retried


ONE_JOB = [
    pytest.param("page_404", 1, "HTTP 404", id="page-404"),
    pytest.param("rows_not_list", 1, "'rows' of type str", id="rows-not-a-list"),
    # One value nested 100,000 deep costs that value, not the page (bounds: nesting).
    pytest.param("deep_nesting", 0, "nested more than 500 levels", id="deep-nesting"),
    pytest.param("html", 1, "incomplete JSON body", id="html-instead-of-json"),
    pytest.param("redirect", 1, "a redirect to 203.0.113.9", id="redirect-elsewhere"),
    # request_timeout at its minimum, 1 s: each attempt is cut at its deadline.
    pytest.param("trickle", 1, "within request_timeout (1 s)", id="trickled-body"),
    pytest.param("retry_after_nan", 0, None, id="retry-after-nan"),
    pytest.param("retry_after_huge", 0, None, id="retry-after-huge"),
]


@pytest.mark.parametrize(("pathology", "code", "needle"), ONE_JOB)
def test_a_bad_answer_fails_its_job_and_the_others_are_delivered(tmp_path, pathology, code, needle):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology=pathology)}
    timeout = 1 if pathology == "trickle" else 2
    with HostileAPI(jobs, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, page_concurrency=1, request_timeout=timeout)
    assert run.returncode == code, run.stderr[-3000:]
    if needle is not None:
        assert needle in run.stderr
    if needle is not None and code:
        assert BAD in run.stderr.splitlines()[-1]
    assert_clean(run)
    bad = sorted(r["rank"] for r in run.records("tam_companies") if r["job_id"] == BAD)
    assert bad == list(range(1, (300 if code == 0 else 100) + 1))
    assert "nan s" not in run.stderr
    # A bad answer is given up after its retries (max_retries 2): no request is sent
    # more than three times, the trickled page's included (its deadline is the needle).
    sent = Counter((served.path, served.cursor) for served in api.served)
    assert max(sent.values()) <= 3, sent.most_common(3)
