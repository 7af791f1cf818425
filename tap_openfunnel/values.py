"""Row values to their schema types: what is taken as sent, how the rest is coerced."""

from __future__ import annotations

import json
import math
import typing as t

import msgspec

from tap_openfunnel.safe_values import clean_text

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# The bounds every integer field of schemas/*.json declares: with them, targets create
# 64-bit columns (BIGINT, INT64) instead of 128-bit ones (DuckDB's HUGEINT), and a value
# outside them, which such a column could not hold, becomes null instead of failing a load.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _in_range(number: int) -> int | None:
    return number if INT64_MIN <= number <= INT64_MAX else None


def to_int(value: object) -> int | None:
    """An integer within 64 bits, read from a number or a numeric string; else None."""
    if isinstance(value, bool):
        return None  # true is not a number of employees
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        try:
            return _in_range(int(text))
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return _in_range(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return _in_range(int(value))
    return None


def to_number(value: object) -> float | None:
    """A finite number, read from a number or a numeric string; else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def to_string(value: object) -> str | None:
    """Clean text; any other JSON value becomes its JSON text (``true``, ``12``, ``{...}``).

    JSON text, not Python's: a boolean the API sent lands as ``true``, as a reader of
    the API would write it, not ``True``.
    """
    if isinstance(value, str):
        return clean_text(value)
    try:
        return clean_text(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return None  # nested too deep to be data


def to_boolean(value: object) -> bool | None:
    """A boolean, read from a boolean, a number or ``"true"``/``"false"``; else None."""
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)):
        return bool(value)
    return None


def to_string_list(value: object) -> list[str] | None:
    """A list of strings: one string becomes a list of it, other items their text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        # A null inside a list of strings carries nothing; other items become their
        # JSON text, and one nested too deep to be data is left out as a null is.
        texts = (to_string(item) for item in value if item is not None)
        return [text for text in texts if text is not None]
    return None


# The Python types a value of each schema type is taken in as sent (before clean_text).
EXACT: dict[str, tuple[type, ...]] = {
    # Never taken as is: an int may lie outside the 64-bit bounds.
    "integer": (),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    # Never taken as is: the items of a list must be checked too.
    "array": (),
}
COERCE: dict[str, Callable[[object], object]] = {
    "integer": to_int,
    "number": to_number,
    "string": to_string,
    "boolean": to_boolean,
    "array": to_string_list,
}

_Int64 = t.Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
# The values each schema type takes as sent, for msgspec: exactly those the coercers
# above return unchanged (a 64-bit int, a list of strings...). Null is always taken.
_AS_SENT: dict[str, t.Any] = {
    "integer": _Int64,
    "number": int | float,
    "string": str,
    "boolean": bool,
    "array": list[str],
}


def kind_of(schema: Mapping[str, t.Any]) -> str:
    """The schema type of a property: its ``type``, or the first that is not null.

    Args:
        schema: The property's JSON Schema.

    Returns:
        The type's name (``string`` when none is given).
    """
    types = schema.get("type", "string")
    if isinstance(types, str):
        return types
    return next((kind for kind in types if kind != "null"), "string")


def rows_as_sent_type(kinds: Mapping[str, str]) -> t.Any:  # noqa: ANN401 - a msgspec type
    """The msgspec type of a page's rows that need no coercion at all, or None.

    ``msgspec.convert(rows, type)`` checks a whole page in C: it passes only when every
    row is an object whose fields are all named by the schema, each null or of its
    schema type as the coercers would keep it (an integer within 64 bits, a list of
    strings only). Such rows become records without a look at each value. Fields the
    schema does not name fail it, and so does a row of any other shape.

    Args:
        kinds: The schema type of each row field, by name.

    Returns:
        ``list[Row]`` for a msgspec Struct ``Row``, or None when a field's schema type
        has no such check (its rows always take the value-by-value path).
    """
    if not kinds or any(kind not in _AS_SENT for kind in kinds.values()):
        return None
    # Attributes of their own, each renamed to its field: a field name need not be a
    # Python identifier.
    slots = {f"field_{index}": name for index, name in enumerate(kinds)}
    row = msgspec.defstruct(
        "RowAsSent",
        [(slot, _AS_SENT[kinds[name]] | None, None) for slot, name in slots.items()],
        rename=slots,
        forbid_unknown_fields=True,
    )
    return list[row]  # type: ignore[valid-type]
