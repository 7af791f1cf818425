"""Bounds on API answers, the API key out of every value, and API text fit for a log line."""

from __future__ import annotations

import json
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from hostile import (
    BAD,
    GOOD,
    MEASURED,
    HostileAPI,
    HostileJob,
    Streamed,
    answer_page,
    assert_clean,
    bad_records,
    gzip_bomb,
    run_against,
    send_streamed,
    with_text,
)
from support import API_KEY

from tap_openfunnel import logs
from tap_openfunnel.bounds import (
    MAX_INTEGER_DIGITS,
    MAX_JOB_IDS,
    MAX_NESTING,
    MAX_STRING_CHARS,
    MIB,
    ResponseTooLargeError,
)
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.decoding import decode_object, decode_page_fields
from tap_openfunnel.exceptions import ApiError, ConfigurationError, MalformedPageError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.pagination import Page
from tap_openfunnel.responses import api_detail
from tap_openfunnel.settings import Settings


@pytest.fixture
def secret(monkeypatch):
    """The key installed as the process's secret, as the tap does at start."""
    monkeypatch.setattr(logs, "_SECRET_FORMS", logs.secret_forms(API_KEY))
    monkeypatch.setattr(logs, "_SECRET_IN_JSON", logs._json_spellings(API_KEY))


# Reading: the body is given up at the bound ------------------------------------------


class _Body(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body: Any = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        body = type(self).body
        if isinstance(body, Streamed):
            send_streamed(self, 200, body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve():
    servers: list[ThreadingHTTPServer] = []

    def start(body: Any) -> OpenFunnelClient:
        handler = type("Handler", (_Body,), {"body": body})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        # A short poll interval makes shutdown quick: it waits for one poll.
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(httpd)
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return OpenFunnelClient(api_url=url, api_key=API_KEY, timeout=30, max_bytes=MIB)

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_a_gzip_bomb_is_read_no_further_than_the_bound(serve):
    # 64 MiB once inflated, from about 64 KiB of gzip made while it is sent.
    client = serve(Streamed(gzip_bomb(64 * MIB)))
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLargeError, match=r"larger than 1 MiB once decompressed"):
            client.get_bytes("/page")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The bound, one read's worth past it, and their join: nothing like 64 MiB.
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br"])
def test_an_encoding_the_tap_did_not_ask_for_is_refused_unread(serve, encoding):
    # A brotli or zstd bomb would be inflated without a bound by older libraries.
    client = serve(Streamed(iter([b"\x00" * 1024] * 4), encoding=encoding))
    with pytest.raises(ApiError, match=f"Content-Encoding {encoding.replace(' ', '')}, which"):
        client.get("/page")


@pytest.mark.parametrize(
    ("size", "refused"),
    [pytest.param(MIB, False, id="at-the-bound"), pytest.param(MIB + 1, True, id="one-byte-more")],
)
def test_a_plain_body_is_bounded_to_the_byte(serve, size, refused):
    client = serve(b" " * (size - 2) + b"{}")
    if refused:
        with pytest.raises(ResponseTooLargeError, match="'max_response_mib'"):
            client.get("/page")
    else:
        assert client.get("/page") == {}


# Values beyond a bound cost that value ----------------------------------------------


def _page(row_text: str) -> bytes:
    return ('{"rows": [{"name": "A", "x": ' + row_text + '}], "next_cursor": "page_0001"}').encode()


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        pytest.param("9" * MAX_INTEGER_DIGITS, int("9" * MAX_INTEGER_DIGITS), id="int-at-bound"),
        pytest.param("9" * (MAX_INTEGER_DIGITS + 1), None, id="int-past-bound"),
        pytest.param("-" + "9" * (MAX_INTEGER_DIGITS + 1), None, id="negative-int-past-bound"),
        pytest.param('"' + "s" * MAX_STRING_CHARS + '"', "s" * MAX_STRING_CHARS, id="str-at-bound"),
        pytest.param('"' + "s" * (MAX_STRING_CHARS + 1) + '"', None, id="str-past-bound"),
    ],
)
def test_a_value_past_its_bound_is_null_and_the_page_kept(text, kept, caplog):
    for decode in (decode_object, decode_page_fields):
        got = decode(_page(text))
        body = got if isinstance(got, dict) else got.body
        assert body["rows"] == [{"name": "A", "x": kept}]
        assert body["next_cursor"] == "page_0001"
    assert ("were read as null" in caplog.text) is (kept is None)


def test_a_value_nested_too_deep_is_cut_at_the_bound():
    depth = 5000
    fields = decode_page_fields(_page("[" * depth + "1" + "]" * depth), "Job j, page p")
    (row,) = fields.body["rows"]
    assert row["name"] == "A"
    levels, value = 0, row["x"]
    while isinstance(value, list):
        levels, value = levels + 1, value[0]
    # x sits 3 levels down in the body ({rows: [{x: ...}]}); nothing below the bound.
    assert value is None
    assert levels + 3 == MAX_NESTING
    assert fields.body["next_cursor"] == "page_0001"


# The key out of every value -----------------------------------------------------------


def _spelled(text: str, *, upper: bool = False) -> str:
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(API_KEY, id="plain"),
        pytest.param(_spelled(API_KEY), id="escaped"),
        pytest.param(_spelled(API_KEY, upper=True), id="escaped-upper-hex"),
        pytest.param(API_KEY[:3] + _spelled(API_KEY[3:6]) + API_KEY[6:], id="partly-escaped"),
    ],
)
def test_the_key_is_hidden_in_every_value_however_json_spells_it(secret, spelling):
    raw = (
        '{"rows": [{"name": "x' + spelling + 'y", "' + spelling + '": ["' + spelling + '"]}],'
        ' "page": "p' + spelling + '"}'
    ).encode()
    assert logs.secret_in_json(raw)
    for decode in (decode_object, decode_page_fields):
        got = decode(raw)
        body = got if isinstance(got, dict) else got.body
        assert body["rows"] == [{"name": "x***y", "***": ["***"]}]
        assert body["page"] == "p***"


def test_text_without_the_key_is_not_mistaken_for_it(secret):
    near = '{"rows": [{"name": "' + _spelled(API_KEY[:-1]) + '", "n": "\\u00e9"}]}'
    assert not logs.secret_in_json(near.encode())
    assert not logs.secret_in_json(json.dumps({"rows": [{"name": API_KEY[1:]}]}).encode())


def test_a_cursor_holding_the_key_is_refused_not_followed(secret):
    fields = decode_page_fields(f'{{"rows": [], "next_cursor": "{API_KEY}"}}'.encode())
    with pytest.raises(MalformedPageError, match="holds the API key") as caught:
        Page.from_response(fields.body)
    assert API_KEY not in str(caught.value)


# Text fit for a log line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain words", "plain words", id="plain"),
        pytest.param("two\nlines\r", "two\\x0alines\\x0d", id="newlines"),
        pytest.param("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", id="ansi"),
        pytest.param("\x9b31m", "\\x9b31m", id="c1-csi"),
        pytest.param("a\u2028b\u202eevil", "a\\u2028b\\u202eevil", id="separators-overrides"),
        pytest.param("København", "København", id="letters-kept"),
        pytest.param(f"key {API_KEY}!", "key ***!", id="key"),
        pytest.param(42, "42", id="not-text"),
        pytest.param("x" * 250, "x" * 200 + "... (250 characters, cut)", id="cut"),
    ],
)
def test_shown_escapes_cuts_and_hides(secret, text, expected):
    assert logs.shown(text) == expected


def test_an_error_answer_is_quoted_escaped_and_cut():
    response = requests.Response()
    response.status_code = 404
    response._content = json.dumps(
        {"detail": "gone\n2026 ERROR forged\x1b[2J" + "x" * 9000}
    ).encode()
    detail = api_detail(response)
    assert detail.startswith("gone\\x0a2026 ERROR forged\\x1b[2J")
    assert "\n" not in detail
    assert "\x1b" not in detail
    assert len(detail) < 300


# How many ids one setting may name ---------------------------------------------------


@pytest.mark.parametrize(("count", "refused"), [(MAX_JOB_IDS, False), (MAX_JOB_IDS + 1, True)])
def test_too_many_job_ids_are_refused_with_the_bound(count, refused):
    ids = [f"00000000-0000-0000-0000-{index:012d}" for index in range(count)]
    config = {"api_key": API_KEY, "lookalike_job_ids": ids}
    if refused:
        with pytest.raises(ConfigurationError, match=f"more than the {MAX_JOB_IDS}"):
            Settings.from_config(config)
    else:
        assert len(Settings.from_config(config).job_ids(JobType.LOOKALIKE)) == count


def test_the_key_is_hidden_however_deep_the_decoder_went(secret):
    # msgspec decodes nearly 1,000 levels: the walk must not need a Python frame per level.
    depth = 950
    raw = ('{"rows": [{"x": ' + "[" * depth + f'"{API_KEY}"' + "]" * depth + "}]}").encode()
    for decode in (decode_object, decode_page_fields):
        got = decode(raw)
        value = (got if isinstance(got, dict) else got.body)["rows"][0]["x"]
        while isinstance(value, list):
            (value,) = value
        assert value == "***"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"rows": [1, {"name": "A"}]}, id="rows-not-objects-warning"),
        pytest.param({"rows": "oops"}, id="rows-not-a-list"),
        pytest.param({"rows": [], "next_cursor": 7}, id="cursor-not-text"),
    ],
)
def test_a_page_name_is_escaped_wherever_it_is_quoted(caplog, body):
    name = "page_0001\n2026-12-04 ERROR forged\x1b[2J"
    try:
        Page.from_response({**body, "page": name})
    except MalformedPageError as exc:
        said = str(exc)
    else:
        said = caplog.text
    assert "page_0001\\x0a2026-12-04 ERROR forged\\x1b[2J" in said
    assert "\x1b" not in said
    assert "\n2026-12-04 ERROR forged" not in said


@pytest.mark.parametrize(
    ("location", "named"),
    [
        pytest.param("http://evil\x1bc\x07.example/steal", "evil\\x1bc\\x07.example", id="ansi"),
        # urlsplit refuses an unclosed IPv6 bracket: no traceback, just no host named.
        pytest.param("http://evil\x1b[2J.example/", "a redirect to elsewhere", id="unsplittable"),
    ],
)
def test_a_redirect_target_is_quoted_escaped(location, named):
    response = requests.Response()
    response.status_code = 302
    response.headers["Location"] = location
    response._content = b""
    client = OpenFunnelClient(api_url="http://127.0.0.1:9", api_key=API_KEY)
    with pytest.raises(ApiError, match="redirect") as caught:
        client.validate_response(response, "/api/v1/tam/build/j")
    assert named in str(caught.value)
    assert "\x1b" not in str(caught.value)


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
