"""Whether each answer read while walking a job's pages is still the finished job asked for."""

from __future__ import annotations

import typing as t

from tap_openfunnel.exceptions import JobError

if t.TYPE_CHECKING:
    from tap_openfunnel.pagination import Page

_SHOWN = 60  # characters of an API value quoted in a message


class AnswerMismatchError(JobError):
    """An answer is not the terminal job asked for: another job, or one no longer finished."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}..."


def _where(cursor: str | None) -> str:
    return f"page {cursor!r}" if cursor else "the first page"


def check_job_id(job_id: str, answered: object, cursor: str | None) -> None:
    """Refuse an answer that names another job (an answer without ``job_id`` is not refused).

    Args:
        job_id: The job asked for.
        answered: The answer's ``job_id`` as sent.
        cursor: The page asked for (None: the first).

    Raises:
        AnswerMismatchError: The answer is another job's.
    """
    if answered is None or answered == job_id:
        return
    msg = (
        f"Job {job_id}: the answer for {_where(cursor)} is for job {_shown(answered)}, "
        "not this one, so its rows and status cannot be taken as this job's. The tap "
        "stopped reading this job there and did not mark it done; the rows before that "
        "page were delivered and state keeps the page, so the next run asks again."
    )
    raise AnswerMismatchError(job_id, msg)


def check_page(job_id: str, terminal_status: str, page: Page, cursor: str | None) -> None:
    """Check a page answer before any of its rows go out: the same job, still as finished.

    The job's status is part of every poll answer, pages included. Reading began
    because the job was terminal; a later page that says otherwise (``running`` with
    no rows, ``failed``, ``cancelled`` after ``completed``, or no status at all) may
    come from a set that is not final, and the walk must not end on it as if the
    job were read whole.

    Args:
        job_id: The job asked for.
        terminal_status: The status the job had when reading began.
        page: The page just read.
        cursor: The page asked for (None: the first).

    Raises:
        AnswerMismatchError: Another job's answer, or a status other than
            ``terminal_status``.
    """
    check_job_id(job_id, page.job_id, cursor)
    if page.status == terminal_status:
        return
    status = _shown(page.status) if page.status is not None else "missing"
    msg = (
        f"Job {job_id}: the answer for {_where(cursor)} gives the job's status as "
        f"{status}, though it was {terminal_status!r} when reading began, so its pages "
        "may not be the whole, final set. The tap stopped reading this job there and did "
        "not mark it done: the rows before that page were delivered and state keeps the "
        "page, so the next run waits until the job is terminal again and resumes there."
    )
    raise AnswerMismatchError(job_id, msg)
