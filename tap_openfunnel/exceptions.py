"""Errors the tap raises, each carrying a message a user can act on."""

from __future__ import annotations

import typing as t


class OpenFunnelError(Exception):
    """Base class: the message is one paragraph saying what is wrong and what to do."""


class ConfigurationError(OpenFunnelError):
    """The tap's settings are invalid; nothing was sent to the API."""


class RunNotPreparedError(OpenFunnelError):
    """A stream was asked for records before the run was planned and prepared."""


class ApiError(OpenFunnelError):
    """The API answered with an error the tap does not retry.

    Args:
        message: What went wrong and what to do.
        status: The HTTP status, or None when no answer arrived.
        path: The request path (never the key, which travels in a header).
    """

    def __init__(self, message: str, *, status: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class AuthenticationError(ApiError):
    """401/403: the API key was refused."""


class NotFoundError(ApiError):
    """404: the job id is unknown for this API key (or has expired)."""


class ConflictError(ApiError):
    """409: the job has already finished (cancel/resume of a terminal job)."""


class RejectedRequestError(ApiError):
    """400/422: the API rejected the input."""


class InsufficientCreditsError(ApiError):
    """402, or 400 with a credits error code: the account cannot pay for the request."""


class RetriesExhaustedError(ApiError):
    """A retriable failure (429, 5xx, network) outlasted the retry budget."""


class UnreachableError(ApiError):
    """No connection could be opened, and the retry policy says not to retry that."""


class MalformedPageError(ApiError):
    """A poll answer whose page cannot be read (``rows`` is not a list, say)."""


class AmbiguousSubmitError(ApiError):
    """A submit failed after it may have reached the server: a job may exist."""


class JobError(OpenFunnelError):
    """A problem with one job; other jobs in the run go on.

    Args:
        job_id: The job concerned.
        message: What went wrong and what to do.
    """

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailedError(JobError):
    """The job ended with status ``failed``."""


class JobTimeoutError(JobError):
    """The job was not terminal within ``job_timeout``."""


class JobNotFoundError(JobError):
    """The API does not know the job for this key."""


class PageSequenceError(JobError):
    """The pages of a terminal job could not be walked (a repeating cursor, say).

    Args:
        job_id: The job concerned.
        message: What went wrong and what to do.
        page: A page whose rows are sound but whose ``next_cursor`` cannot be followed:
            its rows may go out, but state must not move past it.
    """

    def __init__(self, job_id: str, message: str, page: t.Any = None) -> None:  # noqa: ANN401 - a Page; typed loosely to keep this module free of imports
        super().__init__(job_id, message)
        self.page = page


class RowCountMismatchError(JobError):
    """Rows read disagree with the manifest and ``strict_row_count`` is on."""


class ChangedShapeError(JobError):
    """A page's rows lack the fields that identify a company and ``strict_row_shape`` is on."""
