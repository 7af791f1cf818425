"""HTTP/1.1 plumbing of the sandbox: parse requests, keep connections alive, write answers."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import sys
import threading
import time
import traceback
import typing as t
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from openfunnel_sandbox.faults import Answer, json_answer

LOGGER = logging.getLogger("openfunnel_sandbox")
STATS_PATH = "/_sandbox/stats"


@dataclass(frozen=True)
class Exchange:
    """One parsed request.

    Attributes:
        method: HTTP method.
        path: Path without the query string.
        target: Path and query string as sent (for redirects).
        query: Query parameters (last value wins).
        body: Raw body.
        api_key: The ``X-API-Key`` header, if any.
        connection: The client's address and port (one value per connection).
    """

    method: str
    path: str
    target: str
    query: dict[str, str]
    body: bytes
    api_key: str | None
    connection: str = ""


@dataclass(frozen=True)
class Outcome:
    """What to do with a request.

    Attributes:
        answer: What to send; None closes the connection without a word.
        fault: The fault or script entry applied, for the request record.
        cutoff: Send the headers and only half the body, then close.
        delay: Seconds to wait before sending.
    """

    answer: Answer | None
    fault: str | None = None
    cutoff: bool = False
    delay: float = 0.0


class App(t.Protocol):
    """What the transport needs from the sandbox."""

    def handle(self, exchange: Exchange) -> Outcome:
        """Decide the outcome of an API request."""

    def record(self, exchange: Exchange, status: int, fault: str | None) -> None:
        """Remember an API request."""

    def stats(self) -> dict[str, t.Any]:
        """Summarise activity for ``/_sandbox/stats``."""


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can close its idle keep-alive connections on stop.

    Args:
        address: ``(host, port)`` to bind.
        app: The sandbox answering requests.
    """

    daemon_threads = True
    # The default backlog of 5 drops connection attempts when 8+ reader threads open
    # connections at once, which shows up as one-second SYN retransmission stalls.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup, which can stall offline machines."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        """Add or remove a live connection."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_all(self) -> None:
        """Close the listening socket and every connection still open."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client closed it first
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:  # noqa: ANN401 - socketserver's signature
        """Log handler crashes loudly, but not clients that hung up (tests do, on purpose)."""
        del request
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            LOGGER.debug("Client %s hung up", client_address)
            return
        # socketserver calls this from inside its `except`, so the traceback is current.
        LOGGER.error("Sandbox handler crashed on %s:\n%s", client_address, traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenFunnel/1.0"
    # Headers and body are two writes; without TCP_NODELAY the body waits for the
    # client's delayed ACK, about 40 ms per answer on Linux.
    disable_nagle_algorithm = True

    def _httpd(self) -> SandboxHTTPServer:
        return t.cast("SandboxHTTPServer", self.server)

    def setup(self) -> None:
        super().setup()
        self._httpd().track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._httpd().track(self.connection, open_=False)

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002, ANN401 - base signature
        if LOGGER.isEnabledFor(logging.DEBUG):
            LOGGER.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        split = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._write(json_answer(400, {"detail": "Invalid Content-Length"}))
            return
        # The body is always read, so that closing the socket later sends a FIN, not a
        # reset that could hide an answer already written.
        body = self.rfile.read(length) if length > 0 else b""
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        exchange = Exchange(
            self.command,
            split.path,
            self.path,
            query,
            body,
            self.headers.get("X-API-Key"),
            connection="{}:{}".format(*self.client_address[:2]),
        )
        app = self._httpd().app
        if split.path == STATS_PATH:
            # The sandbox's own window: no auth, no faults, not recorded.
            if self.command == "GET":
                self._write(json_answer(200, app.stats()))
            else:
                self._write(json_answer(405, {"detail": "Method Not Allowed"}, (("Allow", "GET"),)))
            return
        outcome = app.handle(exchange)
        # Recorded before writing, so a client that has its answer also sees the record.
        app.record(exchange, outcome.answer.status if outcome.answer else 0, outcome.fault)
        if outcome.delay > 0:
            time.sleep(outcome.delay)
        if outcome.answer is None:
            self.close_connection = True
            return
        self._write(outcome.answer, cutoff=outcome.cutoff)

    def _write(self, answer: Answer, *, cutoff: bool = False) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body[: len(answer.body) // 2] if cutoff else answer.body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (read timeout tests do this on purpose).
            self.close_connection = True
            return
        if cutoff:
            self.close_connection = True
