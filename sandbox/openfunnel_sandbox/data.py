"""Deterministic, deliberately awkward company rows for the fake OpenFunnel server."""

from __future__ import annotations

import hashlib
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Collection

BAND_LABELS = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5001+")
FUNDING_STAGES = (
    "Pre-Seed",
    "Seed",
    "Series A",
    "Series B",
    "Series C",
    "Series D",
    "Series E",
    "Series F",
    "Series G",
    "Series H",
    "Acquired",
    "Private",
    "Public",
)
ROW_QUIRKS = frozenset({"numbers_as_strings", "missing_fields", "extra_fields", "renamed_fields"})

_BAND_EMPLOYEES = {
    "1-10": (1, 10),
    "11-50": (11, 50),
    "51-200": (51, 200),
    "201-1000": (201, 1000),
    "1001-5000": (1001, 5000),
    "5001+": (5001, 60000),
}
_COMPANY_SIZES = (
    ("1-10", 1, 10),
    ("11-50", 11, 50),
    ("51-200", 51, 200),
    ("201-500", 201, 500),
    ("501-1000", 501, 1000),
    ("1001-5000", 1001, 5000),
    ("5001-10000", 5001, 10000),
    ("10001+", 10001, 90000),
)
# (display, slug): the display forms carry the non-ASCII and emoji awkwardness; the
# slugs keep domains and LinkedIn URLs plain ASCII as real ones are.
_PREFIXES = (
    ("Northwind", "northwind"),
    ("Ørsted", "orsted"),
    ("Zürcher", "zurcher"),
    ("São Paulo", "saopaulo"),
    ("Kraków", "krakow"),
    ("東京", "tokyo"),
    ("Acme", "acme"),
    ("Blue Harbor", "blueharbor"),
    ("Café ☕", "cafe"),
    ("Łódź", "lodz"),
    ("Nordlys", "nordlys"),
    ("O'Brien & Sons", "obrien"),
    ("Île", "ile"),
    ("Ångström", "angstrom"),
    ("Müller-Lüdenscheidt", "mullerludenscheidt"),
    ("Señal", "senal"),
    ("Quantum", "quantum"),
    ("Helix", "helix"),
    ("Vertex", "vertex"),
    ("Ember 🔥", "ember"),
    ("Polar", "polar"),
    ("Sable", "sable"),
    ("Tidewater", "tidewater"),
    ("Δelta", "delta"),
)
_SUFFIXES = (
    ("Telemetry", "telemetry"),
    ("Observability", "observe"),
    ("Monitoring", "monitor"),
    ("Analytics", "analytics"),
    ("Systems", "systems"),
    ("Labs", "labs"),
    ("Cloud", "cloud"),
    ("Metrics", "metrics"),
    ("Data GmbH", "data"),
    ("Insights S.A.", "insights"),
    ("株式会社", "kk"),
    ("Sp. z o.o.", "spzoo"),
)
_TLDS = ("com", "io", "dev", "co", "de", "com.br", "pl", "jp", "ch", "co.uk", "ai")
_CITIES = (
    ("San Francisco", "California", "United States"),
    ("Austin", "Texas", "United States"),
    ("New York", "New York", "United States"),
    ("Zürich", "Zürich", "Switzerland"),
    ("São Paulo", "São Paulo", "Brazil"),
    ("Kraków", "Lesser Poland", "Poland"),
    ("東京", "Tokyo", "Japan"),
    ("München", "Bavaria", "Germany"),
    ("Bengaluru", "Karnataka", "India"),
    ("London", "England", "United Kingdom"),
    ("Montréal", "Quebec", "Canada"),
    ("København", "Capital Region", "Denmark"),
    ("Tel Aviv", "Tel Aviv District", "Israel"),
    ("Paris", "Île-de-France", "France"),
    ("Reykjavík", "Capital Region", "Iceland"),
    ("Singapore", "", "Singapore"),
)
_KEYWORDS = (
    "infrastructure monitoring",
    "observability",
    "log analytics",
    "APM",
    "distributed tracing",
    "incident response",
)
# Quotes, backslashes, tabs and newlines: everything a hand-rolled CSV or SQL writer
# downstream gets wrong.
_REASONS = (
    'Sells an "{kw}" platform for cloud teams.',
    'Describes itself as "the {kw} company" on its homepage.',
    'Its agent installs to C:\\Program Files\\{slug}\\ and ships "{kw}" dashboards.',
    'Product page says:\n"{kw} for Kubernetes"\nand offers a free tier.',
    "Tagline: “{kw}, done right” — quoted from the about page.",
    "Parses latency lines like (\\d+)\\s*ms with {kw} alerts.\tSee docs.",
)
_INDUSTRIES = (
    "Software",
    "DevOps",
    "IT Services",
    "Observability",
    "Security",
    "Data Infrastructure",
    "SaaS",
    "Cloud Computing",
)
_NULLABLE_TAM = (
    "linkedin_url",
    "headquarters",
    "match_reason",
    "match_score",
    "source_band",
    "source_query",
    "employee_count",
    "funding_stage",
    "industries",
    "hq_city",
    "hq_region",
    "hq_country",
)
_NULLABLE_LOOKALIKE = (
    "linkedin_url",
    "headquarters",
    "match_reason",
    "company_size",
    "employee_count",
)
# A byte below this is ~10% of 0..255.
_NULL_BELOW = 26
_MISSING_BELOW = 51  # ~20%

_T = t.TypeVar("_T")


def band_label(band_index: int) -> str:
    """Name a TAM band, cycling through the six documented-looking labels.

    Args:
        band_index: Zero-based band number.

    Returns:
        The label, e.g. ``"201-1000"``.
    """
    return BAND_LABELS[band_index % len(BAND_LABELS)]


def band_of_row(index: int, rows_total: int, bands_total: int) -> int:
    """Return the band that produced row ``index`` when bands split rows evenly.

    Band ``k`` holds rows ``[k * rows_total // bands_total, (k + 1) * ...)``.

    Args:
        index: Zero-based row number.
        rows_total: Rows of the whole build.
        bands_total: Number of bands.

    Returns:
        The zero-based band number.
    """
    if rows_total <= 0:
        return 0
    return min(bands_total - 1, ((index + 1) * bands_total - 1) // rows_total)


def _digest(job_id: str, index: int) -> bytes:
    # blake2b is a fast, version-stable source of 64 independent bytes per row, so
    # rows are reproducible without seeding a Random per row.
    return hashlib.blake2b(f"{job_id}:{index}".encode(), digest_size=64).digest()


def _pick(options: tuple[_T, ...], byte: int) -> _T:
    return options[byte % len(options)]


def _between(low: int, high: int, data: bytes) -> int:
    return low + int.from_bytes(data, "big") % (high - low + 1)


def _identity(b: bytes, index: int) -> tuple[str, str, str, tuple[str, str, str], str]:
    prefix, prefix_slug = _pick(_PREFIXES, b[0])
    suffix, suffix_slug = _pick(_SUFFIXES, b[1])
    slug = f"{prefix_slug}{suffix_slug}"
    # The index makes domains unique within a job whatever the name collisions.
    domain = f"{slug}{index}.{_pick(_TLDS, b[2])}"
    reason = _pick(_REASONS, b[4]).format(kw=_pick(_KEYWORDS, b[5]), slug=slug)
    return f"{prefix} {suffix}", slug, domain, _pick(_CITIES, b[3]), reason


def tam_row(
    job_id: str, index: int, *, query: str, rows_total: int, bands_total: int
) -> dict[str, t.Any]:
    """Build TAM row ``index`` of a job (reference §3.4), the same on every call.

    Args:
        job_id: The job the row belongs to.
        index: Zero-based row number within the job.
        query: The build query, echoed as ``source_query``.
        rows_total: Rows of the whole build (places the row in its band).
        bands_total: Bands of the build.

    Returns:
        The row as a JSON-ready dict.
    """
    b = _digest(job_id, index)
    name, slug, domain, (city, region, country), reason = _identity(b, index)
    band = band_label(band_of_row(index, rows_total, bands_total))
    low, high = _BAND_EMPLOYEES[band]
    industries = (
        []
        if b[26] % 8 == 0
        else sorted({_pick(_INDUSTRIES, x) for x in b[27 : 27 + b[26] % 3 + 1]})
    )
    row: dict[str, t.Any] = {
        "name": name,
        "domain": domain,
        "linkedin_url": f"https://www.linkedin.com/company/{slug}-{index}",
        "headquarters": ", ".join(part for part in (city, region, country) if part),
        "match_reason": reason,
        "match_score": _between(20, 100, b[24:25]),
        "source_band": band,
        "source_query": query,
        "employee_count": _between(low, high, b[20:24]),
        "funding_stage": _pick(FUNDING_STAGES, b[25]),
        "industries": industries,
        "hq_city": city,
        "hq_region": region or None,
        "hq_country": country,
    }
    _null_some(row, _NULLABLE_TAM, b[40:])
    return row


def lookalike_row(job_id: str, index: int) -> dict[str, t.Any]:
    """Build Search Lookalikes Bulk row ``index`` of a job (reference §4.4).

    Args:
        job_id: The job the row belongs to.
        index: Zero-based row number within the job.

    Returns:
        The row as a JSON-ready dict.
    """
    b = _digest(job_id, index)
    name, slug, domain, (city, _region, country), reason = _identity(b, index)
    size, low, high = _pick(_COMPANY_SIZES, b[25])
    row: dict[str, t.Any] = {
        "name": name,
        "domain": domain,
        "linkedin_url": f"https://www.linkedin.com/company/{slug}-{index}",
        "headquarters": f"{city}, {country}",
        "match_reason": reason,
        "company_size": size,
        "employee_count": _between(low, high, b[20:24]),
    }
    _null_some(row, _NULLABLE_LOOKALIKE, b[40:])
    return row


def _null_some(row: dict[str, t.Any], fields: tuple[str, ...], draws: bytes) -> None:
    # `name` and `domain` are never nulled: name is the one field the reference calls
    # required, and domain is half of the tap's natural key (job_id, domain).
    for field, byte in zip(fields, draws, strict=False):
        if byte < _NULL_BELOW:
            row[field] = None


def apply_row_quirks(
    row: dict[str, t.Any],
    job_id: str,
    index: int,
    quirks: Collection[str],
    *,
    rows_total: int = 0,
) -> None:
    """Distort one row in place the way the named quirks describe.

    Args:
        row: A row from :func:`tam_row` or :func:`lookalike_row`.
        job_id: The job the row belongs to.
        index: Zero-based row number within the job.
        quirks: Quirk names; those that are not about rows are ignored.
        rows_total: Rows of the whole job (renamed_fields starts at its half).
    """
    b = _digest(job_id, index)
    if "numbers_as_strings" in quirks:
        for field in ("employee_count", "match_score"):
            if row.get(field) is not None:
                row[field] = str(row[field])
    if "missing_fields" in quirks and b[60] < _MISSING_BELOW:
        optional = [field for field in row if field != "name"]
        for byte in b[61 : 61 + b[59] % 3 + 1]:
            row.pop(optional[byte % len(optional)], None)
    if "extra_fields" in quirks:
        row["score_v2"] = round(b[58] / 255, 2)
        row["tags"] = ["beta", _pick(_KEYWORDS, b[57])]
    if "renamed_fields" in quirks and index >= rows_total // 2:
        # An API release that renames fields while the job's pages are being written.
        row["company_name"] = row.pop("name", None)
        row["website"] = row.pop("domain", None)


def page_rows(  # noqa: PLR0913 - every argument is part of what makes a row
    kind: str,
    job_id: str,
    start: int,
    stop: int,
    *,
    query: str,
    rows_total: int,
    bands_total: int,
    quirks: Collection[str] = (),
) -> list[dict[str, t.Any]]:
    """Generate rows ``start`` to ``stop - 1`` of a job, lazily one page at a time.

    Args:
        kind: ``"tam"`` or ``"lookalike"``.
        job_id: The job the rows belong to.
        start: First row number.
        stop: One past the last row number.
        query: The TAM build query.
        rows_total: Rows of the whole job.
        bands_total: TAM bands.
        quirks: Job quirks; the row-level ones are applied.

    Returns:
        The rows in order.
    """
    row_quirks = ROW_QUIRKS.intersection(quirks)
    rows = []
    for index in range(start, stop):
        if kind == "tam":
            row = tam_row(
                job_id, index, query=query, rows_total=rows_total, bands_total=bands_total
            )
        else:
            row = lookalike_row(job_id, index)
        if row_quirks:
            apply_row_quirks(row, job_id, index, row_quirks, rows_total=rows_total)
        rows.append(row)
    return rows
