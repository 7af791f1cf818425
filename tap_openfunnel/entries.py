"""Jobs to submit, as config describes them: entry validation and request fingerprints."""

from __future__ import annotations

import hashlib
import json
import typing as t
from dataclasses import dataclass

from tap_openfunnel.exceptions import ConfigurationError
from tap_openfunnel.families import BY_TYPE, FAMILIES

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tap_openfunnel.families import JobFamily
    from tap_openfunnel.jobs import JobType

FUNDING_STAGES = (
    "Pre-Seed",
    "Seed",
    *(f"Series {letter}" for letter in "ABCDEFGH"),
    "Acquired",
    "Private",
    "Public",
)

_MAX_SEEDS = 10


@dataclass(frozen=True)
class BuildEntry:
    """One validated entry of a family's entries setting (``tam_builds``, ...).

    Attributes:
        setting: The setting it came from.
        index: Its position there, from 0 (as in validation errors and JSON paths).
        job_type: The job family it submits.
        body: The JSON body to POST.
        fingerprint: Identifies the request: a changed entry gets a new job.
    """

    setting: str
    index: int
    job_type: JobType
    body: Mapping[str, t.Any]
    fingerprint: str

    @property
    def label(self) -> str:
        """How messages name the entry."""
        query = self.body.get("query") or ", ".join(self.body.get("seed_domains", []))
        return f"{self.setting}[{self.index}] ({str(query)[:60]!r})"

    @property
    def worst_case_credits(self) -> float | None:
        """Most credits the job can cost (None: unbounded, as a TAM build is)."""
        return BY_TYPE[self.job_type].worst_case_credits(self.body)


def fingerprint(job_type: JobType, body: Mapping[str, t.Any]) -> str:
    """A stable digest of a request, independent of key order.

    Args:
        job_type: The job family.
        body: The request body.

    Returns:
        A short hex digest.
    """
    canonical = json.dumps([job_type.value, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def parse_entries(*configured: Sequence[object]) -> list[BuildEntry]:
    """Validate every entry before anything is sent.

    Args:
        configured: Each family's entries setting (``tam_builds``,
            ``lookalike_searches``, ...), in the order of ``FAMILIES``; families left
            out have none.

    Returns:
        The entries, in config order.

    Raises:
        ConfigurationError: Naming the first bad entry and field.
    """
    if len(configured) > len(FAMILIES):
        msg = f"{len(configured)} entry settings given for {len(FAMILIES)} job families"
        raise ValueError(msg)
    entries = [
        _EntryCheck(family.entries_setting, index, raw).entry(family)
        for family, raws in zip(FAMILIES, configured, strict=False)
        for index, raw in enumerate(raws)
    ]
    seen: dict[str, BuildEntry] = {}
    for entry in entries:
        if entry.fingerprint in seen:
            first = seen[entry.fingerprint]
            _EntryCheck(entry.setting, entry.index, None).fail(
                None,
                f"repeats {first.setting}[{first.index}] exactly; remove one, since each "
                "entry is a separately billed job",
            )
        seen[entry.fingerprint] = entry
    return entries


class _EntryCheck:
    """Validates one entry; every failure names the setting, the entry and the field."""

    def __init__(self, setting: str, index: int, raw: object) -> None:
        self.setting = setting
        self.index = index
        self.raw = raw

    def fail(self, field: str | None, problem: str) -> t.NoReturn:
        where = f"field '{field}' " if field else ""
        msg = (
            f"Setting {self.setting}[{self.index}]: {where}{problem}. Fix the entry "
            "in the tap's config; nothing was submitted."
        )
        raise ConfigurationError(msg)

    def fields(self, allowed: frozenset[str]) -> dict[str, t.Any]:
        if not isinstance(self.raw, dict):
            self.fail(None, f'must be an object such as {{"query": "..."}}, not {self.raw!r}')
        unknown = sorted(set(self.raw) - allowed)
        if unknown:
            self.fail(unknown[0], f"is not accepted (allowed: {', '.join(sorted(allowed))})")
        return {key: value for key, value in self.raw.items() if value is not None}

    def query(self, value: object, limit: int) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail("query", "must be a non-empty string")
        text = value.strip()
        if len(text) > limit:
            self.fail("query", f"is {len(text)} characters; the API takes 1 to {limit}")
        return text

    def integer(self, field: str, value: object, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be a whole number, not {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"from {low:,} to {high:,}" if high is not None else f"at least {low}"
            self.fail(field, f"must be {bounds}, not {value:,}")
        return value

    def strings(self, field: str, value: object) -> list[str]:
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item.strip() for item in value
        ):
            self.fail(field, "must be a list of non-empty strings")
        return [item.strip() for item in value]

    def entry(self, family: JobFamily) -> BuildEntry:
        """Check the entry against its family's rules and build the request body.

        A field the family does not accept is refused by :meth:`fields` before any
        rule below looks at it, so each rule applies only to families that have it.
        """
        entry = self.fields(family.fields)
        body: dict[str, t.Any] = {}
        if "query" in entry:
            body["query"] = self.query(entry["query"], family.query_max)
        if "seed_domains" in entry:
            seeds = self.strings("seed_domains", entry["seed_domains"])
            if not seeds or len(seeds) > _MAX_SEEDS:
                self.fail("seed_domains", f"must hold 1 to 10 domains, not {len(seeds)}")
            body["seed_domains"] = seeds
        if not body:
            first, *others = family.required
            alternatives = " or ".join(f"'{field}'" for field in others)
            self.fail(
                first,
                f"or {alternatives} is required (one of them, or both)"
                if others
                else "is required",
            )
        size = family.size_field
        if size is not None and size in entry:
            body[size] = self.integer(size, entry[size], 1, family.max_size)
        body.update(self._filters(entry))
        return self._build(family.job_type, body)

    def _filters(self, entry: Mapping[str, t.Any]) -> dict[str, t.Any]:
        body: dict[str, t.Any] = {}
        for field in ("min_employees", "max_employees"):
            if field in entry:
                body[field] = self.integer(field, entry[field], 0)
        if body.get("min_employees", 0) > body.get("max_employees", float("inf")):
            self.fail("min_employees", "must not be above 'max_employees'")
        if "funding_stages" in entry:
            stages = self.strings("funding_stages", entry["funding_stages"])
            bad = [stage for stage in stages if stage not in FUNDING_STAGES]
            if bad:
                self.fail("funding_stages", f"has {bad[0]!r}; use {', '.join(FUNDING_STAGES)}")
            body["funding_stages"] = stages
        if "locations" in entry:
            body["locations"] = self.strings("locations", entry["locations"])
        if "search_type" in entry:
            if entry["search_type"] not in {"semantic", "agentic"}:
                self.fail(
                    "search_type",
                    f"must be 'semantic' or 'agentic', not {entry['search_type']!r}",
                )
            body["search_type"] = entry["search_type"]
        return body

    def _build(self, job_type: JobType, body: dict[str, t.Any]) -> BuildEntry:
        return BuildEntry(self.setting, self.index, job_type, body, fingerprint(job_type, body))
