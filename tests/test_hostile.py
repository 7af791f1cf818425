"""Hostile answers, config and state: the run ends by itself, cleanly, and loses or repeats nothing.

Each case runs the real CLI against tests/hostile.py with one sound job ("good", 250
rows) beside one pathological job ("bad"). Whatever the pathology, the run must end on
its own, print no traceback and never the key, emit no (job_id, rank) twice and no
company under two ranks, and still deliver the sound job whole.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import pytest
from hostile import HostileAPI, HostileJob, Streamed, gzip_bomb, page_number, run_tap_against
from support import API_KEY, TapRun

GOOD = "good-job"
BAD = "bad-job"


# Runs the tap as its only child and reports the child's peak memory (KiB on Linux).
MEASURED = (
    sys.executable,
    "-c",
    (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
        "file=sys.stderr); sys.exit(code)"
    ),
)


def run_against(
    api: HostileAPI, tmp_path, prefix: tuple[str, ...] = (), **overrides: Any
) -> TapRun:
    state = overrides.pop("state", None)
    return run_tap_against(
        api,
        tmp_path,
        state=state,
        prefix=prefix,
        **{"tam_job_ids": [GOOD, BAD], "max_retries": 2, "request_timeout": 2, **overrides},
    )


def assert_clean(run: TapRun) -> None:
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert API_KEY not in run.stdout + run.stderr
    records = run.records("tam_companies")
    keys = [(r["job_id"], r["rank"]) for r in records]
    assert len(keys) == len(set(keys)), "a (job_id, rank) was emitted twice"
    for job_id in {r["job_id"] for r in records}:
        domains = [r["domain"] for r in records if r["job_id"] == job_id]
        assert len(domains) == len(set(domains)), f"{job_id}: a company under two ranks"
        ranks = sorted(r["rank"] for r in records if r["job_id"] == job_id)
        assert ranks == list(range(1, len(ranks) + 1)), f"{job_id}: ranks have a gap"
    good = sorted(r["rank"] for r in records if r["job_id"] == GOOD)
    assert good == list(range(1, 251)), "the sound job was not delivered whole"


PAGE_WALK = [
    pytest.param("cycle_to_first", 300, "back to 'page_0000'", id="cursor-cycles-to-first-page"),
    pytest.param("self_loop_first", 100, "back to 'page_0000'", id="first-page-points-at-itself"),
    pytest.param("old_page_fresh_cursor", 300, "already read", id="old-page-under-new-cursor"),
    # The manifest's 3 pages and the margin of 5: 800 fresh rows, then the job fails.
    pytest.param("endless_fresh", 800, "beyond what its manifest allows", id="pages-past-manifest"),
    pytest.param("endless_empty", 100, "empty pages in a row", id="empty-pages-for-ever"),
]


@pytest.mark.parametrize(("pathology", "delivered", "needle"), PAGE_WALK)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_page_walk_that_would_not_end_fails_its_job_only(
    tmp_path, pathology, delivered, needle, concurrency
):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology=pathology)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, page_concurrency=concurrency)
        bad_pages = len(api.pages_served(BAD))
    assert run.returncode == 1
    assert needle in run.stderr
    assert BAD in run.stderr.splitlines()[-1]
    assert_clean(run)
    bad = [r for r in run.records("tam_companies") if r["job_id"] == BAD]
    assert len(bad) == delivered
    assert bad_pages <= 12  # bounded: the manifest's 3 pages, the margin, the window
    # State never claims more than was delivered, nor a cursor that points back.
    partitions = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    (bad_state,) = [p for p in partitions if p["context"]["job_id"] == BAD]
    assert bad_state.get("rows_read", 0) <= delivered
    assert not bad_state.get("done")


def test_rerun_after_a_cycle_adds_no_row_under_a_new_rank(tmp_path):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology="cycle_to_first")}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        first = run_against(api, tmp_path)
        second = run_against(api, tmp_path, state=first.last_state)
    seen: dict[int, str] = {}
    ranks_of: dict[str, int] = {}
    for record in first.records("tam_companies") + second.records("tam_companies"):
        if record["job_id"] == BAD:
            assert seen.setdefault(record["rank"], record["domain"]) == record["domain"]
            assert ranks_of.setdefault(record["domain"], record["rank"]) == record["rank"]
    assert max(seen) == 300
    assert second.returncode == 1
    assert_clean(first)


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


def test_odd_values_become_safe_records(tmp_path):
    odd = HostileJob(
        rows=120,
        text="Acme\ud800 \x00Corp",
        row_values={"industries": ["A\x00", None, "\udfff"], "employee_count": True},
        body_extra={"progress_message": f"done for {API_KEY}", "error_message": API_KEY},
        manifest_pages=True,  # not a count
    )
    with HostileAPI({GOOD: HostileJob(), BAD: odd}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_clean(run)
    first = next(r for r in run.records("tam_companies") if r["job_id"] == BAD and r["rank"] == 1)
    assert first["name"] == "Acme\ufffd Corp"
    assert first["industries"] == ["A", "\ufffd"]
    assert first["employee_count"] is None
    (job,) = [r for r in run.records("jobs") if r["job_id"] == BAD]
    assert job["progress_message"] == "done for ***"
    assert job["error_message"] == "***"


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        pytest.param(API_KEY + "\r\nX-Evil: 1", "cannot have", id="crlf"),
        pytest.param(API_KEY + "é", "cannot have", id="non-latin-1"),
        pytest.param("of_a b", "cannot have", id="inner-space"),
    ],
)
def test_a_key_that_cannot_be_a_header_is_refused_without_echo(tmp_path, key, needle):
    jobs = {GOOD: HostileJob()}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, api_key=key)
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "Traceback" not in run.stderr
    assert key not in run.stderr
    assert API_KEY not in run.stderr + run.stdout
    assert served == 0


@pytest.mark.parametrize(
    ("api_url", "needle"),
    [
        pytest.param("{url}/api/v1/tam/build", "looks like an endpoint", id="endpoint-path"),
        pytest.param("{url}?region=eu", "without a query string", id="query"),
        pytest.param("{url}#top", "without a query string", id="fragment"),
    ],
)
def test_an_api_url_the_tap_cannot_use_is_refused(tmp_path, api_url, needle):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, api_url=api_url.format(url=api.url))
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "Traceback" not in run.stderr
    assert served == 0


BAD_STATES = [
    pytest.param([], "a JSON list, not an object", id="list"),
    pytest.param({"bookmarks": []}, "'bookmarks' is not an object", id="bookmarks-list"),
    pytest.param(
        {"bookmarks": {"tam_companies": []}}, "tam_companies is not an object", id="entry"
    ),
    pytest.param(
        {"bookmarks": {"tam_companies": {"partitions": {}}}}, "partitions is not a list", id="parts"
    ),
    pytest.param(
        {"bookmarks": {"tam_companies": {"partitions": [{"next_cursor": "page_0001"}]}}},
        "partitions[0] has no 'context' object",
        id="no-context",
    ),
    pytest.param(
        {
            "bookmarks": {
                "tam_companies": {
                    "partitions": [{"context": {"job_id": GOOD}, "rows_read": "many"}]
                }
            }
        },
        'partitions[0].rows_read is "many"',
        id="rows-read",
    ),
    pytest.param(
        {"bookmarks": {"jobs": {"partitions": [{"context": {"job_id": GOOD}, "done": "yes"}]}}},
        "bookmarks.jobs.partitions[0].done",
        id="done",
    ),
]


@pytest.mark.parametrize(("state", "needle"), BAD_STATES)
def test_a_state_of_the_wrong_shape_is_refused_with_a_way_out(tmp_path, state, needle):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, state=state)
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "meltano state clear" in run.stderr
    assert "Traceback" not in run.stderr
    assert served == 0


def test_a_state_cursor_the_api_does_not_know_is_named(tmp_path):
    state = {
        "bookmarks": {
            "tam_companies": {
                "partitions": [
                    {"context": {"job_id": BAD}, "next_cursor": "page_0099", "rows_read": 9900}
                ]
            }
        }
    }
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology="unknown_cursor")}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        api.jobs[BAD].pathology = None
        original = api.answer

        def answer(job_id: str, cursor: str | None):
            if job_id == BAD and cursor == "page_0099":
                return 404, {}, {"detail": "Not Found"}
            return original(job_id, cursor)

        api.answer = answer  # type: ignore[method-assign]
        run = run_against(api, tmp_path, state=state)
    assert run.returncode == 1
    assert "page 'page_0099'" in run.stderr
    assert "the job itself is fine" in run.stderr
    assert "Remove it from the config" not in run.stderr
    assert_clean(run)


# Bounded inputs and output nobody can forge ---------------------------------------


def answer_page(api: HostileAPI, index: int, reply) -> None:
    """Make page ``index`` of the bad job answer ``reply(status, headers, body)``."""
    original = api.answer

    def answer(job_id: str, cursor: str | None):
        sent = original(job_id, cursor)
        return reply(*sent) if job_id == BAD and page_number(cursor) == index else sent

    api.answer = answer  # type: ignore[method-assign]


def bad_records(run: TapRun) -> list[dict[str, Any]]:
    return [r for r in run.records("tam_companies") if r["job_id"] == BAD]


def test_a_gzip_bomb_is_given_up_at_the_bound_in_bounded_memory(tmp_path):
    # 1 MiB of gzip that inflates to 768 MiB, made while it is sent.
    bomb = Streamed(gzip_bomb(768 << 20))
    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, 1, lambda *_: (200, {}, bomb))
        run = run_against(api, tmp_path, prefix=MEASURED, page_concurrency=1, max_response_mib=2)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "larger than 2 MiB once decompressed" in run.stderr
    assert "'max_response_mib'" in run.stderr
    assert BAD in run.stderr.splitlines()[-2]
    assert_clean(run)
    assert [r["rank"] for r in bad_records(run)] == list(range(1, 101))
    peak_kib = int(run.stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])
    # Reading the whole body would hold 768 MiB; the tap itself needs about 100.
    assert peak_kib < 300 * 1024, f"peak {peak_kib} KiB"


def with_text(body: dict[str, Any], **texts: str) -> str:
    """The body as JSON, each string "<NAME>" replaced by the raw JSON text given."""
    raw = json.dumps(body)
    for name, text in texts.items():
        raw = raw.replace(f'"<{name}>"', text)
    return raw


def test_one_huge_integer_costs_that_value_not_the_page(tmp_path):
    huge = "9" * 5000

    def reply(status, headers, body):
        body["rows"][0] = {**body["rows"][0], "employee_count": "<HUGE>", "score_x": "<HUGE>"}
        return status, headers, with_text(body, HUGE=huge)

    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, 0, reply)  # the first page comes with the poll
        answer_page(api, 1, reply)  # the others are read as pages
        run = run_against(api, tmp_path, page_concurrency=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_clean(run)
    records = bad_records(run)
    assert [r["rank"] for r in records] == list(range(1, 301))
    for rank in (1, 101):
        assert records[rank - 1]["employee_count"] is None
        assert records[rank - 1]["_extra"] == {"score_x": None}
    assert records[1]["employee_count"] == 2
    assert "integer(s) of more than 4300 digits were read as null" in run.stderr
    assert f"Job {BAD}, page page_0001" in run.stderr


def test_the_key_never_reaches_a_record_wherever_the_server_puts_it(tmp_path):
    # The key as JSON can spell it: plainly, or with each letter escaped.
    escaped = '"' + "".join(f"\\u{ord(c):04x}" for c in API_KEY) + '"'

    def reply(status, headers, body):
        body["rows"][0] = {
            **body["rows"][0],
            "name": f"Acme {API_KEY}",
            "headquarters": "<ESCAPED>",
            API_KEY: "a field named after the key",
            "notes": {"deep": [f"x{API_KEY}y"]},
        }
        body["page_note"] = f"top level {API_KEY}"
        return status, headers, with_text(body, ESCAPED=escaped)

    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, 0, reply)
        answer_page(api, 2, reply)
        run = run_against(api, tmp_path, page_concurrency=3)
    assert API_KEY not in run.stdout + run.stderr
    assert_clean(run)
    records = bad_records(run)
    assert len(records) == 300
    for rank in (1, 201):
        first = records[rank - 1]
        assert first["name"] == "Acme ***"
        assert first["headquarters"] == "***"
        assert first["_extra"] == {
            "***": "a field named after the key",
            "notes": {"deep": ["x***y"]},
        }


def test_a_cursor_holding_the_key_fails_its_job_and_is_never_written(tmp_path):
    def reply(status, headers, body):
        return status, headers, {**body, "next_cursor": f"page_0002?k={API_KEY}"}

    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, 1, reply)
        run = run_against(api, tmp_path, page_concurrency=1)
        asked = [s.cursor for s in api.served if s.path.endswith(BAD)]
    assert run.returncode == 1
    assert "holds the API key" in run.stderr
    assert_clean(run)
    assert len(bad_records(run)) == 100
    assert all(API_KEY not in (cursor or "") for cursor in asked)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"next_cursor": "page_" + "9" * 5000}, "more than the 256", id="cursor"),
        pytest.param({"page": "page_0001" + "x" * 300}, "page name of 309", id="page-name"),
        pytest.param(
            {"rows": [{"name": f"C{i}", "domain": f"c{i}.x"} for i in range(10_001)]},
            "holds 10001 rows",
            id="rows",
        ),
    ],
)
@pytest.mark.parametrize("index", [0, 1])  # the first page comes with the poll
def test_a_page_beyond_a_page_bound_fails_its_job_only(tmp_path, change, needle, index):
    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, index, lambda status, headers, body: (status, headers, {**body, **change}))
        run = run_against(api, tmp_path, page_concurrency=1)
    assert run.returncode == 1, run.stderr[-3000:]
    assert needle in run.stderr
    assert BAD in run.stderr.splitlines()[-1]
    assert_clean(run)
    assert len(bad_records(run)) == 100 * index
    assert max(len(line) for line in run.stderr.splitlines()) < 2000


def test_api_text_cannot_forge_or_flood_a_log_line(tmp_path):
    forged = "2026-12-04 ERROR all jobs done"
    detail = f"gone\n{forged}\x1b[2J\u202e" + "x" * 100_000

    def reply(*_):
        return 404, {}, {"detail": detail}

    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, body_extra={"progress_message": detail})}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        answer_page(api, 1, reply)
        run = run_against(api, tmp_path, page_concurrency=1)
    assert run.returncode == 1
    assert_clean(run)
    lines = run.stderr.splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert "\x1b" not in run.stderr
    assert "\u202e" not in run.stderr
    assert f"gone\\x0a{forged}\\x1b[2J\\u202e" in run.stderr
    assert max(len(line) for line in lines) < 2000
