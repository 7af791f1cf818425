"""Keeping the API key out of every log line, whatever logger emits it."""

from __future__ import annotations

import logging

_MASK = "***"


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
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(
            isinstance(existing, RedactingFilter) and existing.secret == secret
            for existing in handler.filters
        ):
            handler.addFilter(RedactingFilter(secret))
