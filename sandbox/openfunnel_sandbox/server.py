"""The fake OpenFunnel server: its public controls, and faults in front of the endpoints."""

from __future__ import annotations

import ipaddress
import threading
import time
import typing as t
from dataclasses import dataclass
from http import HTTPStatus

from openfunnel_sandbox.endpoints import SUBMIT_PATHS, Endpoints
from openfunnel_sandbox.faults import (
    SLEEP_ENTRY,
    FaultPlan,
    Faults,
    json_answer,
    rate_limited,
    server_error,
)
from openfunnel_sandbox.lifecycle import JobSpec
from openfunnel_sandbox.store import JobStore
from openfunnel_sandbox.transport import Exchange, Outcome, SandboxHTTPServer

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from typing_extensions import Self


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the server saw and answered it.

    Attributes:
        method: HTTP method.
        path: Path without the query string.
        query: Query parameters (last value wins).
        status: Status sent, or 0 when the connection was dropped without an answer.
        fault: The injected fault or submit script entry, if any.
        connection: The client's address and port: requests with the same value came
            on the same (keep-alive) connection.
    """

    method: str
    path: str
    query: dict[str, str]
    status: int
    fault: str | None
    connection: str = ""


class SandboxNotStartedError(Exception):
    """The server was asked for its URL before ``start()``."""


class FakeOpenFunnel:
    """A faithful, controllable stand-in for the OpenFunnel TAM and bulk lookalike APIs.

    Args:
        api_keys: Keys accepted in ``X-API-Key``.
        latency: Seconds from an API request's arrival to its answer. A read (GET) is
            worked out first and answered when the time is up, so its own work is part
            of the latency, as a remote API's is; a write waits first and then acts, so
            a client that gives up during the latency has changed nothing.
        page_size: Rows per page for jobs whose spec does not set one.
        credits_total: The account's credit allowance.
        seed: Seed of job ids (and nothing else: rows derive from job ids). None, the
            default, draws one, so a restarted server never hands out an id that an
            earlier one did (and that a tap's state may already mark as read); tests
            that want the same ids every run pass a seed.
        host: Loopback address to bind.
        port: Port to bind; 0 picks a free one.
        cancel_seconds: How long a cancelled job stays ``cancelling``.
        clock: Monotonic clock driving every job (injectable for tests).
        max_requests: Past this many API requests every answer is 410, so that a client
            that loops fails instead of running for ever (None: no limit).

    Raises:
        ValueError: If ``host`` is not a loopback address.
    """

    def __init__(  # noqa: PLR0913 - each knob is a documented part of the sandbox
        self,
        *,
        api_keys: tuple[str, ...] = ("of_test_key",),
        latency: float = 0.0,
        page_size: int = 100,
        credits_total: float = 1_000_000.0,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cancel_seconds: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        max_requests: int | None = None,
    ) -> None:
        if host != "localhost" and not _is_loopback(host):
            msg = f"The sandbox only binds loopback addresses, not {host!r}"
            raise ValueError(msg)
        self.api_keys = tuple(api_keys)
        self.latency = latency
        self.page_size = page_size
        self.credits_total = float(credits_total)
        self.host = host
        self.port = port
        self.cancel_seconds = cancel_seconds
        self.redirect_to: str | None = None
        self.max_requests = max_requests
        self.submit_defaults: dict[str, JobSpec] = {
            "tam": JobSpec(kind="tam"),
            "lookalike": JobSpec(kind="lookalike"),
        }
        self.requests: list[RequestRecord] = []
        self._requests_lock = threading.Lock()
        # Requests being answered now, and the most at once (reset_peak_in_flight).
        self.in_flight = 0
        self.peak_in_flight = 0
        self._plan = FaultPlan(Faults())
        self._store = JobStore(seed=seed, clock=clock)
        self._endpoints = Endpoints(self._store, self)
        self._httpd: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Bind the port and serve in a daemon thread.

        Returns:
            The server itself, for chaining.
        """
        if self._httpd is None:
            self._httpd = SandboxHTTPServer((self.host, self.port), self)
            self.port = self._httpd.server_address[1]
            # A short poll interval makes stop() quick: shutdown waits for one poll.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-openfunnel",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open keep-alive connections and free the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        """Start the server for a ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server at the end of a ``with`` block."""
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``.

        Raises:
            SandboxNotStartedError: Before ``start()``.
        """
        if self._httpd is None:
            msg = "FakeOpenFunnel has no URL until start() is called"
            raise SandboxNotStartedError(msg)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------ test controls
    @property
    def faults(self) -> Faults:
        """The fault setting; assigning one restarts its seeded draws and its script."""
        return self._plan.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._plan = FaultPlan(faults)

    def add_job(self, spec: JobSpec) -> str:
        """Create a job that exists before the tap runs, visible to every key.

        Args:
            spec: How the job behaves.

        Returns:
            Its job id.
        """
        return self._store.create(spec, owner=None, page_size=self.page_size).job_id

    def submit_count(self, kind: str) -> int:
        """Count jobs created by POST submits of one family.

        Args:
            kind: ``"tam"`` or ``"lookalike"``.

        Returns:
            The number of jobs.
        """
        return self._store.submit_counts()[kind]

    def request_count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Count recorded API requests, optionally by method and path prefix.

        Args:
            method: Only this method.
            path_prefix: Only paths starting with this.

        Returns:
            The number of requests.
        """
        with self._requests_lock:
            records = list(self.requests)
        return sum(
            1
            for record in records
            if (method is None or record.method == method)
            and (path_prefix is None or record.path.startswith(path_prefix))
        )

    def job_status(self, job_id: str) -> str:
        """Return a job's status now (KeyError if unknown)."""
        return self._store.state(job_id).status

    def job_delivered(self, job_id: str) -> int:
        """Return the rows a job has delivered so far (KeyError if unknown)."""
        return self._store.state(job_id).delivered

    @property
    def credits_used(self) -> float:
        """Credits billed so far: 1 per row of each job that reached a terminal status."""
        return self._store.credits_used()

    def stats(self) -> dict[str, t.Any]:
        """Summarise submits, requests and credits (served at ``/_sandbox/stats``).

        Returns:
            The summary.
        """
        with self._requests_lock:
            count = len(self.requests)
        submits = self._store.submit_counts()
        return {"submits": submits, "requests": count, "credits_used": self.credits_used}

    def reset_peak_in_flight(self) -> None:
        """Start counting the most requests answered at once afresh."""
        with self._requests_lock:
            self.peak_in_flight = self.in_flight

    # ------------------------------------------------------------ request handling
    def handle(self, exchange: Exchange) -> Outcome:
        """Answer one API request, counting the requests being answered at once.

        Args:
            exchange: The parsed request.

        Returns:
            What to send, and how.
        """
        with self._requests_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self._handle(exchange)
        finally:
            with self._requests_lock:
                self.in_flight -= 1

    def _handle(self, exchange: Exchange) -> Outcome:
        """Answer one API request, faults included.

        Order: redirect, submit script or random fault, then routing (which checks the
        key). Faults come before auth, as a proxy in front of the API would. A write
        waits out the latency before all of that; a read is answered once the latency
        has passed since it arrived, its work included.

        Args:
            exchange: The parsed request.

        Returns:
            What to send, and how.
        """
        if self.max_requests is not None and len(self.requests) >= self.max_requests:
            return Outcome(
                json_answer(410, {"detail": "The sandbox refuses to serve for ever."}),
                fault="max_requests",
            )
        latency = self.latency  # one setting for the whole request
        if latency <= 0:
            return self._answer(exchange)
        if exchange.method != "GET":
            time.sleep(latency)
            return self._answer(exchange)
        due = time.monotonic() + latency
        outcome = self._answer(exchange)
        time.sleep(max(0.0, due - time.monotonic()))
        return outcome

    def _answer(self, exchange: Exchange) -> Outcome:
        """:meth:`handle` without the latency."""
        if self.redirect_to is not None and exchange.path.startswith("/api/"):
            location = self.redirect_to.rstrip("/") + exchange.target
            return Outcome(
                json_answer(307, {"detail": "Temporary Redirect"}, (("Location", location),))
            )
        is_submit = exchange.method == "POST" and exchange.path in SUBMIT_PATHS
        plan = self._plan  # one setting for the whole request, even if a test swaps it
        entry = plan.next_script_entry() if is_submit else None
        # The decision is made before the request has any effect; only the explicit
        # *_after_create script entries act after the job exists.
        fault = plan.draw(exchange.method, exchange.path) if entry is None else None
        early = _early_fault(plan.faults, entry, fault)
        if early is not None:
            return early
        answer = self._endpoints.route(exchange)
        created = is_submit and answer.status == HTTPStatus.OK
        if entry == "500_after_create" and created:
            return Outcome(server_error("500"), fault=entry)
        if entry == "drop_after_create":
            return Outcome(None, fault=entry)
        if entry is not None and entry.startswith(SLEEP_ENTRY):
            return Outcome(answer, fault=entry, delay=float(entry.removeprefix(SLEEP_ENTRY)))
        return Outcome(answer, fault=fault, cutoff=fault == "cutoff")

    def record(self, exchange: Exchange, status: int, fault: str | None) -> None:
        """Append a request record (called before the answer is written)."""
        with self._requests_lock:
            self.requests.append(
                RequestRecord(
                    exchange.method,
                    exchange.path,
                    exchange.query,
                    status,
                    fault,
                    exchange.connection,
                )
            )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _early_fault(faults: Faults, entry: str | None, fault: str | None) -> Outcome | None:
    """Answer the faults that stop a request before it has any effect."""
    if entry == "429":
        return Outcome(rate_limited("429", faults.retry_after), fault=entry)
    if entry == "drop_before_create":
        return Outcome(None, fault=entry)
    if fault in ("429", "429_date", "429_body"):
        return Outcome(rate_limited(fault, faults.retry_after), fault=fault)
    if fault in ("500", "502", "503"):
        return Outcome(server_error(fault), fault=fault)
    if fault == "drop":
        return Outcome(None, fault=fault)
    if fault == "slow":
        time.sleep(faults.slow_seconds)
    return None
