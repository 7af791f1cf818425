"""The run's plan: config and state in, one decision per job out, the budget checked."""

from __future__ import annotations

import datetime as dt
import logging
import typing as t
from dataclasses import dataclass, replace
from enum import Enum

from tap_openfunnel.budget import credit_amount, credits_text, unreadable
from tap_openfunnel.exceptions import NotFoundError, OpenFunnelError
from tap_openfunnel.families import FAMILIES, settings_text
from tap_openfunnel.submissions import unconfirmed_decision

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from tap_openfunnel.api import JobAPI
    from tap_openfunnel.entries import BuildEntry
    from tap_openfunnel.families import JobFamily
    from tap_openfunnel.jobs import JobType
    from tap_openfunnel.journal import Journal
    from tap_openfunnel.settings import Settings
    from tap_openfunnel.submissions import Submission

LOGGER = logging.getLogger("tap-openfunnel")


class BudgetError(OpenFunnelError):
    """Submitting would exceed the balance or ``max_credits``; nothing was submitted."""


class Action(str, Enum):
    """What the run does with one job."""

    ATTACH = "attach"  # a job id from config: wait for it and read it
    REATTACH = "re-attach"  # an entry's job from an earlier run, still known to the API
    SKIP = "skip"  # read to the end in an earlier run: no request at all
    SUBMIT = "submit"  # an entry with no usable job yet: billed
    REFRESH = "refresh"  # an entry whose job is older than refresh_after: billed again
    BLOCKED = "blocked"  # an earlier submit may have landed unrecorded: failed, not sent


SUBMITTING = frozenset({Action.SUBMIT, Action.REFRESH})


@dataclass(frozen=True)
class PlannedJob:
    """One decision of the plan.

    Attributes:
        action: What to do.
        stream_name: The company stream the job's rows go to.
        job_type: The job family.
        job_id: The job (None for a submit, until it is sent).
        entry: The config entry behind it, if any.
        reason: Why, in words, for the log and the dry run.
        submitted_at: When the journal says the job was submitted (a re-attach found
            there, for the state to remember).
    """

    action: Action
    stream_name: str
    job_type: JobType
    job_id: str | None
    entry: BuildEntry | None
    reason: str
    submitted_at: str | None = None

    @property
    def label(self) -> str:
        """How messages name the job."""
        if self.entry is not None:
            return self.entry.label
        return f"job {self.job_id}"


@dataclass(frozen=True)
class Plan:
    """Every decision of the run, and what the submits among them could cost.

    Attributes:
        jobs: The decisions, in config order.
        credits_left: The balance, read only when something is to be submitted.
        max_credits: The per-run cap.
        budget_problem: Why the submits are refused, or None when they are affordable.
    """

    jobs: tuple[PlannedJob, ...]
    credits_left: float | None
    max_credits: float | None
    budget_problem: str | None

    @property
    def submits(self) -> list[PlannedJob]:
        """The billed decisions."""
        return [job for job in self.jobs if job.action in SUBMITTING]

    def check_budget(self) -> None:
        """Refuse the run before anything is submitted when the budget cannot cover it.

        Raises:
            BudgetError: Naming the shortfall.
        """
        if self.budget_problem is not None:
            raise BudgetError(self.budget_problem)

    def describe(self) -> list[str]:
        """The plan in words: one line per job, then the cost against the budget.

        Returns:
            Lines for a person to read.
        """
        lines = [f"Plan: {len(self.jobs)} job(s)."]
        for job in self.jobs:
            target = f"job {job.job_id}" if job.job_id else "a new job"
            what = f"{job.entry.label}: " if job.entry is not None else ""
            cost = ""
            if job.action in SUBMITTING and job.entry is not None:
                worst = job.entry.worst_case_credits
                cost = (
                    f" (up to {worst:,.0f} credits)"
                    if worst is not None
                    else " (1 credit per company delivered; no upper bound)"
                )
            lines.append(
                f"  {job.action.value:<9} {job.stream_name}: {what}{target}{cost}; {job.reason}"
            )
        if self.submits:
            worst = sum(job.entry.worst_case_credits or 0 for job in self.submits if job.entry)
            left = "unknown" if self.credits_left is None else f"{self.credits_left:,.0f}"
            cap = "none" if self.max_credits is None else f"{self.max_credits:,.0f}"
            lines.append(
                f"Submits: {len(self.submits)}, worst case {worst:,.0f} credits"
                f"{_delivered([job.entry for job in self.submits if job.entry])}; "
                f"balance {left}; max_credits {cap}."
            )
            lines.append(
                f"Budget: REFUSED. {self.budget_problem}"
                if self.budget_problem
                else "Budget: the submits fit the balance and max_credits."
            )
        else:
            lines.append("Submits: none; this run spends no credits on new jobs.")
        return lines


# The families whose entries carry their worst case, and the fields that set it: the
# budget messages name them ("the searches' 'limit'").
_BOUNDED = " and ".join(family.plural for family in FAMILIES if family.bounded)
_SIZE_FIELDS = " / ".join(f"'{family.size_field}'" for family in FAMILIES if family.bounded)


def _unbounded(entries: Sequence[BuildEntry]) -> list[JobFamily]:
    """The families among ``entries`` whose cost nothing in the request bounds."""
    present = {entry.job_type for entry in entries if entry.worst_case_credits is None}
    return [family for family in FAMILIES if family.job_type in present]


def _delivered(entries: Sequence[BuildEntry]) -> str:
    """What a worst case leaves out: the text after it, empty when it leaves out nothing."""
    unbounded = _unbounded(entries)
    if not unbounded:
        return ""
    return f" plus what the {' and '.join(family.plural for family in unbounded)} deliver"


class Planner:
    """Turns config and state into the run's plan; sends no billed request.

    It reads the balance when something is to be submitted, and polls each job that an
    entry remembers, to tell a live job (re-attach) from a gone one (submit again).

    Args:
        settings: The tap's settings.
        api: The job API.
        streams: The selected company streams, by the job family they read.
        partitions: Returns every state partition of a stream (read only).
        now: Wall clock, for ``refresh_after``.
        journal: The submission journal, consulted beside state (None: off).
    """

    def __init__(  # noqa: PLR0913 - the planner's inputs, passed in for tests
        self,
        settings: Settings,
        api: JobAPI,
        streams: Mapping[JobType, str],
        partitions: Callable[[str], Sequence[Mapping[str, t.Any]]],
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        *,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.streams = streams
        self.partitions = partitions
        self.now = now
        self.journal = journal

    def plan(self) -> Plan:
        """Decide, per job, what this run does.

        Returns:
            The plan.
        """
        jobs: list[PlannedJob] = []
        for job_type, stream_name in self.streams.items():
            states = list(self.partitions(stream_name))
            by_id = {_job_id(state): state for state in states}
            for job_id in self.settings.job_ids(job_type):
                if by_id.get(job_id, {}).get("done"):
                    action, reason = Action.SKIP, "read to the end in an earlier run"
                else:
                    action, reason = Action.ATTACH, "configured by id"
                jobs.append(PlannedJob(action, stream_name, job_type, job_id, None, reason))
            jobs.extend(
                self._for_entry(entry, stream_name, states)
                for entry in self.settings.entries
                if entry.job_type is job_type
            )
        jobs = _once_per_job(jobs)
        submits = [job.entry for job in jobs if job.action in SUBMITTING and job.entry]
        sent = self.api.balance().get("credits_left") if submits else None
        credits_left = credit_amount(sent)
        problem = budget_problem(
            submits,
            credits_left=credits_left,
            max_credits=self.settings.max_credits,
            balance_sent=sent,
        )
        return Plan(tuple(jobs), credits_left, self.settings.max_credits, problem)

    def _for_entry(
        self,
        entry: BuildEntry,
        stream_name: str,
        states: Sequence[Mapping[str, t.Any]],
    ) -> PlannedJob:
        def decide(action: Action, job_id: str | None, reason: str) -> PlannedJob:
            return PlannedJob(action, stream_name, entry.job_type, job_id, entry, reason)

        remembered = [state for state in states if state.get("fingerprint") == entry.fingerprint]
        state = (
            max(remembered, key=lambda item: str(item.get("submitted_at", "")))
            if remembered
            else None
        )
        decision = None
        journaled = self.journal.latest(entry) if self.journal is not None else None
        if self.journal is not None and journaled is not None and _newer(journaled, state):
            # Another pipeline, loader or state file bought this request more recently.
            decision = self._from_journal(
                entry, journaled, decide, path=self.journal.path, remembered=state is not None
            )
        if decision is not None or state is None:
            return decision or decide(Action.SUBMIT, None, "new entry")
        job_id = _job_id(state)
        if self._refresh_due(state):
            days = self.settings.refresh_after_days
            return decide(
                Action.REFRESH,
                None,
                f"its job {job_id} is older than refresh_after ({days:g} days)",
            )
        if state.get("done"):
            return decide(
                Action.SKIP, job_id, f"its job {job_id} was read to the end in an earlier run"
            )
        if state.get("failed"):
            return decide(Action.SUBMIT, None, f"its job {job_id} failed in an earlier run")
        try:
            self.api.poll(entry.job_type, job_id, None)
        except NotFoundError:
            return decide(
                Action.SUBMIT, None, f"its job {job_id} is gone (HTTP 404 for this API key)"
            )
        return decide(
            Action.REATTACH, job_id, "submitted in an earlier run, still known to the API"
        )

    def _refresh_due(self, state: Mapping[str, t.Any]) -> bool:
        days = self.settings.refresh_after_days
        when = _when(state.get("submitted_at"))
        if days is None or when is None:
            return False
        return self.now() - when >= dt.timedelta(days=days)

    def _from_journal(
        self,
        entry: BuildEntry,
        journaled: Submission,
        decide: Callable[[Action, str | None, str], PlannedJob],
        *,
        path: Path,
        remembered: bool,
    ) -> PlannedJob | None:
        """Decide from the journal's newer submission, or None to let state decide."""
        where = f"journal {path}"
        if not journaled.confirmed:
            may_submit, why = unconfirmed_decision(
                entry, journaled, path, resubmit=self.settings.resubmit_unconfirmed
            )
            return decide(Action.SUBMIT if may_submit else Action.BLOCKED, None, why)
        job_id = journaled.job_id
        if self._refresh_due({"submitted_at": journaled.submitted_at}):
            days = self.settings.refresh_after_days
            return decide(
                Action.REFRESH,
                None,
                f"its job {job_id} ({where}) is older than refresh_after ({days:g} days)",
            )
        try:
            answer = self.api.poll(entry.job_type, str(job_id), None)
            lost = "failed" if answer.get("status") == "failed" else None
        except NotFoundError:
            lost = "is gone (HTTP 404 for this API key)"
        if lost is not None:
            why = f"its job {job_id} ({where}) {lost}"
            return None if remembered else decide(Action.SUBMIT, None, why)
        reason = f"submitted at {journaled.submitted_at} ({where}), still known to the API"
        return replace(decide(Action.REATTACH, job_id, reason), submitted_at=journaled.submitted_at)


def _when(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _newer(journaled: Submission, state: Mapping[str, t.Any] | None) -> bool:
    """Whether the journal knows a later submission of the request than the state does."""
    if state is None:
        return True
    if journaled.job_id == _job_id(state):
        return False  # the same job: the state knows more (done, failed, position)
    ours, theirs = _when(journaled.submitted_at), _when(state.get("submitted_at"))
    return ours is not None and (theirs is None or ours > theirs)


def _job_id(state: Mapping[str, t.Any]) -> str:
    return str(state["context"]["job_id"])


def _once_per_job(jobs: list[PlannedJob]) -> list[PlannedJob]:
    """A job both configured by id and remembered for an entry is read once."""
    seen: set[str] = set()
    kept = []
    for job in jobs:
        if job.job_id is not None:
            if job.job_id in seen:
                continue
            seen.add(job.job_id)
        kept.append(job)
    return kept


def budget_problem(
    entries: Sequence[BuildEntry],
    *,
    credits_left: float | None,
    max_credits: float | None,
    balance_sent: object = None,
) -> str | None:
    """Why the balance or the cap cannot cover the submits, or None when they can.

    The submits of a run count together: the searches' limits (their worst cases) must
    fit ``max_credits`` and the balance, and a TAM build, which has no worst case, needs
    room left under the cap for at least its first band. A balance that cannot be read
    refuses every submit.

    Args:
        entries: The entries about to be submitted.
        credits_left: The account balance (None: unknown, so nothing may be submitted).
        max_credits: The per-run cap (None: none).
        balance_sent: ``credits_left`` as the API sent it, for the message.

    Returns:
        A message naming the shortfall, or None.
    """
    if not entries:
        return None
    worst = sum(entry.worst_case_credits or 0.0 for entry in entries)
    labels = ", ".join(entry.label for entry in entries)
    unbounded = _unbounded(entries)
    if max_credits is not None and worst > max_credits:
        return (
            f"The {_BOUNDED} about to be submitted ({labels}) could cost up to {worst:,.0f} "
            f"credits, above max_credits ({max_credits:,.0f}). Nothing was submitted. Lower "
            f"their {_SIZE_FIELDS}, or raise 'max_credits'."
        )
    if max_credits is not None and unbounded and worst >= max_credits:
        which = " or a ".join(family.label for family in unbounded)
        noun = " or ".join(family.noun for family in unbounded)
        return (
            f"The jobs about to be submitted ({labels}) include a {which}, but the "
            f"{_BOUNDED} among them could cost up to {worst:,.0f} credits, which leaves "
            f"nothing of max_credits ({max_credits:,.0f}) for the {noun}: it would be "
            "cancelled at its first band. Nothing was submitted. Raise 'max_credits', "
            f"lower the {_BOUNDED}' {_SIZE_FIELDS}, or submit the {noun} in a run of its own."
        )
    if credits_left is None:
        return (
            f"The credits balance answer gives credits_left as {unreadable(balance_sent)}, "
            "not a number of credits, so the tap cannot check that the account covers the "
            f"jobs about to be submitted ({labels}). Nothing was submitted. Check the "
            "balance in OpenFunnel and run again; if the balance endpoint keeps answering "
            "this, ask OpenFunnel support. Jobs already bought can be read meanwhile by "
            f"listing their ids in {settings_text('ids', ' / ')}."
        )
    if worst > credits_left or credits_left <= 0:
        return (
            f"The account has {credits_text(credits_left)} credits left, but the jobs about to be "
            f"submitted ({labels}) could cost up to {worst:,.0f}"
            f"{_delivered(entries)}. Nothing was submitted. "
            f"Top up the account or lower the {_BOUNDED}' {_SIZE_FIELDS}."
        )
    return None
