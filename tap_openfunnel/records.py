"""Turning API rows into records that match the stream schema, cheaply and without loss."""

from __future__ import annotations

import json
import logging
import math
import typing as t

from tap_openfunnel.logs import redact

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

LOGGER = logging.getLogger("tap-openfunnel")

# Fields the tap adds to every company record; the rest come from the API's row.
ADDED_FIELDS = ("job_id", "page", "rank")


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


def _to_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None  # true is not a number of employees
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if math.isfinite(number) and number.is_integer() else None
    return None


def _to_number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _to_string(value: object) -> str | None:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (dict, list)):
        try:
            return clean_text(json.dumps(value, ensure_ascii=False))
        except (ValueError, RecursionError):
            return None  # nested too deep to be data
    return str(value)


def _to_boolean(value: object) -> bool | None:
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)):
        return bool(value)
    return None


def _to_string_list(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        # A null inside a list of strings carries nothing; other items become text.
        return [
            clean_text(item) if isinstance(item, str) else str(_to_string(item))
            for item in value
            if item is not None
        ]
    return None


_EXACT: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    # Never taken as is: the items of a list must be checked too.
    "array": (),
}
_COERCE: dict[str, Callable[[object], object]] = {
    "integer": _to_int,
    "number": _to_number,
    "string": _to_string,
    "boolean": _to_boolean,
    "array": _to_string_list,
}


def _kind(schema: Mapping[str, t.Any]) -> str:
    types = schema.get("type", "string")
    if isinstance(types, str):
        return types
    return next((kind for kind in types if kind != "null"), "string")


class RowShaper:
    """Builds records from rows: known fields only, types coerced, losses counted.

    Decisions for odd data (the README's "Odd data" section documents them):
    a missing field becomes null; a number sent as a string is parsed; a value that
    cannot be coerced becomes null and is counted; unknown extra fields are dropped
    from the record and their names reported once per job.

    Args:
        schema: The stream's JSON Schema.
    """

    def __init__(self, schema: Mapping[str, t.Any]) -> None:
        properties: Mapping[str, t.Any] = schema["properties"]
        self.fields = tuple(name for name in properties if name not in ADDED_FIELDS)
        self._known = frozenset(properties)
        self._kinds = {name: _kind(properties[name]) for name in self.fields}
        self._exact = {name: _EXACT.get(kind, (object,)) for name, kind in self._kinds.items()}
        self.unknown_fields: set[str] = set()
        self.nulled: dict[str, int] = {}

    def records(
        self,
        rows: list[dict[str, t.Any]],
        *,
        job_id: str,
        page: str,
        first_rank: int,
    ) -> Iterator[dict[str, t.Any]]:
        """Yield one record per row, ranked from ``first_rank``.

        Args:
            rows: The page's rows.
            job_id: The job they belong to.
            page: The page name they came from.
            first_rank: The rank of the first row.

        Yields:
            Records ready for the stream.
        """
        fields = self.fields
        exact = self._exact
        known = self._known
        for rank, row in enumerate(rows, start=first_rank):
            record: dict[str, t.Any] = {"job_id": job_id, "page": page, "rank": rank}
            for name in fields:
                value = row.get(name)
                if value is not None:
                    if type(value) not in exact[name]:
                        value = self._coerce(name, value)
                    elif type(value) is str and ("\x00" in value or not value.isascii()):
                        value = clean_text(value)
                record[name] = value
            if len(row) > len(fields) or not known.issuperset(row):
                self.unknown_fields.update(key for key in row if key not in known)
            yield record

    def conform(self, values: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Shape a record built by the tap itself (the jobs stream) the same way.

        Args:
            values: Field values, possibly of the wrong JSON type.

        Returns:
            A record with every schema field, values of their schema type or null.
        """
        record: dict[str, t.Any] = {}
        for name in self._kinds:
            value = values.get(name)
            if value is not None and type(value) not in self._exact[name]:
                value = self._coerce(name, value)
            if isinstance(value, str):
                # Server text (status, messages) may quote anything, the key included.
                value = redact(clean_text(value))
            record[name] = value
        for name in ADDED_FIELDS:
            if name in values:
                record[name] = values[name]
        return record

    def _coerce(self, name: str, value: object) -> object:
        kind = self._kinds[name]
        if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
            return value
        coercer = _COERCE.get(kind)
        coerced = coercer(value) if coercer is not None else value
        if coerced is None:
            self.nulled[name] = self.nulled.get(name, 0) + 1
        return coerced

    def report(self, job_id: str) -> None:
        """Log, once per job, what was dropped or nulled, then reset the counters.

        Args:
            job_id: The job just read.
        """
        if self.unknown_fields:
            LOGGER.info(
                "Job %s: the API sent fields the schema does not have (%s); they are not "
                "in the records. Upgrade the tap if you need them.",
                job_id,
                ", ".join(sorted(self.unknown_fields)),
            )
        if self.nulled:
            LOGGER.warning(
                "Job %s: values that could not be read as their schema type were set to null: %s.",
                job_id,
                ", ".join(f"{name} x{count}" for name, count in sorted(self.nulled.items())),
            )
        self.unknown_fields = set()
        self.nulled = {}
