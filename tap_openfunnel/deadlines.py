"""Whole-request deadlines: a watchdog that shuts a connection whose answer is late.

A socket timeout bounds each read, not the request: a server that trickles one byte
every half second keeps a request with a 2 s timeout alive for ever. Every request the
tap sends registers its socket with the watchdog for the time it is allowed (connect,
headers and the whole body); when that time is up the watchdog shuts the socket down,
the blocked read returns at once, and the request fails as a retriable timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
import typing as t

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tap_openfunnel import signals

if t.TYPE_CHECKING:
    from collections.abc import Iterator

_current = threading.local()


class Deadline:
    """The time one request may take; the sockets it uses are shut down when it is up."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self.finished = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        """Add a socket the request is using."""
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            late = self.expired
        if late:
            _shut(sock)

    def expire(self) -> None:
        """Called by the watchdog when the time is up."""
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        """The request is over: its sockets may go back to the pool untouched."""
        with self._lock:
            self.finished = True
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that expires deadlines in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="request-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is deadline:
                # Only a deadline due before all the others changes when the watchdog
                # must wake up. Requests share one timeout, so that is rare: waking the
                # thread for every request cost a thread switch per request.
                self._cond.notify()

    def _run(self) -> None:
        # SIGINT/SIGTERM go to the main thread, where output writes can hold them back.
        signals.keep_from_this_thread()
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                at, _, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Bound the requests sent from this thread inside the block to ``seconds`` in all.

    Args:
        seconds: The time allowed, connect to last byte.

    Yields:
        The deadline; ``expired`` tells whether it cut the request short.
    """
    limit = Deadline(seconds)
    _WATCHDOG.add(limit)
    _current.deadline = limit
    try:
        yield limit
    finally:
        _current.deadline = None
        limit.finish()


class _Watched:
    """Registers the connection's socket with the deadline of the request using it."""

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch(self.sock)

    def request(self, *args: t.Any, **kwargs: t.Any) -> None:  # noqa: ANN401 - urllib3's signature
        # A kept-alive connection is already connected: watch its socket now.
        _watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


def _watch(sock: socket.socket | None) -> None:
    limit: Deadline | None = getattr(_current, "deadline", None)
    if limit is not None:
        limit.watch(sock)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections obey :func:`deadline`."""

    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:  # noqa: ANN401 - requests' signature
        """Create the pool manager with watched connection classes."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }
