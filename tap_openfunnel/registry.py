"""One run's jobs: which jobs each stream reads, waiting on them together, outcomes."""

from __future__ import annotations

import datetime as dt
import logging
import typing as t
from dataclasses import dataclass

from tap_openfunnel.budget import BudgetGuard, check_budget
from tap_openfunnel.client import BALANCE_PATH
from tap_openfunnel.exceptions import (
    ApiError,
    ConflictError,
    JobError,
    JobFailedError,
    NotFoundError,
    OpenFunnelError,
    RowCountMismatchError,
)
from tap_openfunnel.jobs import JobPoller, JobSnapshot, JobStatus, JobType, Page, TrackedJob
from tap_openfunnel.outcomes import log_summary, row_count_mismatch

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from tap_openfunnel.client import OpenFunnelClient
    from tap_openfunnel.settings import Settings
    from tap_openfunnel.submit import BuildEntry

LOGGER = logging.getLogger("tap-openfunnel")


class JobsFailedError(OpenFunnelError):
    """Raised at the end of a run in which one or more jobs could not be extracted."""


@dataclass(frozen=True)
class JobSource:
    """The jobs one company stream reads.

    Attributes:
        stream_name: The stream.
        job_type: The family of its jobs.
        job_ids: Job ids from config.
        entries: Jobs to submit from config.
        state_of: Returns the writable partition state of one of its jobs.
        partitions: Returns every partition state the stream has (earlier runs' too).
    """

    stream_name: str
    job_type: JobType
    job_ids: tuple[str, ...]
    entries: tuple[BuildEntry, ...]
    state_of: Callable[[str], dict[str, t.Any]]
    partitions: Callable[[], list[dict[str, t.Any]]]


@dataclass
class JobRun:
    """What this run did with one job (for the jobs stream and the summary)."""

    job_id: str
    job_type: JobType
    stream_name: str
    origin: str = "config"
    request: Mapping[str, t.Any] | None = None
    submitted_at: str | None = None
    submitted_this_run: bool = False
    pages_read: int = 0
    rows_read: int = 0


class JobRegistry:
    """Coordinates the run's jobs across streams.

    Args:
        settings: The tap's settings.
        client: The HTTP client.
        sources: One per selected company stream.
        write_state: Emits a STATE message with the tap's current state.
        poller_factory: Builds the poller (tests inject a fake clock and sleep).
    """

    def __init__(
        self,
        settings: Settings,
        client: OpenFunnelClient,
        sources: list[JobSource],
        write_state: Callable[[], None],
        poller_factory: Callable[..., JobPoller] = JobPoller,
    ) -> None:
        self.settings = settings
        self.client = client
        self.sources = {source.stream_name: source for source in sources}
        self.write_state = write_state
        self.poller = poller_factory(
            self._fetch,
            poll_interval=settings.poll_interval,
            max_poll_interval=settings.max_poll_interval,
            job_timeout=settings.job_timeout,
            on_snapshot=self._on_snapshot,
        )
        self.runs: dict[str, JobRun] = {}
        self.budget = BudgetGuard(settings.max_credits, cancel=self.cancel)
        self.failures: dict[str, JobError] = {}
        self._resolved: dict[str, list[str]] | None = None

    # Which jobs ---------------------------------------------------------------------

    def job_ids(self, stream_name: str) -> list[str]:
        """The jobs ``stream_name`` still has to read in this run.

        The first call resolves every selected stream's jobs at once (submitting what
        config asks for), so that all of them are waited on together whichever stream
        syncs first.

        Args:
            stream_name: A company stream.

        Returns:
            Job ids not yet read to the end according to state.
        """
        if self._resolved is None:
            self._resolved = self._resolve()
        return list(self._resolved.get(stream_name, []))

    def _resolve(self) -> dict[str, list[str]]:
        resolved: dict[str, list[str]] = {name: [] for name in self.sources}
        to_submit: list[tuple[JobSource, BuildEntry]] = []
        for source in self.sources.values():
            for job_id in source.job_ids:
                state = source.state_of(job_id)
                if state.get("done"):
                    LOGGER.info("Job %s was read to the end in an earlier run; skipping.", job_id)
                    continue
                self._track(source, job_id, state)
                resolved[source.stream_name].append(job_id)
            for entry in source.entries:
                attached = self._attach(source, entry)
                if attached is False:
                    to_submit.append((source, entry))
                elif attached:
                    resolved[source.stream_name].append(attached)
        if to_submit:
            check_budget(
                [entry for _, entry in to_submit],
                credits_left=self._credits_left(),
                max_credits=self.settings.max_credits,
            )
            for source, entry in to_submit:
                resolved[source.stream_name].append(self._submit(source, entry))
        # A job can be both in config and remembered for an entry: read it once.
        return {name: list(dict.fromkeys(job_ids)) for name, job_ids in resolved.items()}

    def _attach(self, source: JobSource, entry: BuildEntry) -> str | t.Literal[False] | None:
        """Find the job an entry already has: its id, None (nothing to do), False (submit)."""
        remembered = [
            state for state in source.partitions() if state.get("fingerprint") == entry.fingerprint
        ]
        if not remembered:
            return False
        state = max(remembered, key=lambda item: str(item.get("submitted_at", "")))
        job_id = str(state["context"]["job_id"])
        if self._refresh_due(state):
            LOGGER.info(
                "%s: job %s is older than refresh_after (%s days); submitting a new one.",
                entry.label,
                job_id,
                self.settings.refresh_after_days,
            )
            return False
        if state.get("done"):
            LOGGER.info("%s: job %s was already extracted; nothing to submit.", entry.label, job_id)
            return None
        if state.get("failed"):
            LOGGER.warning(
                "%s: its job %s failed in an earlier run; submitting it again.",
                entry.label,
                job_id,
            )
            return False
        try:
            self.client.get(source.job_type.job_path(job_id))
        except NotFoundError:
            LOGGER.warning(
                "%s: its job %s is gone (HTTP 404 for this API key); submitting it again.",
                entry.label,
                job_id,
            )
            return False
        LOGGER.info("%s: re-attaching to job %s submitted earlier.", entry.label, job_id)
        self._track(source, job_id, state)
        return job_id

    def _refresh_due(self, state: Mapping[str, t.Any]) -> bool:
        days = self.settings.refresh_after_days
        submitted = state.get("submitted_at")
        if days is None or not isinstance(submitted, str):
            return False
        try:
            when = dt.datetime.fromisoformat(submitted)
        except ValueError:
            return False
        return dt.datetime.now(dt.timezone.utc) - when >= dt.timedelta(days=days)

    def _credits_left(self) -> float | None:
        body = self.client.get(BALANCE_PATH)
        left = body.get("credits_left")
        if isinstance(left, (int, float)) and not isinstance(left, bool):
            return float(left)
        LOGGER.warning("The credits balance answer has no numeric credits_left: %s", body)
        return None

    def _submit(self, source: JobSource, entry: BuildEntry) -> str:
        answer = self.client.submit(source.job_type.base_path, entry.body)
        job_id = answer.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            msg = (
                f"Submitting {entry.label} succeeded (HTTP 2xx) but the answer has no job_id, "
                "so the job cannot be followed. Check your OpenFunnel jobs before running "
                "again; attach one by id with 'tam_job_ids' / 'lookalike_job_ids'."
            )
            raise ApiError(msg, path=source.job_type.base_path)
        state = source.state_of(job_id)
        state.update(
            {
                "origin": "submitted",
                "fingerprint": entry.fingerprint,
                "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "request": dict(entry.body),
            },
        )
        # The job id must be in a STATE message before the wait begins: a run killed
        # from here on re-attaches to this job instead of paying for a second one.
        self.write_state()
        LOGGER.info("%s: submitted as job %s.", entry.label, job_id)
        self._track(source, job_id, state)
        self.runs[job_id].submitted_this_run = True
        return job_id

    def _track(self, source: JobSource, job_id: str, state: Mapping[str, t.Any]) -> None:
        submitted = state.get("origin") == "submitted"
        self.runs.setdefault(
            job_id,
            JobRun(
                job_id,
                source.job_type,
                source.stream_name,
                origin="submitted" if submitted else "config",
                request=state.get("request") if submitted else None,
                submitted_at=state.get("submitted_at") if submitted else None,
            ),
        )
        self.poller.track(job_id, source.job_type, cursor=state.get("next_cursor"))

    # Waiting ------------------------------------------------------------------------

    def wait(self, job_id: str) -> JobSnapshot | None:
        """Wait until the job is terminal; record a failure instead of raising.

        Args:
            job_id: A resolved job.

        Returns:
            The terminal snapshot when its pages can be read, else None.
        """
        try:
            snapshot = self.poller.wait_for(job_id)
        except JobError as exc:
            self.fail(exc)
            return None
        if snapshot.status == JobStatus.FAILED.value:
            run = self.runs[job_id]
            self.sources[run.stream_name].state_of(job_id)["failed"] = True
            self.write_state()
            reason = snapshot.body.get("error_message") or "no error_message given"
            self.fail(
                JobFailedError(
                    job_id,
                    f"Job {job_id} ({snapshot.job_type.value}) failed at OpenFunnel: "
                    f"{reason}. Its rows were not extracted. Submit a new job, or ask "
                    "OpenFunnel support about this one.",
                ),
            )
            return None
        if snapshot.status == JobStatus.CANCELLED.value:
            LOGGER.warning(
                "Job %s was cancelled: extracting the %s companies delivered before the "
                "cancel. The set is partial (see the jobs stream).",
                job_id,
                snapshot.body.get("processed", "?"),
            )
        return snapshot

    def wait_all(self) -> list[TrackedJob]:
        """Wait on every resolved job together.

        Returns:
            Every job tracked in this run.
        """
        for stream_name in self.sources:
            self.job_ids(stream_name)
        self.poller.wait_all()
        return list(self.poller.jobs.values())

    def fail(self, error: JobError) -> None:
        """Record a job that cannot be extracted; the run goes on with the others.

        Args:
            error: What went wrong.
        """
        if error.job_id not in self.failures:
            self.failures[error.job_id] = error
            # The reason goes in the run's final error, once: here only what happens next.
            LOGGER.warning(
                "Job %s could not be extracted; the other jobs go on, then the run fails "
                "saying why.",
                error.job_id,
            )

    def raise_for_failures(self) -> None:
        """End the run with an error if any job could not be extracted.

        Raises:
            JobsFailedError: Naming every such job.
        """
        if not self.failures:
            return
        count = len(self.failures)
        details = " ".join(str(error) for error in self.failures.values())
        msg = (
            f"{count} job(s) could not be extracted; the data of the other jobs was "
            f"delivered and state saved. {details}"
        )
        raise JobsFailedError(msg)

    def log_summary(self) -> None:
        """Log one line per stream and one for the run: jobs, pages, records, credits."""
        log_summary(
            list(self.sources), self.runs.values(), self.poller.jobs.values(), self.failures
        )

    # Reading ------------------------------------------------------------------------

    def fetch_page(self, job_type: JobType, job_id: str, cursor: str | None) -> Page:
        """Read one page of a job.

        Args:
            job_type: The job's family.
            job_id: The job.
            cursor: The page (None: the first).

        Returns:
            The page.
        """
        return Page.from_response(self._fetch(job_type, job_id, cursor))

    def page_done(self, job_id: str, rows: int, *, emit_state: bool = True) -> None:
        """Count a page fully emitted, and emit STATE so a restart resumes after it.

        Args:
            job_id: The job.
            rows: Rows the page held.
            emit_state: False when records go to BATCH files, which the SDK follows
                with STATE itself once a file is out: a STATE now would run ahead of
                records still waiting in an unwritten file.
        """
        run = self.runs[job_id]
        run.pages_read += 1
        run.rows_read += rows
        if emit_state:
            self.write_state()

    def check_row_count(self, snapshot: JobSnapshot, rows_total: int) -> None:
        """Compare the rows read over all runs with the manifest's count.

        Args:
            snapshot: The job's terminal snapshot.
            rows_total: Rows read for the job, this run and earlier ones.
        """
        problem = row_count_mismatch(snapshot, rows_total)
        if problem is None:
            return
        if self.settings.strict_row_count:
            self.fail(RowCountMismatchError(snapshot.job_id, problem))
        else:
            LOGGER.warning("%s", problem)

    # Spending -----------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Ask OpenFunnel to cancel a job; an already finished one is fine.

        Args:
            job_id: A tracked job.
        """
        job_type = self.runs[job_id].job_type
        try:
            self.client.post_idempotent(job_type.job_path(job_id, "cancel"))
        except ConflictError:
            LOGGER.info("Job %s had already finished; nothing to cancel.", job_id)
        except ApiError as exc:
            LOGGER.warning("Could not cancel job %s: %s", job_id, exc)

    def cancel_submitted(self) -> list[str]:
        """Cancel the jobs this run submitted that are not terminal yet.

        Returns:
            The jobs asked to cancel.
        """
        cancelled = []
        for run in self.runs.values():
            tracked = self.poller.jobs.get(run.job_id)
            if not run.submitted_this_run or (tracked is not None and tracked.settled):
                continue
            self.cancel(run.job_id)
            cancelled.append(run.job_id)
        return cancelled

    def _on_snapshot(self, job: TrackedJob, snapshot: JobSnapshot) -> None:
        run = self.runs.get(job.job_id)
        if run is not None and run.origin == "submitted":
            self.budget.observe(
                snapshot,
                reserved=float((run.request or {}).get("limit", 0))
                if run.submitted_this_run and run.job_type is JobType.LOOKALIKE
                else 0.0,
            )

    # Internals ----------------------------------------------------------------------

    def _fetch(self, job_type: JobType, job_id: str, cursor: str | None) -> Mapping[str, t.Any]:
        params = {"cursor": cursor} if cursor else None
        return self.client.get(job_type.job_path(job_id), params=params)
