"""Bounds on what an API answer may hold, checked while it is read.

Each bound is stated in docs/reference.md ("Bounds on API answers"). A body is read in
chunks and given up the moment it passes ``max_response_mib`` (after decompression), so
memory follows the bound, not what the server sends. Inside a body, one value beyond a
bound costs that value (null, and a warning naming the page); a page beyond a bound
(too many rows, a cursor too long to be a page name) ends only its job.
"""

from __future__ import annotations

import typing as t

from tap_openfunnel.exceptions import ApiError, ConfigurationError, MalformedPageError
from tap_openfunnel.logs import redact, shown

if t.TYPE_CHECKING:
    import requests

MIB = 1024 * 1024
# Integers of more digits than Python converts by default (sys.get_int_max_str_digits).
MAX_INTEGER_DIGITS = 4300
# Values nested deeper than this are read as null when the decoders give up on a body
# (both stop near 1,000 levels; a row's fields sit three levels down).
MAX_NESTING = 500
# Longer strings are read as null: far beyond any company field, below every
# warehouse's text limit (BigQuery's 10 MB row the smallest).
MAX_STRING_CHARS = MIB
# The API's pages hold 100 rows; a hundred times that is no page of this API.
MAX_ROWS_PER_PAGE = 10_000
# Cursors and page names are ``page_NNNN``; they go into state and every record.
MAX_CURSOR_CHARS = 256
# Job ids in one config setting.
MAX_JOB_IDS = 10_000
_CHUNK = 64 * 1024
# What the tap asks for (Accept-Encoding) and can inflate a chunk at a time with zlib;
# urllib3 would decode brotli or zstd too, without a bound on older libraries.
ACCEPTED_ENCODINGS = "gzip, deflate"
_BOUNDED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})


class ResponseTooLargeError(ApiError):
    """An answer larger than ``max_response_mib`` once decompressed; not retried."""


def read_capped(response: requests.Response, limit: int, path: str) -> bytes:
    """Read a streamed answer's body, decompressed, giving up once it passes ``limit`` bytes.

    urllib3 inflates at most one chunk's worth of output per read, so a small gzip body
    that would inflate to gigabytes is stopped after ``limit`` bytes plus one chunk. An
    encoding the tap did not ask for is refused unread.
    The body is kept as the response's content (the error paths read it from there).

    Args:
        response: An answer requested with ``stream=True``.
        limit: The most bytes kept.
        path: The request path, for the message.

    Returns:
        The body.

    Raises:
        ResponseTooLargeError: The body passed ``limit``; the connection is closed.
        ApiError: An encoding other than gzip or deflate.
    """
    encodings = response.headers.get("Content-Encoding", "").lower().replace(" ", "")
    if any(encoding not in _BOUNDED_ENCODINGS for encoding in encodings.split(",")):
        response.close()
        msg = (
            f"{path} answered with Content-Encoding {shown(encodings, 40)}, which the tap "
            "did not ask for (it asks for gzip or deflate, the encodings it can inflate "
            "within 'max_response_mib'). Report this to OpenFunnel."
        )
        raise ApiError(msg, status=response.status_code, path=path)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            msg = (
                f"{path} answered with a body larger than {limit / MIB:g} MiB once "
                "decompressed (the 'max_response_mib' setting); the tap stopped reading it "
                "there rather than hold all of it in memory. A page of this API is far "
                "smaller: report it to OpenFunnel, or raise 'max_response_mib' if its pages "
                "really are this large."
            )
            raise ResponseTooLargeError(msg, status=response.status_code, path=path)
        chunks.append(chunk)
    body = b"".join(chunks)
    response._content = body  # noqa: SLF001 - requests' own cache of the body
    return body


def check_page(name: object, next_cursor: object, rows: object) -> None:
    """Refuse a page beyond a page bound: too many rows, or a cursor or name too long.

    Args:
        name: The page name sent.
        next_cursor: The next cursor sent.
        rows: The rows sent.

    Raises:
        MalformedPageError: Naming the bound.
    """
    problem = None
    if isinstance(rows, list) and len(rows) > MAX_ROWS_PER_PAGE:
        problem = (
            f"holds {len(rows)} rows, more than the {MAX_ROWS_PER_PAGE} the tap reads in one page"
        )
    for what, value in (("page name", name), ("next_cursor", next_cursor)):
        if isinstance(value, str) and len(value) > MAX_CURSOR_CHARS:
            problem = (
                f"has a {what} of {len(value)} characters ({shown(value, 40)}), more than "
                f"the {MAX_CURSOR_CHARS} a page name may have"
            )
    if isinstance(next_cursor, str) and redact(next_cursor) != next_cursor:
        problem = (
            "has a next_cursor that holds the API key; the tap will not write it to state "
            "or send it back"
        )
    if problem is not None:
        msg = (
            f"the answer for page {shown(name, 40)} {problem}, so it is not a page the tap "
            "can trust. Report this to OpenFunnel."
        )
        raise MalformedPageError(msg)


def check_job_ids(ids: t.Sized, name: str) -> None:
    """Refuse more job ids in one setting than the tap takes in one run.

    Args:
        ids: The ids as configured.
        name: The setting.

    Raises:
        ConfigurationError: Naming the bound.
    """
    if len(ids) > MAX_JOB_IDS:
        msg = (
            f"Setting '{name}' names {len(ids)} job ids, more than the {MAX_JOB_IDS} the tap "
            "takes in one run. Split them over several configs (or Meltano jobs), each "
            "with its own state."
        )
        raise ConfigurationError(msg)
