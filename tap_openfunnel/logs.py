"""Log hygiene: the API key out of every line, and no noise before the tap's own error."""

from __future__ import annotations

import json
import logging
import sys
from urllib.parse import quote

from tap_openfunnel.exceptions import OpenFunnelError

_MASK = "***"
_SECRET_FORMS: tuple[str, ...] = ()
# Logged by the SDK's Stream.sync (singer_sdk/streams/core.py) for any exception.
_SDK_STREAM_ERROR = "An unhandled error occurred while syncing '%s'"


class RedactingFilter(logging.Filter):
    """Replaces a secret in a log record's message and traceback text.

    The key travels only in a request header and the tap never formats it into a
    message; this filter is the second line of defence, for third-party loggers
    (urllib3 at DEBUG, say) and anything unforeseen.

    Args:
        secret: The text to hide.
    """

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.forms = secret_forms(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the secret in place; never drops a record.

        Args:
            record: The log record.

        Returns:
            Always True.
        """
        message = record.getMessage()
        redacted = redact(message, self.forms)
        if redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.forms)
        return True


def secret_forms(secret: str) -> tuple[str, ...]:
    """The secret as it may appear in text: as is, escaped (repr, JSON) and URL-quoted.

    Args:
        secret: The text to hide.

    Returns:
        Every distinct non-empty form, longest first.
    """
    forms = {
        secret,
        secret.encode("unicode_escape", "backslashreplace").decode("ascii"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
    }
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))


def redact(text: str, forms: tuple[str, ...] | None = None) -> str:
    """Hide every form of the installed secret in ``text`` (server text included).

    Args:
        text: Any text.
        forms: The forms to hide (default: those of the installed secret).

    Returns:
        The text with each form replaced by ``***``.
    """
    for form in _SECRET_FORMS if forms is None else forms:
        if form in text:
            text = text.replace(form, _MASK)
    return text


def install_secret_filter(secret: str) -> None:
    """Attach a redacting filter to every handler that exists now (idempotent).

    Args:
        secret: The text to hide.
    """
    global _SECRET_FORMS  # noqa: PLW0603 - one secret per process, set once
    if not secret:
        return
    _SECRET_FORMS = secret_forms(secret)
    for handler in _handlers():
        if not any(
            isinstance(existing, RedactingFilter) and existing.secret == secret
            for existing in handler.filters
        ):
            handler.addFilter(RedactingFilter(secret))


class ReportedErrorFilter(logging.Filter):
    """Drops the SDK's "An unhandled error occurred while syncing" line for the tap's errors.

    The SDK logs that line at ERROR for any exception leaving a stream, before the
    exception reaches the CLI. For an ``OpenFunnelError`` the CLI then prints the one
    paragraph that says what is wrong and what to do, so the SDK's line is only noise.
    It is logged inside the SDK's ``except`` block, so the exception in flight is the
    one it is about. Any other exception (a bug) keeps the line and its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but the SDK's line about an error the tap reports itself.

        Args:
            record: The log record.

        Returns:
            False to drop the record.
        """
        if record.msg != _SDK_STREAM_ERROR:
            return True
        return not isinstance(sys.exc_info()[1], OpenFunnelError)


def install_reported_error_filter() -> None:
    """Attach a :class:`ReportedErrorFilter` to every handler that exists now (idempotent)."""
    for handler in _handlers():
        if not any(isinstance(existing, ReportedErrorFilter) for existing in handler.filters):
            handler.addFilter(ReportedErrorFilter())


def _handlers() -> list[logging.Handler]:
    # Handler filters see records from every logger, child loggers included (a logger's
    # own filters see only records created on it).
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    return handlers
