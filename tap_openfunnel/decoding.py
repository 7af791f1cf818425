"""Decoding API answers from bytes: msgspec first, the json module for what msgspec refuses."""

from __future__ import annotations

import json
import typing as t

import msgspec


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


class UndecodableBodyError(ValueError):
    """A 2xx answer whose body is not a JSON object: cut off, not JSON, or another type.

    Args:
        reason: What was wrong, for logs (``incomplete JSON body``...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_object(raw: bytes) -> dict[str, t.Any]:
    """Decode a body that must be a JSON object.

    Args:
        raw: The body.

    Returns:
        The object.

    Raises:
        UndecodableBodyError: Cut off, not JSON, or not an object.
    """
    try:
        body = _OBJECT.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        body = _json_fallback(raw)
    if not isinstance(body, dict):
        reason = "a non-object JSON body"
        raise UndecodableBodyError(reason)
    return body


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


def decode_page_fields(raw: bytes) -> PageFields:
    """Decode a poll answer into just its page fields (``rows``, ``next_cursor``, ``page``...).

    Skipping the manifest and progress fields saves building objects nobody reads on
    every page after the first. msgspec accepts only valid UTF-8 and refuses lone
    surrogate escapes, so a body it decoded that has no escaped NUL (``u0000``) holds only
    clean text: the record path can skip checking each string (``clean_text``).

    Args:
        raw: The body.

    Returns:
        The fields, and whether their text is known clean.

    Raises:
        UndecodableBodyError: Cut off, not JSON, or not an object.
    """
    try:
        fields = _PAGE.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        body = decode_object(raw)
        fields_sent = {name: body.get(name) for name in _PageFields.__struct_fields__}
        return PageFields(fields_sent, text_checked=False)
    return PageFields(
        {name: getattr(fields, name) for name in _PageFields.__struct_fields__},
        text_checked=b"\\u0000" not in raw,
    )


def _json_fallback(raw: bytes) -> object:
    """Decode what msgspec refuses but the json module accepts, as the tap always did.

    msgspec rejects NaN and Infinity literals, numbers beyond float range, lone
    surrogate escapes and bodies not in UTF-8; ``json.loads`` takes them all. A body
    neither accepts is cut off, not JSON, or nested too deep to decode: worth another try.
    """
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        reason = "an incomplete JSON body"
        raise UndecodableBodyError(reason) from None
