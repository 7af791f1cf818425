"""The job life cycle: statuses, poll snapshots, and waiting until jobs are terminal."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import time
import typing as t
from dataclasses import dataclass, field
from enum import Enum

from tap_openfunnel.completeness import check_job_id
from tap_openfunnel.exceptions import (
    ApiError,
    AuthenticationError,
    JobError,
    JobNotFoundError,
    JobTimeoutError,
    NotFoundError,
    RetriesExhaustedError,
)
from tap_openfunnel.logs import shown
from tap_openfunnel.pagination import Page

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping


LOGGER = logging.getLogger("tap-openfunnel")


class JobType(str, Enum):
    """The two job families, named as the ``jobs`` stream names them."""

    TAM = "tam_build"
    LOOKALIKE = "lookalike_search"


class JobStatus(str, Enum):
    """Statuses the reference documents. Anything else is treated as still working."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PAUSING = "pausing"
    PAUSED = "paused"


TERMINAL_STATUSES = frozenset(
    status.value for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
)
KNOWN_STATUSES = frozenset(status.value for status in JobStatus)


@dataclass(frozen=True)
class JobSnapshot:
    """What one poll said about a job.

    Attributes:
        job_id: The job.
        job_type: Its family.
        status: The status string exactly as sent (may be unknown to us).
        body: The whole decoded answer (manifest, progress fields, page).
        cursor: The cursor the poll asked for (None: the first page).
    """

    job_id: str
    job_type: JobType
    status: str
    body: Mapping[str, t.Any]
    cursor: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def manifest(self) -> Mapping[str, t.Any]:
        """The manifest, or an empty mapping before the job is terminal."""
        manifest = self.body.get("manifest")
        return manifest if isinstance(manifest, dict) else {}

    @property
    def page(self) -> Page:
        """The page this poll returned."""
        return Page.from_response(self.body)

    def progress(self) -> tuple[t.Any, ...]:
        """The fields whose change is worth a log line."""
        body = self.body
        return (
            self.status,
            body.get("processed"),
            body.get("bands_done"),
            body.get("bands_total"),
            body.get("progress_message"),
        )


@dataclass
class TrackedJob:
    """A job being waited on, with its own poll schedule and deadline."""

    job_id: str
    job_type: JobType
    cursor: str | None
    started: float
    deadline: float
    interval: float
    next_poll: float
    last: JobSnapshot | None = None
    error: JobError | None = None
    terminal_at: dt.datetime | None = None
    warned: set[str] = field(default_factory=set)

    @property
    def settled(self) -> bool:
        """True when no more polling is needed (terminal, or given up on)."""
        return self.error is not None or (self.last is not None and self.last.terminal)


Fetch = t.Callable[[JobType, str, "str | None"], "Mapping[str, t.Any]"]
# Starts fetching a poll's answer; the function returned waits for it and decodes it.
FetchAhead = t.Callable[[JobType, str, "str | None"], "Callable[[], Mapping[str, t.Any]]"]


class JobPoller:
    """Waits on several jobs at once, each with a growing interval and a deadline.

    Args:
        fetch: Polls one job: ``fetch(job_type, job_id, cursor) -> answer``.
        poll_interval: First wait between polls of a job, in seconds.
        max_poll_interval: The interval doubles up to this.
        job_timeout: A job not terminal this long after tracking began is given up on.
        clock: Monotonic clock (injected in tests).
        sleep: Sleep function (injected in tests).
        now: Wall clock for ``terminal_at`` stamps.
        on_snapshot: Called after every poll (the budget guard hooks in here).
        interval_limit: The longest a job may wait for its next poll, or None for its own
            schedule (the budget guard asks for sooner polls near ``max_credits``).
        fetch_ahead: Starts a poll in the background; when given, the jobs due at the
            same time are polled together, up to ``ahead`` at once, their answers
            still handled one by one in plan order.
        ahead: Polls started and not yet handled, at most.
    """

    def __init__(  # noqa: PLR0913 - keyword-only knobs
        self,
        fetch: Fetch,
        *,
        poll_interval: float,
        max_poll_interval: float,
        job_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        on_snapshot: Callable[[TrackedJob, JobSnapshot], None] | None = None,
        interval_limit: Callable[[TrackedJob], float | None] | None = None,
        fetch_ahead: FetchAhead | None = None,
        ahead: int = 1,
    ) -> None:
        self._fetch = fetch
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.job_timeout = job_timeout
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._on_snapshot = on_snapshot
        self.interval_limit = interval_limit
        self._fetch_ahead = fetch_ahead
        self._ahead = max(1, ahead)
        self.jobs: dict[str, TrackedJob] = {}

    def track(self, job_id: str, job_type: JobType, cursor: str | None = None) -> TrackedJob:
        """Start waiting on a job (idempotent).

        Args:
            job_id: The job.
            job_type: Its family.
            cursor: The page the first useful read would start at; polls ask for it so
                that the poll that sees the job terminal already carries that page.

        Returns:
            The tracked job.
        """
        if job_id not in self.jobs:
            start = self._clock()
            self.jobs[job_id] = TrackedJob(
                job_id=job_id,
                job_type=job_type,
                cursor=cursor,
                started=start,
                deadline=start + self.job_timeout,
                interval=self.poll_interval,
                next_poll=start,
            )
        return self.jobs[job_id]

    def wait_for(self, job_id: str) -> JobSnapshot:
        """Poll every unsettled job until this one is terminal.

        Args:
            job_id: A tracked job.

        Returns:
            The terminal snapshot.

        Raises:
            JobError: The job timed out or is unknown to the API.
        """
        job = self.jobs[job_id]
        self._run_until(lambda: job.settled)
        if job.error is not None:
            raise job.error
        assert job.last is not None  # noqa: S101 - settled without error means a snapshot
        return job.last

    def wait_all(self) -> None:
        """Poll until every tracked job is terminal or given up on."""
        self._run_until(lambda: all(job.settled for job in self.jobs.values()))

    def _run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            now = self._clock()
            due = []
            for job in [job for job in self.jobs.values() if not job.settled]:
                if now >= job.deadline:
                    job.error = self._timeout_error(job)
                elif now >= job.next_poll:
                    due.append(job)
            for job, answer in self._answers(due):
                self._poll(job, answer)
            if done():
                return
            pending = [
                min(job.next_poll, job.deadline) for job in self.jobs.values() if not job.settled
            ]
            if pending:
                self._sleep(max(min(pending) - self._clock(), 0.0))

    def _answers(
        self, due: list[TrackedJob]
    ) -> Iterator[tuple[TrackedJob, Callable[[], Mapping[str, t.Any]] | None]]:
        """Each due job with its answer started ahead (None: poll it in turn)."""
        fetch_ahead = self._fetch_ahead
        if fetch_ahead is None or len(due) < 2:  # noqa: PLR2004 - one poll waits alone
            yield from ((job, None) for job in due)
            return
        window: collections.deque[tuple[TrackedJob, Callable[[], Mapping[str, t.Any]]]]
        window = collections.deque()
        waiting = iter(due)

        def fill() -> None:
            for job in itertools.islice(waiting, self._ahead - len(window)):
                window.append((job, fetch_ahead(job.job_type, job.job_id, job.cursor)))

        fill()
        while window:
            item = window.popleft()
            fill()  # the next poll goes out before this answer is handled
            yield item

    def _poll(
        self, job: TrackedJob, answer: Callable[[], Mapping[str, t.Any]] | None = None
    ) -> None:
        try:
            body = (
                answer()
                if answer is not None
                else self._fetch(job.job_type, job.job_id, job.cursor)
            )
        except NotFoundError:
            job.error = self._not_found(job)
            return
        except RetriesExhaustedError as exc:
            if exc.status != 429:  # noqa: PLR2004
                job.error = JobError(job.job_id, f"Job {job.job_id}: polling it failed. {exc}")
                return
            # Being throttled while *waiting* is not the job's failure: keep waiting
            # until the job's own deadline.
            LOGGER.warning("Polling job %s is throttled (HTTP 429); will poll again.", job.job_id)
            self._reschedule(job)
            return
        except AuthenticationError:
            raise  # the key itself: every job would fail the same way
        except ApiError as exc:
            job.error = JobError(job.job_id, f"Job {job.job_id}: polling it failed. {exc}")
            return
        try:
            check_job_id(job.job_id, body.get("job_id"), job.cursor)
        except JobError as exc:
            job.error = exc
            return
        snapshot = JobSnapshot(
            job_id=job.job_id,
            job_type=job.job_type,
            status=str(body.get("status")),
            body=body,
            cursor=job.cursor,
        )
        self._log_progress(job, snapshot)
        job.last = snapshot
        if snapshot.terminal:
            job.terminal_at = self._now()
        if self._on_snapshot is not None:
            self._on_snapshot(job, snapshot)
        if not snapshot.terminal:
            self._reschedule(job)

    def _not_found(self, job: TrackedJob) -> JobError:
        if job.cursor is not None:
            # Is it the job or only the page the read would resume at?
            try:
                self._fetch(job.job_type, job.job_id, None)
            except NotFoundError:
                pass
            else:
                return JobError(
                    job.job_id,
                    f"Job {job.job_id} is known to the API, but the page {job.cursor!r} "
                    "where reading would resume (kept in state by an earlier run) is not "
                    "(HTTP 404). Clear this job's state ('meltano state clear', or remove "
                    "its partition from the state file) to read it again from the first "
                    "page; the job itself is fine.",
                )
        return JobNotFoundError(
            job.job_id,
            f"Job {job.job_id} ({job.job_type.value}) was not found for this API key "
            "(HTTP 404). It may belong to another key, be mistyped, or have expired. "
            "Remove it from the config, or check the id.",
        )

    def clock(self) -> float:
        """The poller's monotonic clock (the budget guard times growth with it).

        Returns:
            Seconds.
        """
        return self._clock()

    def _reschedule(self, job: TrackedJob) -> None:
        limit = self.interval_limit(job) if self.interval_limit is not None else None
        if limit is not None and limit < job.interval:
            # Polled sooner on request; the job's own schedule resumes unchanged after.
            job.next_poll = self._clock() + limit
            return
        job.next_poll = self._clock() + job.interval
        job.interval = min(job.interval * 2, self.max_poll_interval)

    def _log_progress(self, job: TrackedJob, snapshot: JobSnapshot) -> None:
        if job.last is not None and job.last.progress() == snapshot.progress():
            return
        status = snapshot.status
        if status not in KNOWN_STATUSES and status not in job.warned:
            job.warned.add(status)
            LOGGER.warning(
                "Job %s reports status '%s', which the tap does not know; treating it as "
                "still in progress.",
                job.job_id,
                shown(status, 40),
            )
        if status == JobStatus.PAUSED.value and status not in job.warned:
            job.warned.add(status)
            LOGGER.warning(
                "Job %s is paused and will not finish on its own. Resume it (the TAM "
                "Builder's resume call) or cancel it; the tap gives up after job_timeout "
                "(%.0f s).",
                job.job_id,
                self.job_timeout,
            )
        body = snapshot.body
        # Every piece is the server's text: escaped and cut (logs.shown).
        parts = [f"status {shown(status, 40)}"]
        if body.get("processed") is not None:
            parts.append(f"{shown(body['processed'], 40)} processed")
        if body.get("bands_total"):
            parts.append(
                f"bands {shown(body.get('bands_done'), 20)}/{shown(body['bands_total'], 20)}"
            )
        if body.get("progress_message"):
            parts.append(f"'{shown(body['progress_message'])}'")
        elapsed = self._clock() - job.started
        LOGGER.info(
            "Job %s (%s): %s; waited %.0f s of %.0f s.",
            job.job_id,
            job.job_type.value,
            ", ".join(parts),
            elapsed,
            self.job_timeout,
        )

    def _timeout_error(self, job: TrackedJob) -> JobTimeoutError:
        status = job.last.status if job.last is not None else "unknown (never answered)"
        return JobTimeoutError(
            job.job_id,
            f"Job {job.job_id} ({job.job_type.value}) was still {status!r} after "
            f"{self.job_timeout:.0f} s (job_timeout), so the tap stopped waiting for it. "
            "The job goes on at OpenFunnel and the next run waits for it again; raise "
            "'job_timeout' for longer builds, or resume or cancel the job if it is paused.",
        )
