"""The HTTP edge: base URL, auth header, error classification and retries."""

from __future__ import annotations

import logging
import random
import threading
import typing as t
from urllib.parse import urlsplit

import backoff
import requests
from urllib3.exceptions import NewConnectionError

from tap_openfunnel import __version__
from tap_openfunnel.bounds import ACCEPTED_ENCODINGS, MIB, read_capped
from tap_openfunnel.deadlines import DeadlineAdapter, deadline
from tap_openfunnel.decoding import UndecodableBodyError, decode_object
from tap_openfunnel.exceptions import (
    AmbiguousSubmitError,
    ApiError,
    RetriesExhaustedError,
    UnreachableError,
)
from tap_openfunnel.families import settings_text
from tap_openfunnel.logs import shown
from tap_openfunnel.responses import fatal_error, parse_retry_after
from tap_openfunnel.retries import RetriableError, RetryPolicy

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

LOGGER = logging.getLogger("tap-openfunnel")

T = t.TypeVar("T")

_TOO_MANY_REQUESTS = 429
# An answer that started and did not finish: worth another try.
_CUT_SHORT = (
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class OpenFunnelClient:
    """Every request to the API goes through here.

    Retries are driven by the ``backoff`` library; what stays here is OpenFunnel's
    part: which failures are worth a retry, that a submit is retried only when no job
    can exist, Retry-After in its three forms, refusing redirects, and the messages.

    Args:
        api_url: Base URL (already checked by :func:`~tap_openfunnel.settings.check_api_url`).
        api_key: Sent as ``X-API-Key``; never logged.
        timeout: Read timeout per request, in seconds.
        max_bytes: The largest body read, once decompressed (``max_response_mib``).
        retry: The retry policy for idempotent requests.
        pool_size: Connections kept open (at least the page concurrency).
    """

    def __init__(  # noqa: PLR0913 - keyword-only, each a setting
        self,
        *,
        api_url: str,
        api_key: str,
        timeout: float = 60.0,
        max_bytes: int = 64 * MIB,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        self.api_url = api_url
        self._api_key = api_key
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._rng_lock = threading.Lock()
        self.session = self._new_session(pool_size)

    def _new_session(self, pool_size: int) -> requests.Session:
        session = requests.Session()
        adapter = DeadlineAdapter(pool_connections=2, pool_maxsize=max(pool_size, 2))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(
            {
                "X-API-Key": self._api_key,
                "Accept": "application/json",
                "Accept-Encoding": ACCEPTED_ENCODINGS,
                "User-Agent": f"tap-openfunnel/{__version__}",
            },
        )
        # requests would pick up ~/.netrc and proxy credentials from the environment;
        # neither belongs on these calls.
        session.trust_env = False
        return session

    # Public calls -----------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, t.Any]:
        """GET with retries (safe: reading never costs credits).

        Args:
            path: Path below the base URL.
            params: Query parameters.

        Returns:
            The decoded JSON object.
        """
        return self.get_decoded(path, params, lambda raw: decode_object(raw, f"GET {path}"))

    def get_bytes(self, path: str, params: Mapping[str, str] | None = None) -> bytes:
        """GET with retries, returning the body undecoded.

        For the page prefetch threads: they only move bytes, and the consumer decodes
        each body with :meth:`get_decoded` in its own thread, so no decoded object is
        allocated in a worker thread's malloc arena (see docs/benchmarks.md).

        Args:
            path: Path below the base URL.
            params: Query parameters.

        Returns:
            The body of a 2xx answer (not yet checked to be JSON).
        """
        return self._with_retries("GET", path, lambda: self._send("GET", path, params=params))

    def get_decoded(
        self,
        path: str,
        params: Mapping[str, str] | None,
        decode: Callable[[bytes], T],
        *,
        body: bytes | None = None,
    ) -> T:
        """GET and decode, with retries; a body that does not decode is fetched again.

        Args:
            path: Path below the base URL.
            params: Query parameters.
            decode: Turns a body into the result; raises ``UndecodableBodyError`` for a
                cut-off or non-object body, which counts as one retriable failure.
            body: A body already fetched (by :meth:`get_bytes`), decoded as the first
                attempt instead of a request.

        Returns:
            The decoded answer.
        """
        pending = body

        def attempt() -> T:
            nonlocal pending
            raw, pending = pending, None
            if raw is None:
                raw = self._send("GET", path, params=params)
            return _decoded(raw, decode)

        return self._with_retries("GET", path, attempt)

    def post_idempotent(self, path: str) -> dict[str, t.Any]:
        """POST a command that is safe to repeat (cancel, pause, resume), with retries.

        Args:
            path: Path below the base URL.

        Returns:
            The decoded JSON object.
        """
        return self._with_retries(
            "POST", path, lambda: _decoded(self._send("POST", path, body={}), decode_object)
        )

    def submit(self, path: str, body: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """POST a job submission, retrying only when no job can have been created.

        A submit spends credits and carries no idempotency key, so a retry after the
        request may have reached the server could start a second, separately billed job.
        Each attempt goes out on a connection of its own that has served nothing before:
        a pooled keep-alive connection that the server has meanwhile closed fails
        *after* sending, which would make a safe case ambiguous.

        Args:
            path: The submit endpoint.
            body: The JSON body.

        Returns:
            The decoded JSON object (with ``job_id``).

        Raises:
            AmbiguousSubmitError: The request may have created a job; not retried.
        """

        def attempt() -> dict[str, t.Any]:
            with self._new_session(1) as session:
                try:
                    raw = self._send("POST", path, body=body, session=session)
                    return _decoded(raw, decode_object)
                except RetriableError as exc:
                    if exc.status == _TOO_MANY_REQUESTS or not exc.sent:
                        raise
                    what = f"HTTP {exc.status}" if exc.status else exc.reason
                    msg = (
                        f"Submitting to {path} failed with {what} after the request may "
                        "have reached OpenFunnel, so a job may have been created (and may "
                        "spend credits). The tap does not retry a submit that might have "
                        "landed. Check your OpenFunnel jobs; if one was created, put its "
                        f"job_id in {settings_text('ids', ' or ')} to extract it "
                        "without a new submit. Otherwise run the tap again."
                    )
                    raise AmbiguousSubmitError(msg, status=exc.status, path=path) from None

        return self._with_retries("POST", path, attempt)

    # Internals --------------------------------------------------------------------

    def _with_retries(
        self,
        method: str,
        path: str,
        attempt: Callable[[], T],
    ) -> T:
        retries = self.retry.max_retries

        def log_retry(details: t.Any) -> None:  # noqa: ANN401 - backoff's details dict
            exc: RetriableError = details["exception"]
            LOGGER.warning(
                "%s %s: %s; retry %d of %d in %.1f s.",
                method,
                path,
                exc.reason,
                details["tries"],
                retries,
                details["wait"],
            )

        with self._rng_lock:
            rng = random.Random(self._rng.random())  # noqa: S311 - jitter
        retrying = backoff.on_exception(
            lambda: self.retry.waits(rng),
            RetriableError,
            max_tries=retries + 1,
            # The connection test's policy: no connection at all is an answer.
            giveup=lambda exc: not exc.sent and not self.retry.retry_unreachable,
            jitter=None,
            on_backoff=log_retry,
            logger=None,
        )(attempt)
        try:
            return retrying()
        except RetriableError as exc:
            if not exc.sent and not self.retry.retry_unreachable:
                msg = (
                    f"{method} {path}: could not connect to {self.api_url}: {exc.reason}. "
                    "Check 'api_url' and that the machine can reach it (DNS, firewall, proxy)."
                )
                raise UnreachableError(msg, path=path) from None
            last = f"HTTP {exc.status}" if exc.status else exc.reason
            cause = (
                "The API or the network is having trouble; run the tap again later."
                if exc.sent
                else f"No connection to {self.api_url} could be made: check 'api_url' and "
                "that this machine can reach it (DNS, firewall, proxy), or run again later."
            )
            msg = (
                f"{method} {path} still failed after {retries} retries (last: {last}). "
                f"{cause} Raise 'max_retries' or 'max_retry_wait' to ride out longer outages."
            )
            raise RetriesExhaustedError(msg, status=exc.status, path=path) from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, t.Any] | None = None,
        session: requests.Session | None = None,
    ) -> bytes:
        url = f"{self.api_url}{path}"
        # request_timeout bounds the whole request (connect, headers, whole body), not
        # only each socket read: a trickled answer cannot hold the run. The body is
        # streamed, and read no further than max_bytes once decompressed.
        with deadline(self.timeout) as limit:
            try:
                response = (session or self.session).request(
                    method,
                    url,
                    params=params,
                    json=body,
                    timeout=(min(self.timeout, 30.0), self.timeout),
                    # A redirect would carry X-API-Key to wherever it points: requests
                    # strips only the Authorization header on cross-host redirects.
                    allow_redirects=False,
                    stream=True,
                )
                read_capped(response, self.max_bytes, path)
            except (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError) as exc:
                # Both fail before a request line is written.
                raise RetriableError(type(exc).__name__, sent=False) from None
            except requests.exceptions.RequestException as exc:
                if limit.expired:
                    reason = f"no complete answer within request_timeout ({self.timeout:g} s)"
                    raise RetriableError(reason) from None
                if isinstance(exc, requests.exceptions.ConnectionError):
                    raise RetriableError(_describe(exc), sent=not _never_sent(exc)) from None
                if isinstance(exc, _CUT_SHORT):
                    raise RetriableError(type(exc).__name__) from None
                # Anything else cannot be fixed by trying again. Its text may quote
                # the request's headers: name the kind of failure only.
                msg = (
                    f"{method} {path} could not be completed ({type(exc).__name__}). "
                    "Check 'api_url' and the network between the tap and the API."
                )
                raise ApiError(msg, path=path) from None
        return self.validate_response(response, path)

    def validate_response(self, response: requests.Response, path: str) -> bytes:
        """Classify an answer by status: return its body, raise retriable or fatal errors.

        A 2xx body that is cut off or not JSON is caught where it is decoded (see
        :meth:`get_decoded`), and is retriable too.

        Args:
            response: The HTTP answer.
            path: Request path, for messages.

        Returns:
            The body of a 2xx answer.

        Raises:
            RetriableError: 429 or 5xx.
            ApiError: A redirect.
        """
        status = response.status_code
        if status == _TOO_MANY_REQUESTS or status >= 500:  # noqa: PLR2004
            msg = f"HTTP {status}"
            raise RetriableError(
                msg,
                status=status,
                retry_after=parse_retry_after(response),
            )
        if 300 <= status < 400:  # noqa: PLR2004
            location = shown(_host_of(response.headers.get("Location", "")), 80) or "elsewhere"
            msg = (
                f"{path} answered HTTP {status}, a redirect to {location}. The tap does not "
                "follow redirects, so the API key is never sent to another address. Set "
                "'api_url' to the address the API really answers on."
            )
            raise ApiError(msg, status=status, path=path)
        if status >= 400:  # noqa: PLR2004
            raise fatal_error(response, path)
        return response.content


def _decoded(raw: bytes, decode: Callable[[bytes], T]) -> T:
    try:
        return decode(raw)
    except UndecodableBodyError as exc:
        # A body cut short by the server, or an HTML error page from a proxy.
        msg = f"2xx with {exc.reason}"
        raise RetriableError(msg) from None


def _host_of(location: str) -> str:
    # The server's header: "http://[x" is refused by urlsplit (an unclosed IPv6 bracket).
    try:
        return urlsplit(location).netloc
    except ValueError:
        return ""


def _describe(exc: requests.exceptions.ConnectionError) -> str:
    cause = exc.args[0] if exc.args else exc
    reason = getattr(cause, "reason", cause)
    # The OS's own words ("Connection refused", "Name or service not known").
    detail = getattr(reason.__cause__, "strerror", None) if reason is not None else None
    name = type(reason).__name__
    return f"connection error ({name}: {detail})" if detail else f"connection error ({name})"


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection failed before the request could be sent (refused, DNS).

    urllib3 raises NewConnectionError (and its subclass NameResolutionError) only while
    opening a connection; a reset or a remote close may come after the request went out.
    """
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError)
