"""Log hygiene: the API key out of every line, and no noise before the tap's own error."""

from __future__ import annotations

import json
import logging
import re
import sys
from urllib.parse import quote

from tap_openfunnel.exceptions import OpenFunnelError

_MASK = "***"
_SECRET_FORMS: tuple[str, ...] = ()
_SECRET_IN_JSON: tuple[bytes, re.Pattern[bytes], re.Pattern[bytes]] | None = None
# The longest piece of API text a log line or message quotes (see docs/reference.md).
MAX_SHOWN_CHARS = 200
# C0 and C1 controls (newlines and ANSI escapes among them), and the Unicode line
# separators and direction overrides that make a terminal show other text than sent.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
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


def shown(text: object, limit: int = MAX_SHOWN_CHARS) -> str:
    r"""Text from the API made fit to quote in a log line or message.

    Control characters (line breaks, ANSI escapes, C1 codes) and the Unicode line
    separators and direction overrides are written as escapes (``\x0a``,
    ``\x1b``, ``\u202e``), so server text cannot start a line of its own or recolour
    the terminal; the text is cut to ``limit`` characters (and says so) and the API key
    is hidden.

    Args:
        text: A value from an API answer (a string, or anything with a ``str``).
        limit: The most characters kept.

    Returns:
        One line of at most about ``limit`` characters.
    """
    value = redact(text if isinstance(text, str) else str(text))
    whole = len(value)
    if whole > limit:
        value = value[:limit]
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(_escape, value)
    return f"{value}... ({whole} characters, cut)" if whole > limit else value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"  # noqa: PLR2004 - one byte


def secret_in_json(raw: bytes) -> bool:
    r"""Whether a JSON text may hold the installed secret in one of its strings.

    Each character of the secret may be written as itself or as a ``\uXXXX`` escape
    (and ``/`` as ``\/``): one scan of the bytes finds every spelling, so a server
    cannot slip the key past redaction by escaping it.

    Args:
        raw: A JSON body.

    Returns:
        True when some string may decode to text holding the secret.
    """
    if _SECRET_IN_JSON is None:
        return False
    literal, escapes, spellings = _SECRET_IN_JSON
    if literal in raw:
        return True
    # Cheap first: without an escape a printable ASCII character can have, only the
    # literal spelling was possible. Most pages stop here.
    return escapes.search(raw) is not None and spellings.search(raw) is not None


def _json_spellings(secret: str) -> tuple[bytes, re.Pattern[bytes], re.Pattern[bytes]]:
    # The key is printable ASCII (settings refuse anything else): each character is
    # itself, a \\uXXXX escape in either case of hex digit, or for three of them \\c.
    escapes = [rb"\\u00[2-7]"] + [re.escape(b"\\" + c.encode()) for c in '/"\\' if c in secret]
    parts = []
    for char in secret:
        hexed = f"{ord(char):04x}"
        options = [
            re.escape(char.encode()),
            rb"\\u" + b"".join(b"[%b%b]" % (h.encode(), h.upper().encode()) for h in hexed),
        ]
        if char in {"/", '"', "\\"}:
            options.append(re.escape(b"\\" + char.encode()))
        parts.append(b"(?:" + b"|".join(options) + b")")
    return secret.encode(), re.compile(b"|".join(escapes)), re.compile(b"".join(parts))


def install_secret_filter(secret: str) -> None:
    """Attach a redacting filter to every handler that exists now (idempotent).

    Args:
        secret: The text to hide.
    """
    global _SECRET_FORMS, _SECRET_IN_JSON  # noqa: PLW0603 - one secret per process, set once
    if not secret:
        return
    _SECRET_FORMS = secret_forms(secret)
    _SECRET_IN_JSON = _json_spellings(secret)
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
