"""Values from the API made safe for every target: text, and JSON kept as it came."""

from __future__ import annotations

import math
import typing as t

from tap_openfunnel.logs import redact

# Bounds for kept values: nesting deeper than any JSON target needs, and a size far
# below every warehouse's JSON/VARIANT limit (Snowflake's 16 MB the smallest).
MAX_KEPT_DEPTH = 10
MAX_KEPT_CHARS = 256 * 1024
DEEP_MARKER = f"[dropped by tap-openfunnel: nested deeper than {MAX_KEPT_DEPTH} levels]"
LARGE_MARKER = f"[dropped by tap-openfunnel: over {MAX_KEPT_CHARS} characters of kept fields]"


def clean_text(text: str) -> str:
    """Make server text safe for every target: valid UTF-8, no NUL characters.

    A lone surrogate cannot be encoded (the writer would crash on it) and PostgreSQL's
    text type rejects NUL; both come only from a broken or hostile answer.

    Args:
        text: A string from the API.

    Returns:
        The string with lone surrogates replaced by U+FFFD and NUL removed.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def keep_json(value: object) -> tuple[t.Any, int]:
    """Make a JSON value the API sent safe to keep in a JSON column as it came.

    Strings become valid UTF-8 without NUL and with the API key hidden; non-finite
    numbers become null (no JSON target reads NaN); containers nested deeper than
    MAX_KEPT_DEPTH, and whatever follows once MAX_KEPT_CHARS have been kept, are
    replaced by a marker string.

    Args:
        value: A decoded JSON value.

    Returns:
        The safe value and how many values were replaced by a marker.
    """
    keeper = _Keeper()
    return keeper.value(value, 0), keeper.dropped


class _Keeper:
    """One walk of :func:`keep_json`: the characters still allowed and the values cut."""

    def __init__(self) -> None:
        self.budget = MAX_KEPT_CHARS
        self.dropped = 0

    def text(self, item: str, overhead: int = 2) -> str:
        # Characters as JSON writes them, roughly: quotes, and for keys ": " and ", ".
        self.budget -= len(item) + overhead
        return redact(clean_text(item))

    def value(self, item: object, depth: int) -> object:
        if isinstance(item, str):
            if len(item) + 2 > self.budget:
                # Nothing after the cut is kept either: one marker per cut, not per value.
                self.budget = 0
                self.dropped += 1
                return LARGE_MARKER
            return self.text(item)
        if isinstance(item, (dict, list)):
            if depth >= MAX_KEPT_DEPTH:
                self.dropped += 1
                return DEEP_MARKER
            return self.mapping(item, depth) if isinstance(item, dict) else self.array(item, depth)
        self.budget -= 8
        if isinstance(item, float) and not math.isfinite(item):
            return None
        # json.loads makes nothing else; anything else is not JSON and not kept.
        return item if item is None or isinstance(item, (bool, int, float)) else None

    def array(self, items: list[object], depth: int) -> list[object]:
        kept: list[object] = []
        for index, element in enumerate(items):
            if self.budget <= 0:
                self.dropped += len(items) - index
                kept.append(LARGE_MARKER)
                break
            kept.append(self.value(element, depth + 1))
        return kept

    def mapping(self, fields: dict[t.Any, object], depth: int) -> dict[str, object]:
        kept: dict[str, object] = {}
        for index, (key, element) in enumerate(fields.items()):
            if self.budget <= 0:
                self.dropped += len(fields) - index
                kept[self.text(str(key), 4)] = LARGE_MARKER
                break
            kept[self.text(str(key), 4)] = self.value(element, depth + 1)
        return kept
