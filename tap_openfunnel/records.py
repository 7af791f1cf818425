"""Turning API rows into records that match the stream schema, cheaply and without loss."""

from __future__ import annotations

import logging
import typing as t

import msgspec

from tap_openfunnel.exceptions import ChangedShapeError
from tap_openfunnel.logs import redact, shown
from tap_openfunnel.safe_values import MAX_KEPT_CHARS, MAX_KEPT_DEPTH, clean_text, keep_json
from tap_openfunnel.values import (
    COERCE,
    EXACT,
    INT64_MAX,
    INT64_MIN,
    kind_of,
    rows_as_sent_type,
)

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = ["ADDED_FIELDS", "EXTRA_FIELD", "INT64_MAX", "INT64_MIN", "RowShaper"]

LOGGER = logging.getLogger("tap-openfunnel")

# Fields the tap adds to every company record; the rest come from the API's row.
ADDED_FIELDS = ("job_id", "page", "rank")
# The column that keeps what the API sent and the schema does not name. A stream
# whose schema declares it keeps unknown fields (keep_unknown_fields drops it).
EXTRA_FIELD = "_extra"
# The fields that tell one company from another. Most rows of a page without them,
# yet with other fields, is a renamed or reshaped API, not odd data.
IDENTITY_FIELDS = ("name", "domain")
_NAMES_SHOWN = 40
_EXTRA_COLUMN = f"the {EXTRA_FIELD} column"


def _names(names: Iterable[str]) -> str:
    listed = sorted({shown(clean_text(name), 80) for name in names})
    more = len(listed) - _NAMES_SHOWN
    return ", ".join(listed[:_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


class RowShaper:
    """Builds records from rows: schema fields coerced, the rest kept aside, losses counted.

    Decisions for odd data (the README's "Odd data" section documents them):
    a missing field becomes null, or an empty list for an array field (a BigQuery
    REPEATED column holds no null, and every warehouse should see the same value); a
    number sent as a string is parsed; a value that cannot be coerced, or an integer
    outside 64 bits, becomes null (an empty list) and is counted. Fields the schema does
    not name go, made safe by :func:`keep_json`, into the ``_extra`` object when the
    schema declares it, else they are dropped; either way a warning names them the first
    time they are seen. A page where most rows lack the fields that identify a company
    is a changed API: a warning, or with ``strict_shape`` a :class:`ChangedShapeError`.

    Args:
        schema: The stream's JSON Schema.
        strict_shape: Fail the job on a changed row shape instead of warning.
    """

    def __init__(self, schema: Mapping[str, t.Any], *, strict_shape: bool = False) -> None:
        properties: Mapping[str, t.Any] = schema["properties"]
        self.fields = tuple(
            name for name in properties if name not in ADDED_FIELDS and name != EXTRA_FIELD
        )
        self.keep_unknown = EXTRA_FIELD in properties
        self.strict_shape = strict_shape
        self._known = frozenset(self.fields)
        self._identity = tuple(name for name in IDENTITY_FIELDS if name in self._known)
        self._kinds = {name: kind_of(properties[name]) for name in self.fields}
        self._exact = {name: EXACT.get(kind, (object,)) for name, kind in self._kinds.items()}
        # The record path takes an int as is once it is within the 64-bit bounds: the
        # same result as to_int, without a call per integer field of every row.
        self._ints = frozenset(name for name, kind in self._kinds.items() if kind == "integer")
        self._taken = {
            name: (int,) if name in self._ints else exact for name, exact in self._exact.items()
        }
        self._arrays = tuple(name for name, kind in self._kinds.items() if kind == "array")
        # A page whose rows need no coercion at all is told in one call, in C
        # (taken_as_sent); its records start from every column null, in the order the
        # value-by-value path builds them.
        self._as_sent_type = rows_as_sent_type(self._kinds)
        self._blank: dict[str, t.Any] = dict.fromkeys((*ADDED_FIELDS, *self.fields))
        if self.keep_unknown:
            self._blank[EXTRA_FIELD] = None
        self.unknown_fields: set[str] = set()
        self.nulled: dict[str, int] = {}
        self.dropped_kept = 0
        self._shape_warned = False
        # Names already announced at WARNING in this run: later jobs repeat them at INFO.
        self._announced: set[str] = set()

    def records(
        self,
        rows: list[dict[str, t.Any]],
        *,
        job_id: str,
        page: str,
        first_rank: int,
        text_checked: bool = False,
    ) -> Iterator[dict[str, t.Any]]:
        """Yield one record per row, ranked from ``first_rank``.

        Args:
            rows: The page's rows.
            job_id: The job they belong to.
            page: The page name they came from.
            first_rank: The rank of the first row.
            text_checked: Decoding proved every string clean (valid UTF-8, no NUL), so
                :func:`clean_text` would change none: skip looking at each one.

        Yields:
            Records ready for the stream.

        Raises:
            ChangedShapeError: With ``strict_shape``, before any record of a page whose
                rows lack the identifying fields.
        """
        if self._identity and rows:
            self._check_shape(rows, job_id=job_id, page=page)
        if text_checked and self.taken_as_sent(rows):
            yield from self._as_sent(rows, job_id=job_id, page=page, first_rank=first_rank)
        else:
            yield from self._coerced(
                rows, job_id=job_id, page=page, first_rank=first_rank, text_checked=text_checked
            )

    def _as_sent(
        self, rows: list[dict[str, t.Any]], *, job_id: str, page: str, first_rank: int
    ) -> Iterator[dict[str, t.Any]]:
        """The records of a page :meth:`taken_as_sent`: each row's values as sent."""
        blank = self._blank.copy()
        blank["job_id"] = job_id
        blank["page"] = page
        arrays = self._arrays
        for rank, row in enumerate(rows, start=first_rank):
            record = blank.copy()
            record["rank"] = rank
            record.update(row)
            for name in arrays:
                if record[name] is None:
                    record[name] = []
            yield record

    def _coerced(
        self,
        rows: list[dict[str, t.Any]],
        *,
        job_id: str,
        page: str,
        first_rank: int,
        text_checked: bool,
    ) -> Iterator[dict[str, t.Any]]:
        """The records of any page, value by value: coerced, cleaned, counted, set aside."""
        fields = self.fields
        taken = self._taken
        ints = self._ints
        known = self._known
        count = len(fields)
        keep = self.keep_unknown
        # Lists of strings the decoder proved clean are taken as they are: _coerce would
        # only copy them.
        lists_taken = frozenset(self._arrays) if text_checked else frozenset()
        for rank, row in enumerate(rows, start=first_rank):
            record: dict[str, t.Any] = {"job_id": job_id, "page": page, "rank": rank}
            for name in fields:
                value = row.get(name)
                if value is not None:
                    if (
                        type(value) not in taken[name]
                        or (name in ints and not INT64_MIN <= value <= INT64_MAX)
                    ) and not (
                        name in lists_taken
                        and type(value) is list
                        and all(type(item) is str for item in value)
                    ):
                        value = self._coerce(name, value)
                    elif (
                        not text_checked
                        and type(value) is str
                        and ("\x00" in value or not value.isascii())
                    ):
                        value = clean_text(value)
                record[name] = value
            self._empty_lists_for_nulls(record)
            if len(row) > count or not known.issuperset(row):
                extra = self._unknown(row, job_id)
                if keep:
                    record[EXTRA_FIELD] = extra
            elif keep:
                record[EXTRA_FIELD] = None
            yield record

    def taken_as_sent(self, rows: list[dict[str, t.Any]]) -> bool:
        """Whether every row would become a record with none of its values changed.

        True when each row is an object of schema fields only, each null or of its
        schema type as it would be kept (see :func:`~tap_openfunnel.values.rows_as_sent_type`):
        nothing to coerce, null, count or keep in ``_extra``. Strings are not looked at:
        the caller vouches for their text (``text_checked``). One call per page, in C.

        Args:
            rows: A page's rows, as decoded from JSON.

        Returns:
            True if the page's records are its rows' values as sent.
        """
        if self._as_sent_type is None:
            return False
        try:
            msgspec.convert(rows, self._as_sent_type)
        except msgspec.ValidationError:
            return False
        return True

    def _empty_lists_for_nulls(self, record: dict[str, t.Any]) -> None:
        # A BigQuery REPEATED column takes no null: every loader gets [] instead.
        for name in self._arrays:
            if record[name] is None:
                record[name] = []

    def _unknown(self, row: Mapping[str, t.Any], job_id: str) -> dict[str, t.Any] | None:
        """Note a row's unknown fields, warn about new ones, and return them made safe."""
        extra = {name: value for name, value in row.items() if name not in self._known}
        self.note_unknown(extra, job_id=job_id, where=_EXTRA_COLUMN)
        if not self.keep_unknown:
            return None
        kept, dropped = keep_json(extra)
        self.dropped_kept += dropped
        return t.cast("dict[str, t.Any]", kept)

    def note_unknown(self, names: Iterable[str], *, job_id: str, where: str) -> None:
        """Remember unknown field names for the job's report; warn the first time.

        Args:
            names: Field names the schema does not have.
            job_id: The job that sent them.
            where: Where they were kept (when keep_unknown is on), for the warning.
        """
        fresh = [name for name in names if name not in self.unknown_fields]
        if not fresh:
            return
        self.unknown_fields.update(fresh)
        new = [name for name in fresh if name not in self._announced]
        if not new:
            return
        self._announced.update(new)
        went = (
            f"they are kept in {where}"
            if self.keep_unknown
            else "they are dropped, as keep_unknown_fields is off"
        )
        LOGGER.warning(
            "Job %s: the API sent fields the schema does not name (%s); %s. A newer tap "
            "may give them columns of their own.",
            job_id,
            _names(new),
            went,
        )

    def _check_shape(self, rows: list[dict[str, t.Any]], *, job_id: str, page: str) -> None:
        # Absent, not null: a null value still means the API names the field.
        lacking = [
            name
            for name in self._identity
            if 2 * sum(1 for row in rows if row and name not in row) > len(rows)
        ]
        if not lacking:
            return
        seen: set[str] = set()
        for row in rows:
            if not all(name in row for name in lacking):
                seen.update(row)
        problem = (
            f"Job {job_id}: most rows of page '{shown(clean_text(page), 40)}' lack "
            f"{', '.join(lacking)}, which identify a company, yet carry other fields "
            f"(those rows have {_names(seen)}): the API's row shape has probably changed."
        )
        if self.strict_shape:
            msg = (
                f"{problem} The tap stopped reading this job before that page, and state "
                "keeps its cursor, so the next run starts again from it. Upgrade the tap, "
                "or turn strict_row_shape off to load such rows with those columns null "
                f"(and their fields in {EXTRA_FIELD} when keep_unknown_fields is on)."
            )
            raise ChangedShapeError(job_id, msg)
        if not self._shape_warned:
            self._shape_warned = True
            LOGGER.warning(
                "%s Its rows are loaded with those columns null%s; set strict_row_shape "
                "to fail the job instead.",
                problem,
                f" and their fields in {EXTRA_FIELD}" if self.keep_unknown else "",
            )

    def conform(self, values: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Shape a record built by the tap itself (the jobs stream) the same way.

        Args:
            values: Field values, possibly of the wrong JSON type; ``_extra``, if
                given, already made safe with :func:`keep_json`.

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
        self._empty_lists_for_nulls(record)
        for name in ADDED_FIELDS:
            if name in values:
                record[name] = values[name]
        if self.keep_unknown:
            record[EXTRA_FIELD] = values.get(EXTRA_FIELD)
        return record

    def _coerce(self, name: str, value: object) -> object:
        kind = self._kinds[name]
        if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
            return value
        coercer = COERCE.get(kind)
        coerced = coercer(value) if coercer is not None else value
        if coerced is None:
            self.nulled[name] = self.nulled.get(name, 0) + 1
        return coerced

    def report(self, job_id: str) -> None:
        """Log, once per job, what was set aside, nulled or cut, then reset the counters.

        Args:
            job_id: The job just read.
        """
        if self.unknown_fields:
            LOGGER.info(
                "Job %s: fields the schema does not name: %s (%s).",
                job_id,
                _names(self.unknown_fields),
                "kept" if self.keep_unknown else "dropped",
            )
        if self.dropped_kept:
            LOGGER.warning(
                "Job %s: %d value(s) of fields kept in %s were nested deeper than %d levels "
                "or past %d characters per record, and were replaced by a marker string.",
                job_id,
                self.dropped_kept,
                EXTRA_FIELD,
                MAX_KEPT_DEPTH,
                MAX_KEPT_CHARS,
            )
        if self.nulled:
            LOGGER.warning(
                "Job %s: values that could not be read as their schema type (or integers "
                "outside 64 bits) were set to null, or to an empty list for arrays: %s.",
                job_id,
                ", ".join(f"{name} x{count}" for name, count in sorted(self.nulled.items())),
            )
        self.unknown_fields = set()
        self.nulled = {}
        self.dropped_kept = 0
        self._shape_warned = False
