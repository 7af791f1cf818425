"""Injected failures: which request gets which fault, and the bytes each fault sends."""

from __future__ import annotations

import email.utils
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field

FAULT_KINDS = ("429", "429_date", "429_body", "500", "502", "503", "drop", "cutoff", "slow")
SCRIPT_ENTRIES = ("ok", "429", "500_after_create", "drop_before_create", "drop_after_create")
SLEEP_ENTRY = "sleep_after_create:"


@dataclass(frozen=True)
class Faults:
    """What to break, and how often; the default breaks nothing.

    Attributes:
        rate: Probability that a matching request gets a random fault.
        kinds: Faults to draw from, uniformly.
        methods: Methods that random faults hit (submits are POST, so spared by default).
        path_prefix: Paths that random faults hit.
        retry_after: Seconds announced by the 429 faults.
        slow_seconds: Delay of the ``slow`` fault.
        seed: Seed of the fault draws.
        submit_script: One entry per submit request, in order, before random faults:
            ``ok``, ``429``, ``500_after_create``, ``drop_before_create``,
            ``drop_after_create`` or ``sleep_after_create:<seconds>``.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    methods: tuple[str, ...] = ("GET",)
    path_prefix: str = "/api/"
    retry_after: float = 0
    slow_seconds: float = 0.5
    seed: int = 0
    submit_script: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Reject unknown fault kinds and script entries early, not mid-test.

        Raises:
            ValueError: On an unknown kind or script entry, or a rate outside 0..1.
        """
        unknown = [kind for kind in self.kinds if kind not in FAULT_KINDS]
        unknown += [entry for entry in self.submit_script if not _valid_entry(entry)]
        if unknown or not 0.0 <= self.rate <= 1.0:
            msg = f"Invalid Faults: unknown {unknown} or rate {self.rate} outside 0..1"
            raise ValueError(msg)


def _valid_entry(entry: str) -> bool:
    if entry.startswith(SLEEP_ENTRY):
        try:
            return float(entry.removeprefix(SLEEP_ENTRY)) >= 0
        except ValueError:
            return False
    return entry in SCRIPT_ENTRIES


class FaultPlan:
    """Draws faults for one :class:`Faults` setting, thread-safely and reproducibly.

    Args:
        faults: The setting.
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)  # noqa: S311 - test noise, not crypto
        self._script_position = 0
        self._lock = threading.Lock()

    def next_script_entry(self) -> str | None:
        """Consume the next submit script entry.

        Returns:
            The entry, or None once the script is used up.
        """
        with self._lock:
            if self._script_position >= len(self.faults.submit_script):
                return None
            entry = self.faults.submit_script[self._script_position]
            self._script_position += 1
            return entry

    def draw(self, method: str, path: str) -> str | None:
        """Decide whether this request gets a random fault, and which.

        Args:
            method: HTTP method.
            path: Request path without the query string.

        Returns:
            The fault kind, or None.
        """
        faults = self.faults
        if faults.rate <= 0 or not faults.kinds:
            return None
        if method not in faults.methods or not path.startswith(faults.path_prefix):
            return None
        with self._lock:
            if self._random.random() >= faults.rate:
                return None
            return self._random.choice(faults.kinds)


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer, built before anything is written.

    Attributes:
        status: HTTP status.
        body: Encoded body.
        content_type: Content-Type header.
        headers: Further headers.
    """

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """Encode a JSON answer (UTF-8, non-ASCII kept as is, as FastAPI does).

    Args:
        status: HTTP status.
        payload: JSON-ready value.
        headers: Further headers.

    Returns:
        The answer.
    """
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Answer(status, body, "application/json", headers)


def rate_limited(kind: str, retry_after: float) -> Answer:
    """Build the 429 answer of one of the three 429 fault kinds.

    Args:
        kind: ``429`` (Retry-After seconds), ``429_date`` (Retry-After HTTP-date) or
            ``429_body`` (no header; ``details.retry_after_seconds`` in the body).
        retry_after: Seconds to announce.

    Returns:
        The answer.
    """
    if kind == "429_body":
        seconds: float = int(retry_after) if float(retry_after).is_integer() else retry_after
        payload = {
            "error_code": "RATE_LIMITED",
            "message": "Too many requests, slow down",
            "details": {"retry_after_seconds": seconds},
        }
        return json_answer(429, payload)
    if kind == "429_date":
        header = email.utils.formatdate(time.time() + retry_after, usegmt=True)
    else:
        # Rounded up: a client told to wait less than asked would come back too early.
        header = str(math.ceil(retry_after))
    return json_answer(429, {"detail": "Too Many Requests"}, (("Retry-After", header),))


def server_error(kind: str) -> Answer:
    """Build a 5xx answer; 502 and 503 come as proxy-style HTML/text to be awkward.

    Args:
        kind: ``500``, ``502`` or ``503``.

    Returns:
        The answer.
    """
    if kind == "502":
        html = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
        return Answer(502, html, "text/html")
    if kind == "503":
        return Answer(
            503, b"upstream connect error or disconnect/reset before headers", "text/plain"
        )
    return json_answer(500, {"detail": "Internal Server Error"})
