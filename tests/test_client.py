"""Issue #4: throttling, faults, interruptions, odd data, bad input and secrets."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from support import API_KEY, base_config, kill_after, tap_command, tap_env, write_json

from openfunnel_sandbox import FakeOpenFunnel, Faults, JobSpec
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.exceptions import MalformedPageError, RetriesExhaustedError
from tap_openfunnel.pagination import Page
from tap_openfunnel.records import RowShaper
from tap_openfunnel.retries import RetryPolicy
from tap_openfunnel.streams import load_schema

ALL_FAULTS = ("429", "429_date", "429_body", "500", "502", "503", "drop", "cutoff", "slow")


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


def test_randomised_kills_with_faults_then_resume_deliver_every_row(server, run_tap, tmp_path):
    rng = random.Random(20261125)  # noqa: S311 - kill points, not secrets
    server.latency = 0.002
    server.faults = Faults(rate=0.15, kinds=ALL_FAULTS, retry_after=0, slow_seconds=0.05, seed=11)
    jobs = [server.add_job(JobSpec(kind="tam", rows=rows)) for rows in (700, 420)]
    config = base_config(server, tam_job_ids=jobs, page_concurrency=3, max_retries=12)
    config_path = write_json(tmp_path / "c.json", config)
    state = None
    delivered = []
    for attempt in range(3):
        state_path = write_json(tmp_path / f"s{attempt}.json", state) if state else None
        _, messages, _ = kill_after(
            tap_command(config_path, state_path), tap_env(), records=rng.randint(1, 300)
        )
        delivered += [
            m["record"]
            for m in messages
            if m["type"] == "RECORD" and m["stream"] == "tam_companies"
        ]
        states = [m["value"] for m in messages if m["type"] == "STATE"]
        state = states[-1] if states else state
    final = run_tap(config, state=state)
    assert final.returncode == 0, final.stderr[-2000:]
    delivered += final.records("tam_companies")
    for job_id, rows in zip(jobs, (700, 420), strict=True):
        assert {r["rank"] for r in delivered if r["job_id"] == job_id} == set(range(1, rows + 1))


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


def test_missing_api_key_names_it_without_traceback(server, run_tap):
    config = base_config(server)
    del config["api_key"]
    run = run_tap(config)
    assert run.returncode != 0
    assert "api_key" in run.stderr
    assert "Traceback" not in run.stderr


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


def test_unreadable_state_file_is_a_clear_error(server, tmp_path):
    config = write_json(tmp_path / "c.json", base_config(server))
    state = tmp_path / "s.json"
    state.write_text("{not json", encoding="utf-8")
    proc = subprocess.run(
        tap_command(config, state),
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def spec(rows=250, **quirks_and_more):
    quirks = quirks_and_more.pop("quirks", ())
    return JobSpec(kind="tam", rows=rows, quirks=frozenset(quirks), **quirks_and_more)


def test_numbers_as_strings_are_coerced(server, run_tap):
    job = server.add_job(spec(quirks={"numbers_as_strings"}))
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    assert len(rows) == 250
    counts = [r["employee_count"] for r in rows if r["employee_count"] is not None]
    assert counts
    assert all(isinstance(value, int) for value in counts)
    assert isinstance(run.records("jobs")[0]["processed"], int)


def test_missing_and_extra_fields(server, run_tap):
    job = server.add_job(spec(quirks={"missing_fields", "extra_fields"}))
    run = run_tap(base_config(server, tam_job_ids=[job]))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    schema_fields = set(load_schema("tam_companies")["properties"])
    assert len(rows) == 250
    assert all(set(r) == schema_fields for r in rows)
    # Nothing the API sent is lost: the unknown fields ride along in _extra.
    assert all(set(r["_extra"]) == {"score_v2", "tags"} for r in rows)
    assert all(r["_extra"]["tags"][0] == "beta" for r in rows)
    assert "fields the schema does not name (score_v2, tags)" in run.stderr


@pytest.mark.parametrize("concurrency", [1, 4])
def test_empty_page_with_a_cursor_is_followed(server, run_tap, concurrency):
    job = server.add_job(spec(rows=450, quirks={"empty_page_with_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=concurrency))
    assert run.returncode == 0, run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 451))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_repeating_cursor_fails_the_job_after_delivering_what_came_before(
    server, run_tap, concurrency
):
    job = server.add_job(spec(rows=450, quirks={"repeat_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=concurrency))
    assert run.returncode == 1
    assert job in run.stderr
    assert "back to 'page_0001'" in run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 201))
    # State stays before the page that points back: a rerun sends it again with the
    # same ranks, never under new ones.
    (partition,) = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    assert (partition["next_cursor"], partition["rows_read"]) == ("page_0001", 100)
    again = run_tap(base_config(server, tam_job_ids=[job]), state=run.last_state)
    assert sorted(r["rank"] for r in again.records("tam_companies")) == list(range(101, 201))
    resumed = f"Job {job}: resuming at page 'page_0001' (the cursor kept in state), after 100"
    assert resumed in again.stderr
    assert "resuming at page" not in run.stderr  # the first run started at the start


@pytest.mark.parametrize(("strict", "code"), [(False, 0), (True, 1)])
def test_manifest_mismatch_warns_or_fails(server, run_tap, strict, code):
    job = server.add_job(spec(rows=300, quirks={"manifest_mismatch"}))
    run = run_tap(base_config(server, tam_job_ids=[job], strict_row_count=strict))
    assert run.returncode == code
    assert "read 300 rows but the manifest's unique_count says 305" in run.stderr
    assert len(run.records("tam_companies")) == 300


def test_opaque_cursors_are_followed(server, run_tap):
    job = server.add_job(spec(rows=530, quirks={"opaque_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=8))
    assert run.returncode == 0, run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 531))


def test_wrong_page_is_never_emitted_under_the_wrong_name(server, run_tap):
    job = server.add_job(spec(rows=600, quirks={"wrong_page"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=4))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    assert "asked for page_0002" in run.stderr
    assert all(r["page"] != "page_0002" for r in rows)
    assert "manifest" in run.stderr  # the shortfall is reported, not silent


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    # Any code point, lone surrogates and NUL included: what a broken server can send.
    st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
TAM_SCHEMA = load_schema("tam_companies")
row_strategy = st.dictionaries(
    st.sampled_from([*TAM_SCHEMA["properties"], "zzz_extra", "rank"]), json_values, max_size=16
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "rows": st.one_of(
                st.lists(st.one_of(row_strategy, json_values), max_size=6), json_values
            ),
            "page": json_values,
            "next_cursor": json_values,
            "count": json_values,
        },
    )
)
def test_malformed_pages_never_crash_and_records_match_the_schema(body):
    try:
        page = Page.from_response(body)
    except MalformedPageError:
        # A clean failure of the job, for the two shapes that cannot be read at all.
        rows, cursor = body.get("rows"), body.get("next_cursor")
        assert not isinstance(rows, (list, type(None))) or not isinstance(cursor, (str, type(None)))
        return
    shaper = RowShaper(TAM_SCHEMA)
    records = list(
        shaper.records(page.rows, job_id="j", page=page.name or "page_0000", first_rank=1)
    )
    assert len(records) == len(page.rows)
    validator = Draft7Validator(TAM_SCHEMA)
    for index, record in enumerate(records, start=1):
        errors = [error.message for error in validator.iter_errors(record)]
        assert not errors, (record, errors)
        text = json.dumps(record, ensure_ascii=False)
        text.encode("utf-8")  # no lone surrogate survives
        assert "\x00" not in text
        assert record["rank"] == index


def test_a_misspelt_setting_is_refused_with_a_suggestion(server, run_tap):
    job = server.add_job(JobSpec(kind="tam", rows=10))
    run = run_tap(base_config(server, tam_jobs_ids=[job]))
    assert run.returncode == 1
    assert "'tam_jobs_ids' (did you mean 'tam_job_ids'?)" in run.stderr
    assert "Traceback" not in run.stderr
    assert server.request_count() == 0


def test_read_timeouts_are_retried(server, sleeps):
    server.faults = Faults(rate=0.8, kinds=("slow",), seed=1, slow_seconds=1.0)
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
