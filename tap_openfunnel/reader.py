"""Reading a prepared run's jobs: the page loop, the per-job error policy and the checks.

The streams declare what they carry and ask the :class:`JobReader` for their records;
the reader drives the run (waits, counts, failures, the checkpoint) and never calls a
stream back. Whatever goes wrong with one job's pages fails that job only: the run
goes on with the others and fails at the end, naming it.
"""

from __future__ import annotations

import functools
import logging
import typing as t

from tap_openfunnel.api import MANIFEST_FIELDS, POLL_FIELDS, PROGRESS_FIELDS
from tap_openfunnel.completeness import AnswerMismatchError, check_page
from tap_openfunnel.exceptions import (
    ApiError,
    AuthenticationError,
    ChangedShapeError,
    JobError,
    PageSequenceError,
    RowCountMismatchError,
)
from tap_openfunnel.jobs import JobStatus
from tap_openfunnel.outcomes import row_count_mismatch
from tap_openfunnel.pagination import MAX_PAGES_WITHOUT_MANIFEST as MAX_PAGES
from tap_openfunnel.pagination import PageReader, page_name, page_requests
from tap_openfunnel.prefetch import Lookahead
from tap_openfunnel.records import EXTRA_FIELD
from tap_openfunnel.safe_values import keep_json

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from tap_openfunnel.families import JobFamily
    from tap_openfunnel.jobs import JobSnapshot
    from tap_openfunnel.prefetch import Request
    from tap_openfunnel.records import RowShaper
    from tap_openfunnel.run import Run

LOGGER = logging.getLogger("tap-openfunnel")


class JobReader:
    """Hands out the records of a prepared run: each family's rows, and one summary per job.

    Args:
        run: The run, prepared from its plan.
    """

    def __init__(self, run: Run) -> None:
        self.run = run

    # Company rows ---------------------------------------------------------------------

    def records(self, family: JobFamily, shaper: RowShaper) -> Iterator[dict[str, t.Any]]:
        """Every row of the family's jobs in this run, job after job, page after page.

        Args:
            family: The job family whose stream asks.
            shaper: The stream's record shaper.

        Yields:
            Records, each page's only after the one before it.
        """
        run = self.run
        job_ids = run.jobs_to_read(family.stream_name)
        # One look-ahead for all the stream's jobs: while a job's pages are emitted, the
        # next jobs' pages are already being fetched, within the run's request budget.
        lookahead = (
            Lookahead(run.requests, self._pages_ahead(family, job_ids))
            if run.settings.page_concurrency > 1
            else None
        )
        try:
            for job_id in job_ids:
                yield from self._read_job(family, shaper, job_id, lookahead)
        finally:
            if lookahead is not None:
                lookahead.close()

    def _pages_ahead(self, family: JobFamily, job_ids: list[str]) -> Iterator[Request | None]:
        """The pages :meth:`_read_job` will read, job after job (None: not known yet).

        A job's pages are known once its poll said it is terminal, with the manifest's
        page count; until then the plan waits there (None), without polling.
        """
        run = self.run
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
                functools.partial(run.api.page_body, family.job_type, job_id),
                cursor,
                manifest_pages(snapshot.manifest),
                first_at_hand=snapshot.cursor == cursor,
            )

    def _read_job(
        self,
        family: JobFamily,
        shaper: RowShaper,
        job_id: str,
        lookahead: Lookahead | None,
    ) -> Iterator[dict[str, t.Any]]:
        """Wait for one job, walk its pages from the checkpoint, and hand each page's end back."""
        run = self.run
        snapshot = run.wait(job_id)
        if snapshot is None:
            return
        checkpoint = run.checkpoint
        start = checkpoint.position(job_id)
        cursor = start.cursor
        rows_total = start.rows_read
        _log_resume(job_id, cursor, rows_total)
        reader = PageReader(
            job_id,
            functools.partial(run.api.page_body, family.job_type, job_id),
            functools.partial(run.api.read_page, family.job_type, job_id),
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
                yield from shaper.records(
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
                    yield from shaper.records(
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
            shaper.report(job_id)
        self._read_whole(snapshot, rows_total)

    def _read_whole(self, snapshot: JobSnapshot, rows_total: int) -> None:
        """End a walk that reached the last page: done, unless a check the user asked for fails.

        A failed check leaves the job to be read again, whole, by the next run.
        """
        checkpoint = self.run.checkpoint
        if self._rows_agree(snapshot, rows_total):
            checkpoint.page_read(snapshot.job_id, next_cursor=None, rows_read=rows_total)
        else:
            checkpoint.read_again(snapshot.job_id)

    def _rows_agree(self, snapshot: JobSnapshot, rows_total: int) -> bool:
        """Compare the rows read over all runs with the manifest's count.

        False when ``strict_row_count`` fails the job (it must not be marked done).
        """
        problem = row_count_mismatch(snapshot, rows_total)
        if problem is None:
            return True
        if self.run.settings.strict_row_count:
            self.run.fail(
                RowCountMismatchError(
                    snapshot.job_id,
                    f"{problem} The job is not marked done: the next run reads it again "
                    "from its first page (same ranks, so upserting targets keep one copy) "
                    "and fails again until the counts agree or 'strict_row_count' is off.",
                ),
            )
            return False
        LOGGER.warning("%s", problem)
        return True

    # Job summaries --------------------------------------------------------------------

    def summaries(self, shaper: RowShaper) -> Iterator[dict[str, t.Any]]:
        """One record per job the run waited on, after waiting on all of them together.

        The records are the same whichever stream syncs first.

        Args:
            shaper: The jobs stream's record shaper.

        Yields:
            The jobs stream's records, in plan order.
        """
        run = self.run
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
            record.update({name: body.get(name) for name in PROGRESS_FIELDS})
            record.update({name: manifest.get(name) for name in MANIFEST_FIELDS})
            record.update(_kept(shaper, job.job_id, body, manifest))
            yield shaper.conform(record)
            shaper.report(job.job_id)


def _log_resume(job_id: str, cursor: str | None, rows_read: int) -> None:
    """Say where a job an earlier run left unfinished is picked up, if it is."""
    if cursor:
        LOGGER.info(
            "Job %s: resuming at page %r (the cursor kept in state), after %s row(s) "
            "read by earlier runs.",
            job_id,
            cursor,
            f"{rows_read:,}",
        )


def _kept(
    shaper: RowShaper,
    job_id: str,
    body: Mapping[str, t.Any],
    manifest: Mapping[str, t.Any],
) -> dict[str, t.Any]:
    """The whole manifest and the poll answer's unknown fields, made safe."""
    unknown = {name: value for name, value in body.items() if name not in POLL_FIELDS}
    shaper.note_unknown(unknown, job_id=job_id, where="the jobs stream's _extra column")
    shaper.note_unknown(
        [f"manifest.{name}" for name in manifest if name not in MANIFEST_FIELDS],
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
