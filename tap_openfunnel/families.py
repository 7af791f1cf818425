"""What differs between TAM builds and lookalike searches, as data: one record per job family.

The rest of the tap loops over :data:`FAMILIES` instead of branching on the family:
the job API takes its paths from here, the entry check its body rules, the settings
their config keys, the planner and the budget the worst case, the outcome check the
manifest's count, and the tap its company streams. A new family is one more
:class:`JobFamily`, its schema file in ``schemas/`` and its tests (docs/how-it-works.md
lists what to touch).
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from tap_openfunnel.jobs import JobType

if t.TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class JobFamily:
    """The facts of one job family.

    Attributes:
        job_type: The family's key; its value is how the ``jobs`` stream names it.
        path: Where jobs are submitted; a job is polled at ``path/<job_id>`` and
            cancelled at ``path/<job_id>/cancel``.
        stream_name: The company stream (and schema file) its rows go to.
        ids_setting: The setting that attaches existing jobs by id.
        entries_setting: The setting whose entries are submitted as new jobs.
        label: How messages name one job of the family.
        plural: How messages name several.
        noun: How a message that has just named the family names the job again.
        fields: The fields an entry may have.
        query_max: The longest ``query`` the API takes.
        required: The fields of which an entry needs at least one.
        size_field: The body field that bounds what a job can cost (None: nothing
            does; the budget then brakes the job on its ``processed`` count while it runs).
        max_size: The most a job can deliver when its entry names no ``size_field``.
        count_key: The manifest field the rows read are checked against.
    """

    job_type: JobType
    path: str
    stream_name: str
    ids_setting: str
    entries_setting: str
    label: str
    plural: str
    noun: str
    fields: frozenset[str]
    query_max: int
    required: tuple[str, ...]
    count_key: str
    size_field: str | None = None
    max_size: int | None = None

    @property
    def bounded(self) -> bool:
        """Whether an entry's body caps what its job can cost."""
        return self.size_field is not None

    def worst_case_credits(self, body: Mapping[str, t.Any]) -> float | None:
        """Most credits a job with this body can cost (one per company delivered).

        Args:
            body: The submitted request.

        Returns:
            The worst case, or None when nothing in the body bounds it.
        """
        if self.size_field is None:
            return None
        return float(body.get(self.size_field, self.max_size))


TAM = JobFamily(
    job_type=JobType.TAM,
    path="/api/v1/tam/build",
    stream_name="tam_companies",
    ids_setting="tam_job_ids",
    entries_setting="tam_builds",
    label="TAM build",
    plural="TAM builds",
    noun="build",
    fields=frozenset({"query"}),
    query_max=500,
    required=("query",),
    count_key="unique_count",
)

# The most a lookalike search can deliver (and so cost) when it names no limit.
MAX_LOOKALIKE_LIMIT = 10_000

LOOKALIKE = JobFamily(
    job_type=JobType.LOOKALIKE,
    path="/api/v1/account/search-lookalikes-bulk",
    stream_name="lookalike_companies",
    ids_setting="lookalike_job_ids",
    entries_setting="lookalike_searches",
    label="search",
    plural="searches",
    noun="search",
    fields=frozenset(
        {
            "query",
            "seed_domains",
            "limit",
            "min_employees",
            "max_employees",
            "funding_stages",
            "locations",
            "search_type",
        },
    ),
    query_max=200,
    required=("query", "seed_domains"),
    count_key="count",
    size_field="limit",
    max_size=MAX_LOOKALIKE_LIMIT,
)

# Every family, in the order the tap declares their streams and checks their entries.
FAMILIES: tuple[JobFamily, ...] = (TAM, LOOKALIKE)
BY_TYPE: Mapping[JobType, JobFamily] = {family.job_type: family for family in FAMILIES}


def settings_text(kind: t.Literal["ids", "entries"], joiner: str, *, quote: bool = True) -> str:
    """Every family's setting of one kind, for messages that name them all.

    Args:
        kind: ``ids`` (the ``*_job_ids`` settings) or ``entries`` (the submitted ones).
        joiner: What goes between two names.
        quote: Whether each name is in single quotes.

    Returns:
        For example ``'tam_job_ids' / 'lookalike_job_ids'``.
    """
    names = (family.ids_setting if kind == "ids" else family.entries_setting for family in FAMILIES)
    return joiner.join(f"'{name}'" if quote else name for name in names)
