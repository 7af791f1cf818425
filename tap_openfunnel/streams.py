"""Stream declarations: tam_companies, lookalike_companies and jobs."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
import typing as t
from importlib import resources
from pathlib import Path

from singer_sdk.helpers.conform import TypeConformanceLevel

from tap_openfunnel.client import BALANCE_PATH
from tap_openfunnel.exceptions import PageSequenceError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.pagination import PageReader, page_name
from tap_openfunnel.records import RowShaper
from tap_openfunnel.writer import SelectedRecordMessages

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from singer_sdk.helpers.types import Context

    from tap_openfunnel.registry import JobRegistry
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
    """A stream whose records come from the run's jobs."""

    _tap: TapOpenFunnel

    # RowShaper already keeps only schema fields and coerces each to its schema type;
    # the SDK's recursive conforming would repeat that work and cost a third of the
    # time per record (see benchmarks/profile_tap.py).
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: TapOpenFunnel) -> None:
        """Create the stream with its schema file.

        Args:
            tap: The tap.
        """
        super().__init__(tap, schema=load_schema(self.name))
        self._shaper = RowShaper(self.schema)

    @property
    def registry(self) -> JobRegistry:
        """The run's jobs."""
        return self._tap.registry


class CompanyStream(OpenFunnelStream):
    """Companies from one job family: one state partition per job."""

    job_type: t.ClassVar[JobType]
    primary_keys: t.ClassVar[list[str]] = ["job_id", "rank"]

    def __init__(self, tap: TapOpenFunnel) -> None:
        """Create the stream.

        Args:
            tap: The tap.
        """
        super().__init__(tap)

    def job_state(self, job_id: str) -> dict[str, t.Any]:
        """The writable state partition of one job (created if new).

        Args:
            job_id: The job.

        Returns:
            Its partition state.
        """
        return self.get_context_state({"job_id": job_id})

    def job_states(self) -> list[dict[str, t.Any]]:
        """Every job partition in state, earlier runs' included."""
        return list(self.stream_state.get("partitions", []))

    @property
    @override
    def partitions(self) -> list[dict[str, t.Any]] | None:
        # Only this run's unfinished jobs: the SDK default would replay every job
        # ever recorded in state.
        return [{"job_id": job_id} for job_id in self.registry.job_ids(self.name)]

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        if not context:
            return
        job_id = str(context["job_id"])
        snapshot = self.registry.wait(job_id)
        if snapshot is None:
            return
        state = self.get_context_state(context)
        start: str | None = state.get("next_cursor")
        rows_total = int(state.get("rows_read", 0))
        pages = snapshot.manifest.get("pages")
        batching = self.get_batch_config(self.config) is not None
        reader = PageReader(
            job_id,
            functools.partial(self.registry.page_body, self.job_type, job_id),
            functools.partial(self.registry.read_page, self.job_type, job_id),
            concurrency=self.registry.settings.page_concurrency,
        )
        try:
            for page in reader.pages(
                start,
                first=snapshot.page if snapshot.cursor == start else None,
                total_pages=pages if isinstance(pages, int) else None,
            ):
                yield from self._shaper.records(
                    page.rows,
                    job_id=job_id,
                    page=page.name or start or page_name(0),
                    first_rank=rows_total + 1,
                )
                # Reached only once every record of the page has been written.
                rows_total += len(page.rows)
                start = page.next_cursor
                state["rows_read"] = rows_total
                if start:
                    state["next_cursor"] = start
                else:
                    state.pop("next_cursor", None)
                    state["done"] = True
                self.registry.page_done(job_id, len(page.rows), emit_state=not batching)
        except PageSequenceError as exc:
            self.registry.fail(exc)
            return
        finally:
            self._shaper.report(job_id)
        self.registry.check_row_count(snapshot, rows_total)


class TamCompaniesStream(CompanyStream):
    """Companies of TAM Builder jobs."""

    name = "tam_companies"
    job_type = JobType.TAM


class LookalikeCompaniesStream(CompanyStream):
    """Companies of Search Lookalikes Bulk jobs."""

    name = "lookalike_companies"
    job_type = JobType.LOOKALIKE


_MANIFEST_FIELDS = (
    "pages",
    "page_size",
    "unique_count",
    "count",
    "partial",
    "degraded",
    "ranked",
    "stop_reason",
    "credits_consumed",
    "derived_query",
    "resolved_seed_domains",
    "unresolved_seed_domains",
    "rerank_degraded",
)
_PROGRESS_FIELDS = ("processed", "progress_message", "bands_done", "bands_total")


class JobsStream(OpenFunnelStream):
    """One summary record per job the run touched.

    The SDK syncs streams by name, so this one runs first: it waits on every job
    together, and the company streams then find their jobs terminal.
    """

    name = "jobs"
    primary_keys: t.ClassVar[list[str]] = ["job_id"]

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        for job in self.registry.wait_all():
            run = self.registry.runs[job.job_id]
            body: Mapping[str, t.Any] = job.last.body if job.last is not None else {}
            manifest = job.last.manifest if job.last is not None else {}
            record: dict[str, t.Any] = {
                "job_id": job.job_id,
                "job_type": job.job_type.value,
                "status": job.last.status if job.last is not None else None,
                "origin": run.origin,
                "query": (run.request or {}).get("query"),
                "request": dict(run.request) if run.request is not None else None,
                "submitted_at": run.submitted_at,
                "terminal_at": job.terminal_at.isoformat() if job.terminal_at else None,
                "error_message": body.get("error_message"),
                "tap_error": str(job.error) if job.error is not None else None,
            }
            record.update({name: body.get(name) for name in _PROGRESS_FIELDS})
            record.update({name: manifest.get(name) for name in _MANIFEST_FIELDS})
            yield self._shaper.conform(record)


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
        balance = self._tap.client.get(BALANCE_PATH)
        yield self._shaper.conform(
            {"checked_at": dt.datetime.now(dt.timezone.utc).isoformat(), **balance},
        )
