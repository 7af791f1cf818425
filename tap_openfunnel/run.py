"""Carrying out the plan: submit, wait on every job together, and the run's outcomes."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import typing as t
from dataclasses import dataclass

from tap_openfunnel.budget import BudgetGuard, credit_amount, credits_text, unreadable
from tap_openfunnel.exceptions import (
    ApiError,
    ConflictError,
    JobError,
    JobFailedError,
    OpenFunnelError,
)
from tap_openfunnel.families import BY_TYPE, settings_text
from tap_openfunnel.job_ids import job_id_problem
from tap_openfunnel.jobs import JobPoller, JobSnapshot, JobStatus, JobType, TrackedJob
from tap_openfunnel.logs import shown
from tap_openfunnel.outcomes import log_summary
from tap_openfunnel.planner import SUBMITTING, Action
from tap_openfunnel.prefetch import RequestBudget
from tap_openfunnel.submissions import UnconfirmedSubmitError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from tap_openfunnel.api import JobAPI
    from tap_openfunnel.checkpoint import Checkpoint
    from tap_openfunnel.journal import Journal
    from tap_openfunnel.planner import Plan, PlannedJob
    from tap_openfunnel.settings import Settings

LOGGER = logging.getLogger("tap-openfunnel")


class JobsFailedError(OpenFunnelError):
    """One or more jobs could not be extracted; the others were."""


class SubmitsSkippedError(OpenFunnelError):
    """The run left planned submits out (its output looked like a check), so it failed."""


@dataclass
class JobProgress:
    """What this run did with one job (for the jobs stream and the summary)."""

    job_id: str
    job_type: JobType
    stream_name: str
    origin: str = "config"
    request: Mapping[str, t.Any] | None = None
    fingerprint: str | None = None
    submitted_at: str | None = None
    submitted_this_run: bool = False
    pages_read: int = 0
    rows_read: int = 0


class Run:
    """One run's jobs, from the plan to their outcomes.

    :meth:`start` submits what the plan says to submit and starts waiting on every
    job; the reader (:class:`~tap_openfunnel.reader.JobReader`) then takes each
    stream's jobs from :meth:`jobs_to_read`, waits for each, and hands every page's end
    to the checkpoint. A problem with one job fails
    that job; the others are still extracted and the run fails at the end.

    Args:
        plan: The run's plan.
        api: The job API.
        checkpoint: The writer of every job's state.
        settings: The tap's settings.
        poller_factory: Builds the poller (tests inject a fake clock and sleep).
        may_submit: False leaves the plan's submits out (the run is a check).
        journal: Records every submit outside state (None: off).
    """

    def __init__(  # noqa: PLR0913 - the run's collaborators, passed in for tests
        self,
        plan: Plan,
        api: JobAPI,
        checkpoint: Checkpoint,
        settings: Settings,
        poller_factory: Callable[..., JobPoller] = JobPoller,
        *,
        may_submit: bool = True,
        journal: Journal | None = None,
    ) -> None:
        self.plan = plan
        self.may_submit = may_submit
        self.journal = journal
        self.api = api
        self.checkpoint = checkpoint
        self.settings = settings
        self.budget = BudgetGuard(
            settings.max_credits,
            cancel=self.cancel,
            watch_interval=settings.poll_interval,
            min_interval=1.0,
        )
        # Every read request of the run (polls and pages) counts against it.
        self.requests = RequestBudget(settings.page_concurrency)
        self.poller = poller_factory(
            self._poll,
            poll_interval=settings.poll_interval,
            max_poll_interval=settings.max_poll_interval,
            job_timeout=settings.job_timeout,
            on_snapshot=self._on_snapshot,
            interval_limit=self.budget.poll_within,
            fetch_ahead=self._poll_ahead if self.requests.limit > 1 else None,
            ahead=2 * self.requests.limit,
        )
        self.progress: dict[str, JobProgress] = {}
        self.skipped_submits: list[PlannedJob] = []
        self.failures: dict[str, JobError] = {}
        self._to_read: dict[str, list[str]] = {}
        self._started = False

    # Submit and wait --------------------------------------------------------------

    def start(self) -> None:
        """Submit the plan's new jobs, then start waiting on every job (once).

        Submits go out only when the first job stream starts, not before the sync: a
        sync stopped at the first record of ``credits_balance`` (Meltano's ``config
        test``) spends nothing.
        """
        if self._started:
            return
        self._started = True
        self.plan.check_budget()
        for planned in self.plan.jobs:
            self._to_read.setdefault(planned.stream_name, [])
            if planned.action is Action.SKIP:
                LOGGER.info("%s: %s; skipping.", planned.label, planned.reason)
                continue
            if planned.action is Action.BLOCKED:
                self.fail(JobError(planned.label, planned.reason))
                continue
            if planned.action in SUBMITTING and not self.may_submit:
                LOGGER.warning(
                    "%s: not submitted: stdout and stderr are one pipe, as under 'meltano "
                    "config test', which stops the tap at its first record. A run into a "
                    "target submits it.",
                    planned.label,
                )
                self.skipped_submits.append(planned)
                continue
            job_id = self._submit(planned) if planned.action in SUBMITTING else planned.job_id
            if job_id is None:
                continue  # a submit another run may have made: failed, with what to do
            if planned.action is Action.REATTACH:
                LOGGER.info(
                    "%s: re-attaching to job %s (%s).", planned.label, job_id, planned.reason
                )
            self._track(planned, job_id)

    def jobs_to_read(self, stream_name: str) -> list[str]:
        """The jobs whose pages ``stream_name`` reads in this run.

        Args:
            stream_name: A company stream.

        Returns:
            Job ids, in plan order.
        """
        self.start()
        return list(self._to_read.get(stream_name, []))

    def _submit(self, planned: PlannedJob) -> str | None:
        entry = planned.entry
        assert entry is not None  # noqa: S101 - submits always come from an entry
        LOGGER.info("%s: submitting (%s).", entry.label, planned.reason)

        def send() -> str:
            answer = self.api.submit(entry.job_type, entry.body)
            job_id = answer.get("job_id")
            problem = "missing" if job_id is None else job_id_problem(job_id)
            if problem is not None or not isinstance(job_id, str):
                msg = (
                    f"Submitting {entry.label} succeeded (HTTP 2xx) but the answer's job_id "
                    f"is {problem}, so the job cannot be followed; it may already be billed. "
                    "Check your OpenFunnel jobs before running again, and attach the job by "
                    f"id with {settings_text('ids', ' / ')} rather than submitting it "
                    "again."
                )
                raise ApiError(msg)
            return job_id

        sent_here = True
        if self.journal is None:
            job_id = send()
            submitted_at = dt.datetime.now(dt.timezone.utc).isoformat()
        else:
            try:
                outcome = self.journal.submit_once(
                    entry, send, resubmit_unconfirmed=self.settings.resubmit_unconfirmed
                )
            except UnconfirmedSubmitError as exc:
                self.fail(JobError(entry.label, str(exc)))
                return None
            job_id, submitted_at, sent_here = (
                outcome.job_id,
                outcome.submitted_at,
                outcome.sent_here,
            )
        self.checkpoint.register(job_id, planned.stream_name)
        # The job id is written out before the wait begins.
        self.checkpoint.submitted(
            job_id,
            fingerprint=entry.fingerprint,
            request=entry.body,
            submitted_at=submitted_at,
        )
        if sent_here:
            LOGGER.info("%s: submitted as job %s.", entry.label, job_id)
        else:
            LOGGER.info(
                "%s: another run submitted it meanwhile as job %s (journal %s); "
                "re-attaching to it instead of submitting.",
                entry.label,
                job_id,
                self.journal.path if self.journal else "",
            )
        self.progress[job_id] = JobProgress(
            job_id,
            entry.job_type,
            planned.stream_name,
            origin="submitted",
            request=dict(entry.body),
            fingerprint=entry.fingerprint,
            submitted_at=submitted_at,
            submitted_this_run=sent_here,
        )
        return job_id

    def _track(self, planned: PlannedJob, job_id: str) -> None:
        self.checkpoint.register(job_id, planned.stream_name)
        entry = planned.entry
        if planned.submitted_at is not None and entry is not None:
            # Found in the journal: this state learns the job too, so that its next run
            # knows where reading stands and whether the job is read to the end.
            self.checkpoint.submitted(
                job_id,
                fingerprint=entry.fingerprint,
                request=entry.body,
                submitted_at=planned.submitted_at,
            )
        if job_id not in self.progress:
            remembered = self.checkpoint.submission(job_id) if entry is not None else {}
            self.progress[job_id] = JobProgress(
                job_id,
                planned.job_type,
                planned.stream_name,
                origin="submitted" if entry is not None else "config",
                request=dict(entry.body) if entry is not None else None,
                fingerprint=entry.fingerprint if entry is not None else None,
                submitted_at=remembered.get("submitted_at"),
            )
        self._to_read[planned.stream_name].append(job_id)
        self.poller.track(
            job_id,
            planned.job_type,
            cursor=self.checkpoint.position(job_id).cursor,
        )

    def _poll(self, job_type: JobType, job_id: str, cursor: str | None) -> Mapping[str, t.Any]:
        return self.requests.call(functools.partial(self.api.poll, job_type, job_id, cursor))

    def _poll_ahead(
        self, job_type: JobType, job_id: str, cursor: str | None
    ) -> Callable[[], Mapping[str, t.Any]]:
        # A worker moves the bytes; the answer is decoded in the thread that handles it.
        body = self.requests.submit(functools.partial(self.api.page_body, job_type, job_id, cursor))
        return lambda: self.api.poll(job_type, job_id, cursor, body=body.result())

    def wait(self, job_id: str) -> JobSnapshot | None:
        """Wait until the job is terminal (polling the others meanwhile).

        Args:
            job_id: A job of the run.

        Returns:
            The terminal snapshot when its pages can be read, else None (recorded as
            the job's failure).
        """
        try:
            snapshot = self.poller.wait_for(job_id)
        except JobError as exc:
            self.fail(exc)
            return None
        if snapshot.status == JobStatus.FAILED.value:
            self.checkpoint.failed(job_id)
            reason = shown(snapshot.body.get("error_message") or "no error_message given")
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
            processed = snapshot.body.get("processed")
            delivered = credit_amount(processed)
            LOGGER.warning(
                "Job %s was cancelled: extracting the companies delivered before the cancel "
                "(%s). The set is partial (see the jobs stream).",
                job_id,
                f"processed {unreadable(processed)}"
                if delivered is None
                else f"{credits_text(delivered)} processed",
            )
        return snapshot

    def wait_all(self) -> list[TrackedJob]:
        """Wait on every job of the run together.

        Returns:
            Every job waited on, in plan order.
        """
        self.start()
        self.poller.wait_all()
        return list(self.poller.jobs.values())

    # Reading ----------------------------------------------------------------------

    def page_read(self, job_id: str, rows: int) -> None:
        """Count a page delivered, for the summary.

        Args:
            job_id: The job.
            rows: Rows the page held.
        """
        progress = self.progress[job_id]
        progress.pages_read += 1
        progress.rows_read += rows

    # Outcomes ---------------------------------------------------------------------

    def fail(self, error: JobError) -> None:
        """Record a job that cannot be extracted; the run goes on with the others.

        Args:
            error: What went wrong.
        """
        if error.job_id not in self.failures:
            self.failures[error.job_id] = error
            LOGGER.error("%s", error)

    def raise_for_failures(self) -> None:
        """End the run with an error if any job could not be extracted.

        Raises:
            JobsFailedError: Naming every such job.
        """
        if not self.failures:
            return
        count = len(self.failures)
        names = ", ".join(self.failures)
        msg = (
            f"{count} job(s) could not be extracted ({names}); the data of the other jobs "
            "was delivered and state saved. The reason for each is logged above."
        )
        raise JobsFailedError(msg)

    def raise_for_skipped_submits(self) -> None:
        """End a run that left planned submits out with an error, not a quiet success.

        Raises:
            SubmitsSkippedError: Naming the entries, why, and how to run them.
        """
        if not self.skipped_submits:
            return
        labels = ", ".join(planned.label for planned in self.skipped_submits)
        msg = (
            f"{len(self.skipped_submits)} planned submit(s) were not sent ({labels}): this "
            "run's stdout and stderr are one pipe (as with '2>&1 | ...', or under 'meltano "
            "config test'), which the tap takes for a connection check that stops at the "
            "first record, so it spends nothing. The other jobs were read and state saved, "
            "but the run did not do what its config asks. To submit, give stdout a pipe or "
            "file of its own and keep the log apart: 'tap-openfunnel --config c.json "
            "2>tap.log | target-...', or 'meltano run tap-openfunnel <loader>'. To see the "
            "plan and its cost without spending, set 'dry_run'."
        )
        raise SubmitsSkippedError(msg)

    def log_summary(self) -> None:
        """Log one line per stream and one for the run: jobs, pages, records, credits."""
        streams = list(dict.fromkeys(job.stream_name for job in self.plan.jobs))
        log_summary(streams, self.progress.values(), self.poller.jobs.values(), self.failures)

    # Spending ---------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Ask OpenFunnel to cancel a job; an already finished one is fine.

        Args:
            job_id: A job of the run.
        """
        try:
            self.api.cancel(self.progress[job_id].job_type, job_id)
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
        for progress in self.progress.values():
            tracked = self.poller.jobs.get(progress.job_id)
            if not progress.submitted_this_run or (tracked is not None and tracked.settled):
                continue
            self.cancel(progress.job_id)
            cancelled.append(progress.job_id)
        return cancelled

    def _on_snapshot(self, job: TrackedJob, snapshot: JobSnapshot) -> None:
        progress = self.progress.get(job.job_id)
        if progress is None or progress.origin != "submitted":
            return
        reserved = 0.0
        if progress.submitted_this_run:
            # A bounded family's worst case is set aside whatever its polls report.
            reserved = BY_TYPE[progress.job_type].worst_case_credits(progress.request or {}) or 0.0
        self.budget.observe(snapshot, reserved=reserved, at=self.poller.clock())
