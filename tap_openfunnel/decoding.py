"""Decoding API answers from bytes: msgspec first, the json module for what msgspec refuses."""

from __future__ import annotations

import json
import logging
import re
import typing as t

import msgspec

from tap_openfunnel.bounds import MAX_INTEGER_DIGITS, MAX_NESTING, MAX_STRING_CHARS
from tap_openfunnel.logs import redact, secret_in_json, shown

LOGGER = logging.getLogger("tap-openfunnel")


class _PageFields(msgspec.Struct):
    """The fields a page read needs; the rest of a poll answer is skipped unbuilt.

    ``status`` and ``job_id`` are kept so that every page can be checked to still be
    the terminal job asked for.

    Rows stay plain dicts: RowShaper reads them by field name and reports unknown
    fields, which a typed Struct would silently drop.
    """

    rows: t.Any = None
    next_cursor: t.Any = None
    page: t.Any = None
    status: t.Any = None
    job_id: t.Any = None


_OBJECT = msgspec.json.Decoder()
_PAGE = msgspec.json.Decoder(_PageFields)
# A NUL in a JSON string can only be written escaped. A compiled pattern scans a page
# faster than ``bytes.__contains__``, whose skip table the many "u" and "0" of a body
# defeat.
_ESCAPED_NUL = re.compile(rb"\\u0000")


class UndecodableBodyError(ValueError):
    """A 2xx answer whose body is not a JSON object: cut off, not JSON, or another type.

    Args:
        reason: What was wrong, for logs (``incomplete JSON body``...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_object(raw: bytes, where: str = "an API answer") -> dict[str, t.Any]:
    """Decode a body that must be a JSON object; values beyond a bound are read as null.

    Args:
        raw: The body.
        where: What the body is, for the warning about values read as null.

    Returns:
        The object.

    Raises:
        UndecodableBodyError: Cut off, not JSON, or not an object.
    """
    lost = _Lost()
    try:
        body = _OBJECT.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        body = _json_fallback(raw, lost)
    if not isinstance(body, dict):
        reason = "a non-object JSON body"
        raise UndecodableBodyError(reason)
    if len(raw) > MAX_STRING_CHARS or secret_in_json(raw):
        body = _scrub_top(body, lost)
    lost.report(where)
    return t.cast("dict[str, t.Any]", body)


class PageFields(t.NamedTuple):
    """A page answer's fields, and what decoding proved about its text.

    Attributes:
        body: ``rows``, ``next_cursor``, ``page``, ``status`` and ``job_id`` (values as
            sent, None when absent).
        text_checked: Every string is valid UTF-8 without NUL (see
            :func:`decode_page_fields`).
    """

    body: dict[str, t.Any]
    text_checked: bool


def decode_page_fields(raw: bytes, where: str = "a page") -> PageFields:
    """Decode a poll answer into just its page fields (``rows``, ``next_cursor``, ``page``...).

    Skipping the manifest and progress fields saves building objects nobody reads on
    every page after the first. msgspec accepts only valid UTF-8 and refuses lone
    surrogate escapes, so a body it decoded that has no escaped NUL (``u0000``) holds only
    clean text: the record path can skip checking each string (``clean_text``).

    The bounds on values (docs/reference.md) cost nothing on a page within them: a
    string longer than MAX_STRING_CHARS needs a body at least that long, and the API
    key is looked for in the bytes before any value is.

    Args:
        raw: The body.
        where: The job and page, for the warning about values read as null.

    Returns:
        The fields, and whether their text is known clean.

    Raises:
        UndecodableBodyError: Cut off, not JSON, or not an object.
    """
    try:
        fields = _PAGE.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        body = decode_object(raw, where)
        fields_sent = {name: body.get(name) for name in _PageFields.__struct_fields__}
        return PageFields(fields_sent, text_checked=False)
    sent = {name: getattr(fields, name) for name in _PageFields.__struct_fields__}
    if len(raw) > MAX_STRING_CHARS or secret_in_json(raw):
        lost = _Lost()
        sent = _scrub_top(sent, lost)
        lost.report(where)
    return PageFields(sent, text_checked=_ESCAPED_NUL.search(raw) is None)


def _json_fallback(raw: bytes, lost: _Lost) -> object:
    """Decode what msgspec refuses but the json module accepts, as the tap always did.

    msgspec rejects NaN and Infinity literals, numbers beyond float range, lone
    surrogate escapes and bodies not in UTF-8; ``json.loads`` takes them all. An integer
    of more than MAX_INTEGER_DIGITS digits is read as null, and when the body nests too
    deep for the decoder, each value nested deeper than MAX_NESTING is. A body still
    refused is cut off or not JSON: worth another try.
    """

    def bounded_int(digits: str) -> int | None:
        if len(digits) - digits.startswith("-") > MAX_INTEGER_DIGITS:
            lost.digits += 1
            return None
        return int(digits)

    try:
        return json.loads(raw, parse_int=bounded_int)
    except RecursionError:
        flat = _flatten(raw, lost)
    except ValueError:
        flat = None
    if flat is not None:
        try:
            return json.loads(flat, parse_int=bounded_int)
        except (ValueError, RecursionError):
            pass
    reason = "an incomplete JSON body"
    raise UndecodableBodyError(reason) from None


class _Lost:
    """Values of one body read as null, by bound, for one warning."""

    def __init__(self) -> None:
        self.digits = 0
        self.deep = 0
        self.long = 0

    def report(self, where: str) -> None:
        what = [
            f"{count} {text}"
            for count, text in (
                (self.digits, f"integer(s) of more than {MAX_INTEGER_DIGITS} digits"),
                (
                    self.deep,
                    f"value(s) nested more than {MAX_NESTING} levels deep (from that level)",
                ),
                (self.long, f"string(s) longer than {MAX_STRING_CHARS} characters"),
            )
            if count
        ]
        if what:
            LOGGER.warning(
                "%s: %s were read as null (the tap's bounds on values, docs/reference.md); "
                "the rest of the answer was kept.",
                shown(where),
                ", ".join(what),
            )


# A JSON string (escapes included) or a bracket; everything else is skipped.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")


def _flatten(raw: bytes | str, lost: _Lost) -> bytes | None:
    """Replace each array or object nested deeper than MAX_NESTING by ``null``.

    Returns:
        The body rewritten, or None when nothing was nested that deep (or it is not
        text at all).
    """
    data = raw.encode() if isinstance(raw, str) else raw
    pieces: list[bytes] = []
    depth = 0
    kept_from = 0
    cut_at = -1
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token[0] == 0x22:  # a string  # noqa: PLR2004 - the quote byte
            continue
        if token[0] in _OPENING:
            depth += 1
            if depth > MAX_NESTING and cut_at < 0:
                cut_at = match.start()
        else:
            depth -= 1
            if cut_at >= 0 and depth == MAX_NESTING:
                pieces.extend((data[kept_from:cut_at], b"null"))
                kept_from = match.end()
                cut_at = -1
                lost.deep += 1
    if not pieces:
        return None
    pieces.append(data[kept_from:])
    return b"".join(pieces)


def _scrub_top(body: dict[str, t.Any], lost: _Lost) -> dict[str, t.Any]:
    """Hide the API key in every string and key, and null strings too long, in place.

    The answer's own fields (status, page) are kept whole for the checks that read
    them, the key hidden; next_cursor is kept as sent: a cursor holding the key is
    refused where the page is read (bounds.check_page), not followed as "***". The walk
    keeps its own stack: a value nested as deep as the decoder allows must not exhaust
    Python's.
    """
    stack: list[list[t.Any] | dict[t.Any, t.Any]] = []
    for key, value in body.items():
        if isinstance(value, str) and key != "next_cursor":
            body[key] = redact(value)
        elif isinstance(value, (list, dict)):
            stack.append(value)
    while stack:
        _scrub_node(stack.pop(), lost, stack)
    return body


def _scrub_node(node: list[t.Any] | dict[t.Any, t.Any], lost: _Lost, stack: list[t.Any]) -> None:
    """One container of :func:`_scrub_top`'s walk; the containers inside go on ``stack``."""
    if isinstance(node, dict):
        if any(isinstance(key, str) and redact(key) != key for key in node):
            renamed = [(redact(key), value) for key, value in node.items()]
            node.clear()
            node.update(renamed)
        slots: t.Iterable[t.Any] = list(node.items())
    else:
        slots = enumerate(node)
    for slot, value in slots:
        if isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                lost.long += 1
                node[slot] = None
            else:
                node[slot] = redact(value)
        elif isinstance(value, (list, dict)):
            stack.append(value)
