"""Pages of a job's results: the page itself, the next_cursor paginator, an in-order prefetcher."""

from __future__ import annotations

import logging
import re
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tap_openfunnel.exceptions import PageSequenceError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

LOGGER = logging.getLogger("tap-openfunnel")

_PAGE_NAME = re.compile(r"page_(\d{4,})")


@dataclass(frozen=True)
class Page:
    """One page of a job's results, as the poll endpoint returned it.

    Attributes:
        name: The page name the API says it returned (``page``), e.g. ``page_0003``.
        rows: The company rows (``[]`` when the API sent none or null).
        next_cursor: The next page's name, or None on the last page written so far.
    """

    name: str | None
    rows: list[dict[str, t.Any]]
    next_cursor: str | None

    @classmethod
    def from_response(cls, body: Mapping[str, t.Any]) -> Page:
        """Read the page part of a poll answer, tolerating odd shapes.

        Args:
            body: The decoded poll answer.

        Returns:
            The page.
        """
        rows = body.get("rows")
        cursor = body.get("next_cursor")
        name = body.get("page")
        kept = [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        if isinstance(rows, list) and len(kept) < len(rows):
            LOGGER.warning(
                "Page %s: %d of its rows are not JSON objects and cannot become records; "
                "they were skipped (and will show in the row count check).",
                name,
                len(rows) - len(kept),
            )
        return cls(
            name=str(name) if name is not None else None,
            rows=kept,
            next_cursor=str(cursor) if cursor else None,
        )


def page_name(index: int) -> str:
    """The API's name for page ``index`` (``page_0000`` is the first).

    Args:
        index: Zero-based page index.

    Returns:
        The page name.
    """
    return f"page_{index:04d}"


def page_index(name: str | None) -> int | None:
    """The index encoded in a page name, or None when it is not of the ``page_NNNN`` form.

    Args:
        name: A cursor or page name.

    Returns:
        The zero-based index, or None.
    """
    if name is None:
        return 0
    match = _PAGE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


class NextCursorPaginator:
    """Follows ``next_cursor`` from a start cursor until it is null.

    The SDK's ``BaseAPIPaginator`` works on ``requests.Response`` objects and only spots
    a token repeated twice in a row; this one reads decoded pages and refuses any cursor
    it has already followed, so a cycle (a -> b -> a) cannot loop forever either.

    Args:
        job_id: The job, for error messages.
        start: The cursor to read first (None: the first page).
    """

    def __init__(self, job_id: str, start: str | None) -> None:
        self.job_id = job_id
        self.current: str | None = start
        self.finished = False
        self._seen: set[str | None] = {start}

    def advance(self, next_cursor: str | None) -> None:
        """Move to the cursor a page pointed at.

        Args:
            next_cursor: The page's ``next_cursor``.

        Raises:
            PageSequenceError: The cursor was already followed.
        """
        if not next_cursor:
            self.finished = True
            return
        if next_cursor in self._seen:
            msg = (
                f"Job {self.job_id}: the API returned next_cursor {next_cursor!r} again after "
                "it had already been read, so following it would loop. The tap stopped "
                "reading this job; the rows before it were delivered and state keeps the "
                "cursor. Report this to OpenFunnel; the next run retries from there."
            )
            raise PageSequenceError(self.job_id, msg)
        self._seen.add(next_cursor)
        self.current = next_cursor


class PageReader:
    """Reads a terminal job's pages in order, with up to ``concurrency`` requests in flight.

    Records must come out in page order and state may only move past pages that were
    fully emitted, so prefetched pages are yielded strictly in sequence. Prefetching is
    used only when it is provably reading the right pages: the cursor scheme is
    ``page_NNNN``, the manifest gives the page count, and every page answered names
    itself and its successor as expected. On any disagreement the reader falls back to
    following ``next_cursor`` one page at a time.

    Args:
        job_id: The job.
        fetch_page: Reads one page by cursor (None: the first page).
        concurrency: Page requests in flight (1: strictly sequential).
    """

    def __init__(
        self,
        job_id: str,
        fetch_page: Callable[[str | None], Page],
        *,
        concurrency: int = 1,
    ) -> None:
        self.job_id = job_id
        self._fetch_page = fetch_page
        self.concurrency = max(1, concurrency)
        self.fell_back = False

    def pages(
        self,
        start: str | None,
        *,
        first: Page | None = None,
        total_pages: int | None = None,
    ) -> Iterator[Page]:
        """Yield pages from ``start`` to the end.

        Args:
            start: The cursor of the first page to read (None: ``page_0000``).
            first: That page, if already at hand (the poll that saw the job terminal).
            total_pages: ``manifest.pages``, when known.

        Yields:
            Each page, in order.
        """
        paginator = NextCursorPaginator(self.job_id, start)
        start_index = page_index(start)
        if (
            self.concurrency > 1
            and total_pages is not None
            and start_index is not None
            and start_index < total_pages
        ):
            yield from self._prefetched(paginator, start_index, total_pages, first)
            if paginator.finished:
                return
            self.fell_back = True
            first = None
        yield from self._sequential(paginator, first)

    def _sequential(self, paginator: NextCursorPaginator, first: Page | None) -> Iterator[Page]:
        page = first if first is not None else self._fetch_page(paginator.current)
        while True:
            yield page
            paginator.advance(page.next_cursor)
            if paginator.finished:
                return
            page = self._fetch_page(paginator.current)

    def _prefetched(
        self,
        paginator: NextCursorPaginator,
        start_index: int,
        total_pages: int,
        first: Page | None,
    ) -> Iterator[Page]:
        """Yield pages while they match the ``page_NNNN`` plan; leave the rest to next_cursor.

        On return, ``paginator`` is finished, or its ``current`` names the next page to
        read one at a time.
        """
        executor = ThreadPoolExecutor(
            max_workers=self.concurrency,
            thread_name_prefix=f"pages-{self.job_id[:8]}",
        )
        window: dict[int, Future[Page]] = {}
        upcoming = iter(range(start_index, total_pages))

        def fill() -> None:
            for index in upcoming:
                if index == start_index and first is not None:
                    ready: Future[Page] = Future()
                    ready.set_result(first)
                    window[index] = ready
                else:
                    window[index] = executor.submit(self._fetch_page, page_name(index))
                if len(window) >= self.concurrency:
                    return

        try:
            fill()
            for index in range(start_index, total_pages):
                page = window.pop(index).result()
                fill()
                if page.name != page_name(index):
                    LOGGER.warning(
                        "Job %s: asked for %s but the API answered %r; reading the rest "
                        "one page at a time by next_cursor.",
                        self.job_id,
                        page_name(index),
                        page.name,
                    )
                    return
                yield page
                paginator.advance(page.next_cursor)
                if paginator.finished:
                    return
                if index + 1 == total_pages:
                    LOGGER.warning(
                        "Job %s: the manifest counts %d pages but %s points on to %r; "
                        "following it.",
                        self.job_id,
                        total_pages,
                        page.name,
                        paginator.current,
                    )
                    return
                if paginator.current != page_name(index + 1):
                    LOGGER.warning(
                        "Job %s: %s points to %r, not %s; reading the rest one page at a "
                        "time by next_cursor.",
                        self.job_id,
                        page.name,
                        paginator.current,
                        page_name(index + 1),
                    )
                    return
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
