"""A small, deliberately pathological OpenFunnel on loopback, and the contract of a run on it.

It is not the sandbox: it serves completed TAM jobs only, and each job can be given a
pathology that a broken or hostile API might show. It refuses to serve for ever: past
``max_requests`` it answers 410, so a tap that loops shows up as a failed assertion,
not as a hung test.

The tests of each concern (client, pagination, records, bounds, settings, checkpoint)
run the real CLI with one sound job (``GOOD``, 250 rows) beside one pathological job
(``BAD``). Whatever the pathology, the run must end on its own, print no traceback and
never the key, emit no (job_id, rank) twice and no company under two ranks, and still
deliver the sound job whole (:func:`assert_clean`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from support import API_KEY, TapRun, run_command, tap_command, write_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PAGE_SIZE = 100
TAM_PATH = "/api/v1/tam/build/"

# Polls and retries short enough that a test against a pathological answer ends quickly.
FAST = {"poll_interval": 0.05, "max_poll_interval": 0.1, "max_retry_wait": 0.05}


def run_tap_against(
    api: HostileAPI,
    tmp_path: Path,
    *,
    state: dict[str, Any] | None = None,
    prefix: tuple[str, ...] = (),
    **settings: Any,
) -> TapRun:
    """Run the tap's CLI against ``api`` with FAST polls and ``settings``; its output parsed."""
    config = {"api_key": API_KEY, "api_url": api.url, **FAST, **settings}
    state_path = None if state is None else write_json(tmp_path / "state.json", state)
    command = [*prefix, *tap_command(write_json(tmp_path / "config.json", config), state_path)]
    return run_command(command, timeout=90)


def page_name(index: int) -> str:
    return f"page_{index:04d}"


def page_number(cursor: str | None) -> int:
    digits = (cursor or "page_0000").removeprefix("page_")
    return int(digits) if digits.isdigit() else -1


def gzip_bomb(inflated: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A gzip body that inflates to ``inflated`` bytes (a JSON object), made as it is sent.

    Never held whole: each MiB of zeros is compressed (to about 1 KiB) as it is needed.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(b'{"rows": [], "pad": "')
    zeros = b"0" * chunk
    for _ in range(inflated // chunk):
        yield packer.compress(zeros)
    yield packer.compress(b'"}') + packer.flush()


class Streamed:
    """A body sent as it is made, until the connection closes (no Content-Length)."""

    def __init__(self, chunks: Iterator[bytes], encoding: str = "gzip") -> None:
        self.chunks = chunks
        self.encoding = encoding
        self.sent = 0


def send_streamed(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Streamed,
    content_type: str | None = None,
) -> None:
    """Answer with ``body`` sent as it is generated, counting what went out, then hang up."""
    handler.send_response(status)
    if content_type is not None:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Encoding", body.encoding)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    for chunk in body.chunks:
        try:
            handler.wfile.write(chunk)
        except OSError:
            return  # the client stopped reading
        body.sent += len(chunk)


def company(job_id: str, index: int) -> dict[str, Any]:
    return {
        "name": f"Company {index}",
        "domain": f"c{index}.{job_id}.example",
        "employee_count": index,
        "industries": ["Software"],
    }


@dataclass
class HostileJob:
    """A completed job of ``rows`` rows, and what is wrong with it.

    Attributes:
        rows: Rows in the job.
        pathology: One of the names in ``HostileAPI.answer`` (None: a sound job).
        manifest_pages: Overrides ``manifest.pages`` (default: the real count).
        text: Replaces the name of the first row (odd strings).
        row_values: Extra values merged into the first row.
        body_extra: Extra top-level fields of every answer.
    """

    rows: int = 250
    pathology: str | None = None
    manifest_pages: Any = None
    text: str | None = None
    row_values: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Served:
    method: str
    path: str
    cursor: str | None
    status: int


class HostileAPI:
    """The server: ``with HostileAPI({...jobs...}, api_key=...) as api: api.url``."""

    def __init__(
        self, jobs: dict[str, HostileJob], *, api_key: str, max_requests: int = 1500
    ) -> None:
        self.jobs = jobs
        self.api_key = api_key
        self.max_requests = max_requests
        self.served: list[Served] = []
        self.lock = threading.Lock()
        self.attempts: dict[tuple[str, str | None], int] = {}
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # A short poll interval makes __exit__ quick: shutdown waits for one poll.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def pages_served(self, job_id: str) -> list[Served]:
        return [s for s in self.served if s.path.endswith(job_id) and s.status == 200]

    # What a poll of one job answers -----------------------------------------------

    def answer(  # noqa: C901, PLR0911, PLR0912 - one branch per pathology, read as a table
        self, job_id: str, cursor: str | None
    ) -> tuple[int, dict[str, str], Any]:
        job = self.jobs[job_id]
        pages = max(1, -(-job.rows // PAGE_SIZE))
        index = page_number(cursor)
        with self.lock:
            attempt = self.attempts.get((job_id, cursor), 0) + 1
            self.attempts[(job_id, cursor)] = attempt
        kind = job.pathology
        name = page_name(index)
        next_cursor = page_name(index + 1) if index + 1 < pages else None
        first = index * PAGE_SIZE
        rows = [company(job_id, i + 1) for i in range(first, min(first + PAGE_SIZE, job.rows))]
        headers: dict[str, str] = {}
        if (kind == "cycle_to_first" and index == pages - 1) or (
            kind == "self_loop_first" and index == 0
        ):
            next_cursor = page_name(0)
        elif kind == "old_page_fresh_cursor" and cursor == "fresh":
            name, rows, next_cursor = (
                page_name(0),
                [company(job_id, i + 1) for i in range(100)],
                None,
            )
        elif kind == "old_page_fresh_cursor" and index == pages - 1:
            next_cursor = "fresh"
        elif kind == "endless_fresh":
            rows = [company(job_id, first + i + 1) for i in range(PAGE_SIZE)]
            next_cursor = page_name(index + 1)
        elif kind == "endless_empty" and index >= 1:
            rows, next_cursor = [], page_name(index + 1)
        elif kind == "page_404" and index == 1:
            return 404, {}, {"detail": "Not Found"}
        elif kind == "retry_after_nan" and attempt <= 2:
            return 429, {"Retry-After": "nan"}, {"detail": "slow down"}
        elif kind == "retry_after_huge" and attempt <= 1:
            return 429, {"Retry-After": "1e400"}, {"details": {"retry_after_seconds": 1e308}}
        elif kind == "trickle" and index == 1:
            return 200, {"X-Trickle": "0.5"}, {"rows": rows, "page": name}
        elif kind == "rows_not_list" and index == 1:
            return 200, {}, {"status": "completed", "rows": "oops", "page": name}
        elif kind == "deep_nesting" and index == 1:
            # One value of one row nested 100,000 deep, as text (json.dumps cannot).
            rows[0] = {**rows[0], "tags": "DEEP"}
            body = {"status": "completed", "rows": rows, "page": name, "next_cursor": next_cursor}
            deep = "[" * 100_000 + '"x"' + "]" * 100_000
            return 200, {}, json.dumps(body).replace('"DEEP"', deep)
        elif kind == "html" and index == 1:
            return 200, {"Content-Type": "text/html"}, "<html>maintenance</html>"
        elif kind == "redirect" and index == 1:
            return 302, {"Location": "http://203.0.113.9/steal"}, {}
        if rows and (job.text is not None or job.row_values) and index == 0:
            rows[0] = {**rows[0], **job.row_values}
            if job.text is not None:
                rows[0]["name"] = job.text
        manifest = {
            "pages": pages if job.manifest_pages is None else job.manifest_pages,
            "page_size": PAGE_SIZE,
            "unique_count": job.rows,
            "partial": False,
            "credits_consumed": job.rows,
        }
        body = {
            "job_id": job_id,
            "status": "completed",
            "manifest": manifest,
            "error_message": None,
            "rows": rows,
            "page": name,
            "next_cursor": next_cursor,
            "count": len(rows),
            "processed": job.rows,
            "progress_message": "completed",
            **job.body_extra,
        }
        return 200, headers, body


class _Handler(BaseHTTPRequestHandler):
    api: HostileAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:
        self._send(405, {}, {"detail": "no submits here"})

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        cursor = parse_qs(split.query).get("cursor", [None])[0]
        api = self.api
        if len(api.served) >= api.max_requests:
            self._record(split.path, cursor, 410)
            self._send(410, {}, {"detail": "this fake refuses to serve for ever"})
            return
        if self.headers.get("X-API-Key") != api.api_key:
            self._record(split.path, cursor, 401)
            self._send(401, {}, {"detail": "bad key"})
            return
        if split.path == "/api/v1/credits/balance":
            self._record(split.path, cursor, 200)
            self._send(200, {}, {"total_credits": 10, "credits_used": 0, "credits_left": 10})
            return
        job_id = split.path.removeprefix(TAM_PATH)
        if not split.path.startswith(TAM_PATH) or job_id not in api.jobs:
            self._record(split.path, cursor, 404)
            self._send(404, {}, {"detail": "Not Found"})
            return
        status, headers, body = api.answer(job_id, cursor)
        self._record(split.path, cursor, status)
        self._send(status, headers, body)

    def _record(self, path: str, cursor: str | None, status: int) -> None:
        with self.api.lock:
            self.api.served.append(Served("GET", path, cursor, status))

    def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
        if isinstance(body, Streamed):
            self._stream(status, body)
            return
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        trickle = float(headers.pop("X-Trickle", "0"))
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(raw)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not trickle:
            self.wfile.write(raw)
            return
        # One byte at a time: each read is quick, the whole answer never is. Stops
        # after a minute whatever happens, and when the client hangs up.
        stop = time.monotonic() + 60
        for byte in raw:
            if time.monotonic() > stop:
                break
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                break
            time.sleep(trickle)

    def _stream(self, status: int, body: Streamed) -> None:
        send_streamed(self, status, body, content_type="application/json")


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


def answer_page(api: HostileAPI, index: int, reply) -> None:
    """Make page ``index`` of the bad job answer ``reply(status, headers, body)``."""
    original = api.answer

    def answer(job_id: str, cursor: str | None):
        sent = original(job_id, cursor)
        return reply(*sent) if job_id == BAD and page_number(cursor) == index else sent

    api.answer = answer  # type: ignore[method-assign]


def bad_records(run: TapRun) -> list[dict[str, Any]]:
    return [r for r in run.records("tam_companies") if r["job_id"] == BAD]


def with_text(body: dict[str, Any], **texts: str) -> str:
    """The body as JSON, each string "<NAME>" replaced by the raw JSON text given."""
    raw = json.dumps(body)
    for name, text in texts.items():
        raw = raw.replace(f'"<{name}>"', text)
    return raw
