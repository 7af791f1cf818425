"""Log hygiene: the API key out of every line, and no noise before the tap's own error."""

from __future__ import annotations

import logging
import sys
import typing as t

from tap_openfunnel.exceptions import OpenFunnelError

_MASK = "***"
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

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the secret in place; never drops a record.

        Args:
            record: The log record.

        Returns:
            Always True.
        """
        message = record.getMessage()
        if self.secret in message:
            record.msg = message.replace(self.secret, _MASK)
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.secret in record.exc_text:
            record.exc_text = record.exc_text.replace(self.secret, _MASK)
        return True


def install_secret_filter(secret: str) -> None:
    """Attach a redacting filter to every handler that exists now (idempotent).

    Args:
        secret: The text to hide.
    """
    if not secret:
        return
    _install(
        lambda f: isinstance(f, RedactingFilter) and f.secret == secret, RedactingFilter(secret)
    )


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
    _install(lambda f: isinstance(f, ReportedErrorFilter), ReportedErrorFilter())


def _install(exists: t.Callable[[t.Any], bool], new: logging.Filter) -> None:
    # Handler filters see records from every logger, child loggers included (a logger's
    # own filters see only records created on it).
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(exists(existing) for existing in handler.filters):
            handler.addFilter(new)
