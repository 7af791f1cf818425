"""The job API: the HTTP verbs of every job family, and nothing about state or streams."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from urllib.parse import quote

from tap_openfunnel.bounds import MIB
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.decoding import decode_object, decode_page_fields
from tap_openfunnel.exceptions import ApiError
from tap_openfunnel.families import FAMILIES
from tap_openfunnel.job_ids import job_id_problem
from tap_openfunnel.pagination import Page
from tap_openfunnel.retries import RetryPolicy

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from tap_openfunnel.jobs import JobType
    from tap_openfunnel.settings import Settings

BALANCE_PATH = "/api/v1/credits/balance"
# A connection check answers within seconds: a short read timeout, and few, short
# retries of throttling or 5xx (a refused connection or an unknown host is not retried).
CHECK_TIMEOUT = 10.0
CHECK_RETRIES = 2
CHECK_MAX_WAIT = 3.0

# The manifest fields of a finished job the tap reads (the jobs stream has a column for
# each; the others are kept whole in its manifest column).
MANIFEST_FIELDS = (
    "pages",
    "page_size",
    "unique_count",
    "count",
    "partial",
    "degraded",
    "ranked",
    "stop_reason",
    "credits_consumed",
    "derived_query",
    "resolved_seed_domains",
    "unresolved_seed_domains",
    "rerank_degraded",
)
# How far a running job has got, as its poll answer says.
PROGRESS_FIELDS = ("processed", "progress_message", "bands_done", "bands_total")
# Every top-level field of a poll answer the tap reads (§3.2, §4.2); others are unknown.
POLL_FIELDS = frozenset(
    {
        "job_id",
        "status",
        "manifest",
        "error_message",
        "rows",
        "page",
        "next_cursor",
        "count",
        "degraded",
        *PROGRESS_FIELDS,
    },
)


@dataclass(frozen=True)
class Endpoints:
    """Where one job family lives: submit at ``base``, poll and commands below it."""

    base: str

    def job(self, job_id: str) -> str:
        """The poll path of one job: ``base`` and one segment, the id.

        Ids are checked where they enter (config, submit answer, state); this refuses
        any that got past, and escapes the segment all the same, so no id can make the
        path name another endpoint.

        Raises:
            ApiError: The id is not one (nothing is requested).
        """
        problem = job_id_problem(job_id)
        if problem is not None:
            msg = f"The tap refused to request job {problem}; nothing was sent."
            raise ApiError(msg)
        return f"{self.base}/{quote(job_id, safe='')}"

    def command(self, job_id: str, command: str) -> str:
        """The path of a command (``cancel``, ``pause``, ``resume``) on one job."""
        return f"{self.job(job_id)}/{command}"


# Every URL the tap calls for a job, built from the families' paths.
ENDPOINTS: Mapping[JobType, Endpoints] = {
    family.job_type: Endpoints(family.path) for family in FAMILIES
}


class JobAPI:
    """Submit, poll, fetch a page, cancel, and read the balance.

    Args:
        client: The HTTP client (retries, error classification).
    """

    def __init__(self, client: OpenFunnelClient) -> None:
        self.client = client
        self._balance: dict[str, t.Any] | None = None

    @classmethod
    def connect(cls, settings: Settings, *, check: bool = False) -> JobAPI:
        """The job API over a client built from the settings: the sync's, or a check's.

        Args:
            settings: The tap's settings.
            check: A connection check (``--test``): one connection, a short read
                timeout, two short retries of throttling or 5xx, and none of a refused
                connection or an unknown host. A sync retries those for minutes.

        Returns:
            The job API.
        """
        timeout, retries, max_wait = (
            settings.request_timeout,
            settings.max_retries,
            settings.max_retry_wait,
        )
        if check:
            timeout = min(timeout, CHECK_TIMEOUT)
            retries = min(retries, CHECK_RETRIES)
            max_wait = min(max_wait, CHECK_MAX_WAIT)
        client = OpenFunnelClient(
            api_url=settings.api_url,
            api_key=settings.api_key,
            timeout=timeout,
            max_bytes=settings.max_response_mib * MIB,
            retry=RetryPolicy(max_retries=retries, max_wait=max_wait, retry_unreachable=not check),
            pool_size=1 if check else settings.page_concurrency + 2,
        )
        return cls(client)

    def submit(self, job_type: JobType, body: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Create a job (billed); retried only when no job can have been created.

        Args:
            job_type: The job family.
            body: The request body.

        Returns:
            The API's answer (with ``job_id``).
        """
        return self.client.submit(ENDPOINTS[job_type].base, body)

    def poll(
        self, job_type: JobType, job_id: str, cursor: str | None, body: bytes | None = None
    ) -> dict[str, t.Any]:
        """Read a job's status, manifest and the page at ``cursor`` (None: the first).

        Args:
            job_type: The job family.
            job_id: The job.
            cursor: The page to return with the status.
            body: The answer from :meth:`page_body`, if already fetched (a poll and a
                page read are the same request).

        Returns:
            The decoded answer.
        """
        params = {"cursor": cursor} if cursor else None
        return self.client.get_decoded(
            ENDPOINTS[job_type].job(job_id), params, decode_object, body=body
        )

    def page_body(self, job_type: JobType, job_id: str, cursor: str | None) -> bytes:
        """Fetch one page's body, undecoded (safe to call from prefetch threads).

        Args:
            job_type: The job family.
            job_id: The job.
            cursor: The page (None: the first).

        Returns:
            The body; :meth:`read_page` decodes it.
        """
        params = {"cursor": cursor} if cursor else None
        return self.client.get_bytes(ENDPOINTS[job_type].job(job_id), params=params)

    def read_page(
        self, job_type: JobType, job_id: str, cursor: str | None, body: bytes | None = None
    ) -> Page:
        """Decode a page's body (fetching it if None); a body that does not decode is re-read.

        Args:
            job_type: The job family.
            job_id: The job.
            cursor: The page (None: the first).
            body: The body from :meth:`page_body`, if already fetched.

        Returns:
            The page.
        """
        params = {"cursor": cursor} if cursor else None
        where = f"Job {job_id}, page {cursor or 'page_0000'}"
        fields = self.client.get_decoded(
            ENDPOINTS[job_type].job(job_id),
            params,
            lambda raw: decode_page_fields(raw, where),
            body=body,
        )
        return Page.from_response(fields.body, text_checked=fields.text_checked)

    def cancel(self, job_type: JobType, job_id: str) -> dict[str, t.Any]:
        """Ask OpenFunnel to cancel a job (safe to repeat).

        Args:
            job_type: The job family.
            job_id: The job.

        Returns:
            The API's answer.
        """
        return self.client.post_idempotent(ENDPOINTS[job_type].command(job_id, "cancel"))

    def balance(self) -> dict[str, t.Any]:
        """The account's credit balance, read once per run.

        The planner needs it before submitting and the ``credits_balance`` stream
        reports it: one request serves both.

        Returns:
            ``{total_credits, credits_used, credits_left}`` as the API sent them.
        """
        if self._balance is None:
            self._balance = self.client.get(BALANCE_PATH)
        return self._balance
