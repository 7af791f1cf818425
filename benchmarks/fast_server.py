"""A fake OpenFunnel that answers from memory, in a process of its own.

The bundled sandbox renders every page per request (rows generated, JSON encoded) in
the benchmark's own process; against it, a client's prefetch hides the server's time.
This server renders every answer once, before it serves, by asking the sandbox for it,
then serves the stored bytes: what a client measures against it is its own cost.

Started by the benchmark as ``python benchmarks/fast_server.py --rows 50000 --rows 0``;
it prints one JSON line, ``{"url": ..., "jobs": [job ids, one per --rows]}``, once it
serves, and stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import requests
from harness import API_KEY, HERE, PAGE_SIZE, TAM_PATH
from typing_extensions import Self

from openfunnel_sandbox import FakeOpenFunnel, JobSpec

if t.TYPE_CHECKING:
    from collections.abc import Sequence

BALANCE_PATH = "/api/v1/credits/balance"
NOT_FOUND = b'{"detail":"Not Found"}'
UNAUTHORIZED = b'{"detail":"Invalid API key"}'


def render(rows: Sequence[int]) -> tuple[dict[tuple[str, str], bytes], list[str]]:
    """Every answer the tap asks for, by (path, cursor), from the sandbox; and the job ids.

    Args:
        rows: Rows of each completed TAM job to create.

    Returns:
        The stored answers, and the job ids in the order of ``rows``.
    """
    answers: dict[tuple[str, str], bytes] = {}
    with FakeOpenFunnel(api_keys=(API_KEY,), page_size=PAGE_SIZE) as sandbox:
        jobs = [sandbox.add_job(JobSpec(kind="tam", rows=count)) for count in rows]
        session = requests.Session()
        session.headers["X-API-Key"] = API_KEY
        answers[BALANCE_PATH, ""] = session.get(sandbox.url + BALANCE_PATH, timeout=60).content
        for job_id in jobs:
            path = f"{TAM_PATH}/{job_id}"
            cursor = ""
            while True:
                answer = session.get(
                    sandbox.url + path, params={"cursor": cursor} if cursor else None, timeout=60
                )
                answer.raise_for_status()
                answers[path, cursor] = answer.content
                if not cursor:
                    answers[path, "page_0000"] = answer.content
                cursor = answer.json().get("next_cursor") or ""
                if not cursor:
                    break
    return answers, jobs


def handler_for(answers: dict[tuple[str, str], bytes]) -> type[BaseHTTPRequestHandler]:
    """A request handler serving ``answers`` (GET only, the API key checked)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the API does
        # Headers and body are separate writes: without this, each answer's body would
        # wait for the client's delayed ACK (tens of milliseconds).
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            cursor = dict(parse_qsl(split.query)).get("cursor", "")
            if self.headers.get("X-API-Key") != API_KEY:
                self.send(401, UNAUTHORIZED)
                return
            body = answers.get((split.path, cursor))
            self.send(200 if body is not None else 404, body or NOT_FOUND)

        def send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            # One write for headers and body (end_headers would send the headers alone).
            self._headers_buffer.append(b"\r\n")
            self.wfile.write(b"".join(self._headers_buffer) + body)
            self._headers_buffer = []

        def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002, ANN401
            del format, args  # quiet: the benchmark reads stdout

    return Handler


class FastServer:
    """The server process, seen from the benchmark: ``url`` and ``jobs``; a context manager.

    Args:
        rows: Rows of each completed TAM job it serves.
    """

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = list(rows)
        self.url = ""
        self.jobs: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        """Start the server and wait until it serves.

        Returns:
            The server.

        Raises:
            RuntimeError: If it did not start.
        """
        command = [sys.executable, str(HERE / "fast_server.py")]
        command += [f"--rows={count}" for count in self.rows]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdout is not None  # noqa: S101 - piped above
        ready = json.loads(self._process.stdout.readline() or b"null")
        if not ready:
            self.__exit__()
            msg = "the fast server did not start"
            raise RuntimeError(msg)
        self.url, self.jobs = ready["url"], ready["jobs"]
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the server (it ends when its stdin closes)."""
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            self._process.wait(timeout=30)
            self._process = None


def main(argv: Sequence[str] | None = None) -> int:
    """Render, serve, and stop when stdin closes.

    Args:
        argv: Command line arguments.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    answers, jobs = render(args.rows)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(answers))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    sys.stdout.write(json.dumps({"url": url, "jobs": jobs}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the benchmark closes it
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
