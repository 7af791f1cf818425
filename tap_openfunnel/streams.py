"""Stream declarations: one company stream per job family, jobs and credits_balance."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
import typing as t
from importlib import resources
from pathlib import Path

from singer_sdk.helpers.conform import TypeConformanceLevel

from tap_openfunnel.completeness import AnswerMismatchError, check_page
from tap_openfunnel.exceptions import (
    ApiError,
    AuthenticationError,
    ChangedShapeError,
    JobError,
    PageSequenceError,
)
from tap_openfunnel.jobs import JobStatus
from tap_openfunnel.pagination import MAX_PAGES_WITHOUT_MANIFEST as MAX_PAGES
from tap_openfunnel.pagination import PageReader, page_name, page_requests
from tap_openfunnel.prefetch import Lookahead
from tap_openfunnel.records import EXTRA_FIELD, RowShaper
from tap_openfunnel.safe_values import keep_json
from tap_openfunnel.settings import setting
from tap_openfunnel.writer import SelectedRecordMessages

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from singer_sdk.helpers._batch import BaseBatchFileEncoding, BatchConfig
    from singer_sdk.helpers.types import Context

    from tap_openfunnel.families import JobFamily
    from tap_openfunnel.jobs import JobType
    from tap_openfunnel.prefetch import Request
    from tap_openfunnel.run import Run
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
    # the SDK's recursive conforming would repeat that work and cost a third of the
    # time per record (see benchmarks/profile_tap.py).
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
        run = self._tap.run
        job_ids = run.jobs_to_read(self.name)
        # One look-ahead for all the stream's jobs: while a job's pages are emitted, the
        # next jobs' pages are already being fetched, within the run's request budget.
        lookahead = (
            Lookahead(run.requests, self._pages_ahead(run, job_ids))
            if run.settings.page_concurrency > 1
            else None
        )
        try:
            for job_id in job_ids:
                yield from self._read_job(run, job_id, lookahead)
        finally:
            if lookahead is not None:
                lookahead.close()

    def _pages_ahead(self, run: Run, job_ids: list[str]) -> Iterator[Request | None]:
        """The pages :meth:`_read_job` will read, job after job (None: not known yet).

        A job's pages are known once its poll said it is terminal, with the manifest's
        page count; until then the plan waits there (None), without polling.
        """
        for job_id in job_ids:
            tracked = run.poller.jobs.get(job_id)
            while tracked is not None and not tracked.settled:
                yield None
            snapshot = tracked.last if tracked is not None and tracked.error is None else None
            if snapshot is None or snapshot.status == JobStatus.FAILED.value:
                continue  # no pages to read
            cursor = run.checkpoint.position(job_id).cursor
            yield from page_requests(
                job_id,
                functools.partial(run.api.page_body, self.job_type, job_id),
                cursor,
                manifest_pages(snapshot.manifest),
                first_at_hand=snapshot.cursor == cursor,
            )

    @override
    def get_batches(
        self,
        batch_config: BatchConfig,
        context: Context | None = None,
    ) -> Iterable[tuple[BaseBatchFileEncoding, list[str]]]:
        checkpoint = self._tap.run.checkpoint
        for encoding, manifest in super().get_batches(batch_config, context):
            # Every page handed so far is in this file; the SDK resumes this generator
            # only after it has written the file's BATCH message.
            handed = checkpoint.handed()
            yield encoding, manifest
            checkpoint.promote(handed)

    def _log_resume(self, job_id: str, cursor: str | None, rows_read: int) -> None:
        """Say where a job an earlier run left unfinished is picked up, if it is."""
        if cursor:
            self._tap.logger.info(
                "Job %s: resuming at page %r (the cursor kept in state), after %s row(s) "
                "read by earlier runs.",
                job_id,
                cursor,
                f"{rows_read:,}",
            )

    def _read_job(
        self, run: Run, job_id: str, lookahead: Lookahead | None = None
    ) -> Iterator[dict[str, t.Any]]:
        """Wait for one job, walk its pages from the checkpoint, and hand each page's end back.

        Whatever goes wrong with this job's pages fails this job only; the run goes on
        with the others and fails at the end, naming it.
        """
        snapshot = run.wait(job_id)
        if snapshot is None:
            return
        checkpoint = run.checkpoint
        start = checkpoint.position(job_id)
        cursor = start.cursor
        rows_total = start.rows_read
        self._log_resume(job_id, cursor, rows_total)
        reader = PageReader(
            job_id,
            functools.partial(run.api.page_body, self.job_type, job_id),
            functools.partial(run.api.read_page, self.job_type, job_id),
            concurrency=run.settings.page_concurrency,
            lookahead=lookahead,
        )
        try:
            for page in reader.pages(
                cursor,
                first=snapshot.page if snapshot.cursor == cursor else None,
                total_pages=manifest_pages(snapshot.manifest),
            ):
                check_page(job_id, snapshot.status, page, cursor)
                yield from self._shaper.records(
                    page.rows,
                    job_id=job_id,
                    page=page.name or cursor or page_name(0),
                    first_rank=rows_total + 1,
                    text_checked=page.text_checked,
                )
                # Reached only once every record of the page has been handed on.
                rows_total += len(page.rows)
                cursor = page.next_cursor
                if cursor is not None:
                    # The last page's end waits for the checks below: done is final.
                    checkpoint.page_read(job_id, next_cursor=cursor, rows_read=rows_total)
                run.page_read(job_id, len(page.rows))
        except (ChangedShapeError, AnswerMismatchError) as exc:
            # Raised before the page's first record: state stays before that page.
            run.fail(exc)
            return
        except PageSequenceError as exc:
            failure: JobError = exc
            if exc.page is not None:
                # Its rows are sound, its next_cursor is not: deliver them, but leave
                # state before this page (a rerun sends them again, with the same ranks).
                try:
                    yield from self._shaper.records(
                        exc.page.rows,
                        job_id=job_id,
                        page=exc.page.name or cursor or page_name(0),
                        first_rank=rows_total + 1,
                    )
                except ChangedShapeError as shape:
                    failure = shape
            run.fail(failure)
            return
        except AuthenticationError:
            raise  # the key itself: every other job would fail the same way
        except ApiError as exc:
            where = f"page {cursor!r}" if cursor else "the first page"
            resumed = " (the cursor kept in state)" if cursor == start.cursor and cursor else ""
            run.fail(
                JobError(
                    job_id,
                    f"Job {job_id}: reading {where}{resumed} failed: {exc} The tap stopped "
                    "reading this job there; the rows before it were delivered and state "
                    "keeps the cursor, so the next run retries from that page.",
                ),
            )
            return
        finally:
            self._shaper.report(job_id)
        run.read_whole(snapshot, rows_total)


def manifest_pages(manifest: Mapping[str, t.Any]) -> int | None:
    """``manifest.pages`` when it is a usable count, else None (the walk is bounded anyway).

    Args:
        manifest: The job's manifest.

    Returns:
        The page count, or None.
    """
    pages = manifest.get("pages")
    if isinstance(pages, int) and not isinstance(pages, bool) and 0 <= pages <= MAX_PAGES:
        return pages
    return None


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
# Every top-level field of a poll answer the tap reads (§3.2, §4.2); others go to _extra.
_POLL_FIELDS = frozenset(
    {
        "job_id",
        "status",
        "manifest",
        "error_message",
        "rows",
        "page",
        "next_cursor",
        "count",
        "degraded",
        *_PROGRESS_FIELDS,
    },
)


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
        run = self._tap.run
        for job in run.wait_all():
            progress = run.progress[job.job_id]
            body: Mapping[str, t.Any] = job.last.body if job.last is not None else {}
            manifest = job.last.manifest if job.last is not None else {}
            record: dict[str, t.Any] = {
                "job_id": job.job_id,
                "job_type": job.job_type.value,
                "status": job.last.status if job.last is not None else None,
                "origin": progress.origin,
                "query": (progress.request or {}).get("query"),
                "request": dict(progress.request) if progress.request is not None else None,
                "request_fingerprint": progress.fingerprint,
                "submitted_at": progress.submitted_at,
                "terminal_at": (
                    run.checkpoint.terminal_at(job.job_id, job.terminal_at)
                    if job.terminal_at
                    else None
                ),
                "error_message": body.get("error_message"),
                "tap_error": str(job.error) if job.error is not None else None,
            }
            record.update({name: body.get(name) for name in _PROGRESS_FIELDS})
            record.update({name: manifest.get(name) for name in _MANIFEST_FIELDS})
            record.update(self._kept(job.job_id, body, manifest))
            yield self._shaper.conform(record)
            self._shaper.report(job.job_id)

    def _kept(
        self,
        job_id: str,
        body: Mapping[str, t.Any],
        manifest: Mapping[str, t.Any],
    ) -> dict[str, t.Any]:
        """The whole manifest and the poll answer's unknown fields, made safe."""
        shaper = self._shaper
        unknown = {name: value for name, value in body.items() if name not in _POLL_FIELDS}
        shaper.note_unknown(unknown, job_id=job_id, where="the jobs stream's _extra column")
        shaper.note_unknown(
            [f"manifest.{name}" for name in manifest if name not in _MANIFEST_FIELDS],
            job_id=job_id,
            where="the jobs stream's manifest column",
        )
        if not shaper.keep_unknown:
            return {}
        kept: dict[str, t.Any] = {"manifest": None, EXTRA_FIELD: None}
        for column, value in (("manifest", manifest), (EXTRA_FIELD, unknown)):
            if value:
                kept[column], dropped = keep_json(dict(value))
                shaper.dropped_kept += dropped
        return kept


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
