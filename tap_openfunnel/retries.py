"""What is worth another try, and how long to wait before it (backoff drives the loop)."""

from __future__ import annotations

import math
import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:
    import random
    from collections.abc import Generator


class RetriableError(Exception):
    """A failure worth another try: 429, 5xx, a dropped connection or a cut-off body.

    Args:
        reason: Short description for logs (status or exception name).
        status: HTTP status, when an answer arrived.
        retry_after: Seconds the server asked us to wait, if it said.
        sent: False only when the request surely never reached the server.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.sent = sent


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up on one request.

    Attributes:
        max_retries: Retries after the first attempt.
        max_wait: The longest single wait between attempts, in seconds.
        base_wait: The first backoff step, doubled each retry (with full jitter).
        retry_unreachable: Retry when no connection could be opened (refused, unknown
            host, connect timeout). A sync rides out a network blip; the connection
            test answers at once, since "nothing is there" is its answer.
    """

    max_retries: int = 8
    max_wait: float = 120.0
    base_wait: float = 1.0
    retry_unreachable: bool = True

    def wait_for(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based).

        Args:
            attempt: Which retry this is.
            retry_after: The server's own hint, which wins when it is a finite number.
            rng: Source of jitter.

        Returns:
            The wait, never above ``max_wait``.
        """
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.max_wait)
        ceiling = min(self.base_wait * (2 ** min(attempt - 1, 60)), self.max_wait)
        # Full jitter: many taps retrying at once do not hit the API in lockstep.
        return rng.uniform(ceiling / 2, ceiling)

    def waits(self, rng: random.Random) -> Generator[float, RetriableError | None, None]:
        """A ``backoff`` wait generator: it is sent each failure and yields the next wait.

        Args:
            rng: Source of jitter.

        Yields:
            Seconds to wait before each retry.
        """
        failure = yield 0.0  # backoff primes the generator with send(None)
        attempt = 0
        while True:
            attempt += 1
            hint = failure.retry_after if failure is not None else None
            failure = yield self.wait_for(attempt, hint, rng)
