"""What a journal row says about a submit, and what a run does about an unconfirmed one."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from tap_openfunnel.exceptions import (
    AmbiguousSubmitError,
    ApiError,
    OpenFunnelError,
    RetriesExhaustedError,
    UnreachableError,
)
from tap_openfunnel.families import BY_TYPE

if t.TYPE_CHECKING:
    from pathlib import Path

    from tap_openfunnel.entries import BuildEntry

INTENT = "intent"  # written (and on disk) before the POST: the job may exist
SUBMITTED = "submitted"  # OpenFunnel answered with this job id
NOT_SENT = "not_sent"  # the POST surely created no job (refused, never sent)
# Not stored: an intent whose run holds the lock right now, its answer still to come.
IN_FLIGHT = "in_flight"
_HTTP_CLIENT_ERRORS = range(400, 500)
# What the client says to do after a submit that may have landed, and what holds with
# the journal, which keeps that submit as unconfirmed.
_RUN_AGAIN = "Otherwise run the tap again."
_RESUBMIT_ONCE = (
    "Otherwise allow one new submit: run once with 'unconfirmed_submits' set to "
    "'resubmit' (a plain re-run fails this entry rather than risk buying it twice)."
)


class UnconfirmedSubmitError(OpenFunnelError):
    """An earlier submit of the entry never got its answer recorded: it may be billed."""


@dataclass(frozen=True)
class Submission:
    """One row of the journal.

    Attributes:
        row_id: Its place in the journal (later rows have larger ids).
        entry: How messages named the entry when it was submitted.
        job_id: The job OpenFunnel created (None while only the intent is known).
        submitted_at: When the submit was started, ISO 8601.
        status: ``intent``, ``submitted`` or ``not_sent`` (``in_flight``: an intent
            whose run is submitting it right now).
    """

    row_id: int
    entry: str
    job_id: str | None
    submitted_at: str
    status: str

    @property
    def confirmed(self) -> bool:
        """OpenFunnel's answer, with the job id, is recorded."""
        return self.status == SUBMITTED and bool(self.job_id)


def resubmit_hint(message: str) -> str:
    """A may-have-landed submit's message, with the way out the journal accepts.

    Args:
        message: The client's message.

    Returns:
        The message, its "run again" replaced by one resubmit on purpose.
    """
    return message.replace(_RUN_AGAIN, _RESUBMIT_ONCE)


def surely_not_created(error: ApiError) -> bool:
    """Whether a failed submit certainly created no job (so its intent can be dropped).

    Args:
        error: What the submit raised.

    Returns:
        True for an answer refusing the request, or a request that was never sent.
    """
    if isinstance(error, AmbiguousSubmitError):
        return False
    if isinstance(error, (RetriesExhaustedError, UnreachableError)):
        return True
    return error.status in _HTTP_CLIENT_ERRORS


def unconfirmed_decision(
    entry: BuildEntry, intent: Submission, path: Path, *, resubmit: bool
) -> tuple[bool, str]:
    """What to do with an entry whose newest journal row has no job id.

    Args:
        entry: The config entry.
        intent: That row.
        path: The journal.
        resubmit: ``unconfirmed_submits`` is ``resubmit`` (at least once).

    Returns:
        Whether the entry may be submitted, and why (the paragraph when it may not).
    """
    if intent.status == IN_FLIGHT:
        return True, (
            f"another run is submitting it right now (journal {path}); this run waits "
            "for that submit and re-attaches to its job"
        )
    if resubmit:
        return True, (
            f"its submit at {intent.submitted_at} was never confirmed (journal {path}); "
            "unconfirmed_submits is 'resubmit'"
        )
    return False, unconfirmed_message(entry, intent, path)


def unconfirmed_message(entry: BuildEntry, intent: Submission, path: Path) -> str:
    """The paragraph for an entry whose last submit may have been bought unseen.

    Args:
        entry: The config entry.
        intent: Its journal row without a job id.
        path: The journal.

    Returns:
        What happened and the two ways out.
    """
    ids = BY_TYPE[entry.job_type].ids_setting
    return (
        f"{entry.label} was being submitted at {intent.submitted_at} when that run stopped "
        "before OpenFunnel's answer was recorded, so a job may exist and be billed "
        f"(journal {path}). It is not submitted again on its own. Either find that job in "
        f"OpenFunnel, list its id in '{ids}' and remove the entry from '{entry.setting}' "
        "(the job is then read, nothing is submitted); or, if no job was created, allow "
        "one new submit by running once with 'unconfirmed_submits' set to 'resubmit' "
        "(TAP_OPENFUNNEL_UNCONFIRMED_SUBMITS=resubmit)."
    )
