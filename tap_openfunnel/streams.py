"""Stream declarations: one company stream per job family, jobs and credits_balance."""

from __future__ import annotations

import datetime as dt
import json
import sys
import typing as t
from importlib import resources
from pathlib import Path

from singer_sdk.helpers.conform import TypeConformanceLevel

from tap_openfunnel.records import EXTRA_FIELD, RowShaper
from tap_openfunnel.settings import setting
from tap_openfunnel.writer import SelectedRecordMessages

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from singer_sdk.helpers._batch import BaseBatchFileEncoding, BatchConfig
    from singer_sdk.helpers.types import Context

    from tap_openfunnel.families import JobFamily
    from tap_openfunnel.jobs import JobType
    from tap_openfunnel.tap import TapOpenFunnel


def load_schema(name: str) -> dict[str, t.Any]:
    """Load a stream's JSON Schema from ``schemas/``.

    Installed wheels carry the folder inside the package; a source checkout has it at
    the top of the repository.

    Args:
        name: The stream name.

    Returns:
        The schema.
    """
    packaged = resources.files("tap_openfunnel") / "schemas" / f"{name}.json"
    if packaged.is_file():
        return t.cast("dict[str, t.Any]", json.loads(packaged.read_text(encoding="utf-8")))
    source = Path(__file__).resolve().parent.parent / "schemas" / f"{name}.json"
    return t.cast("dict[str, t.Any]", json.loads(source.read_text(encoding="utf-8")))


class OpenFunnelStream(SelectedRecordMessages):
    """A stream of the tap, with its schema file and its record shaper."""

    _tap: TapOpenFunnel

    # RowShaper already keeps only schema fields and coerces each to its schema type;
    # the SDK's recursive conforming would repeat that work for every record (see
    # benchmarks/profile_tap.py).
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    # The JSON columns that keep what the schema does not name (keep_unknown_fields).
    kept_columns: t.ClassVar[tuple[str, ...]] = (EXTRA_FIELD,)

    def __init__(self, tap: TapOpenFunnel) -> None:
        """Create the stream with its schema file.

        Args:
            tap: The tap.
        """
        schema = load_schema(self.name)
        # Read from the config, not tap.settings: discovery must work without a key.
        if not setting(tap.config, "keep_unknown_fields"):
            for column in self.kept_columns:
                schema["properties"].pop(column, None)
        super().__init__(tap, schema=schema)
        self._shaper = RowShaper(
            self.schema,
            strict_shape=bool(setting(tap.config, "strict_row_shape")),
        )


class CompanyStream(OpenFunnelStream):
    """Companies from one job family, read job by job from the run's plan.

    One instance per family (``tam_companies``, ``lookalike_companies``, ...), named
    and typed by its descriptor. Each job has its own state partition (context
    ``{"job_id": ...}``), written only by the run's checkpoint.

    Args:
        tap: The tap.
        family: The job family whose rows it carries.
    """

    primary_keys: t.ClassVar[list[str]] = ["job_id", "rank"]

    def __init__(self, tap: TapOpenFunnel, family: JobFamily) -> None:
        self.name = family.stream_name
        self.family = family
        self.job_type: JobType = family.job_type
        super().__init__(tap)

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]] | None:
        # The jobs come from the run's plan, not from the SDK's partitions: its default
        # would replay every job ever recorded in state, and listing the plan's jobs
        # here would need the submits done before the sync starts.
        return None

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        yield from self._tap.reader().records(self.family, self._shaper)

    @override
    def get_batches(
        self,
        batch_config: BatchConfig,
        context: Context | None = None,
    ) -> Iterable[tuple[BaseBatchFileEncoding, list[str]]]:
        checkpoint = self._tap.checkpoint
        for encoding, manifest in super().get_batches(batch_config, context):
            # Every page handed so far is in this file; the SDK resumes this generator
            # only after it has written the file's BATCH message.
            handed = checkpoint.handed()
            yield encoding, manifest
            checkpoint.promote(handed)


class JobsStream(OpenFunnelStream):
    """One summary record per job the run waited on.

    It waits on every job of the run together, whichever stream syncs first: its
    records are the same whether the company streams sync before or after it.
    """

    name = "jobs"
    primary_keys: t.ClassVar[list[str]] = ["job_id"]
    kept_columns: t.ClassVar[tuple[str, ...]] = ("manifest", EXTRA_FIELD)

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        yield from self._tap.reader().summaries(self._shaper)


class CreditsBalanceStream(OpenFunnelStream):
    """The account's credit balance, one record per run.

    Not selected by default. Meltano selects every stream unless told otherwise, and
    its ``meltano config test`` runs a sync until the first record: this stream sorts
    first and answers from one cheap balance call, so the test verifies the key
    without reaching any job.
    """

    name = "credits_balance"
    primary_keys: t.ClassVar[list[str]] = ["checked_at"]
    selected_by_default = False

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        balance = self._tap.api.balance()
        yield self._shaper.conform(
            {"checked_at": dt.datetime.now(dt.timezone.utc).isoformat(), **balance},
        )
