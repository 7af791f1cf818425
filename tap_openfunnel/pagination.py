"""Walking a terminal job's pages: the next_cursor paginator and an in-order prefetcher."""

from __future__ import annotations

import logging
import re
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor

from tap_openfunnel import signals
from tap_openfunnel.exceptions import PageSequenceError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tap_openfunnel.jobs import Page

LOGGER = logging.getLogger("tap-openfunnel")

_PAGE_NAME = re.compile(r"page_(\d{4,})")


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

    Prefetch threads only fetch bytes; every body is decoded in the thread that iterates
    :meth:`pages`. Objects built in a worker thread are allocated in that thread's own
    malloc arena and freed from another; decoding there left each worker's arena holding
    decoded pages' leftovers, the suspected source of issue 12's native memory growth
    (docs/benchmarks.md).

    Args:
        job_id: The job.
        fetch_body: Fetches one page's body by cursor (None: the first page); called
            from the prefetch threads, so it must not decode.
        read_page: Decodes a fetched body, ``read_page(cursor, body)``, or fetches and
            decodes the page itself when ``body`` is None; re-reads a body that does
            not decode.
        concurrency: Page requests in flight (1: strictly sequential).
    """

    def __init__(
        self,
        job_id: str,
        fetch_body: Callable[[str | None], bytes],
        read_page: Callable[[str | None, bytes | None], Page],
        *,
        concurrency: int = 1,
    ) -> None:
        self.job_id = job_id
        self._fetch_body = fetch_body
        self._read_page = read_page
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
        page = first if first is not None else self._read_page(paginator.current, None)
        while True:
            yield page
            paginator.advance(page.next_cursor)
            if paginator.finished:
                return
            page = self._read_page(paginator.current, None)

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
            # SIGINT/SIGTERM go to the main thread, which holds them while it writes.
            initializer=signals.keep_from_this_thread,
        )
        # Bodies requested and not yet decoded: at most `concurrency`, so memory is
        # bounded by that many pages whatever the job's size. A page at hand takes no
        # slot: every worker has a request in flight from the start.
        window: dict[int, Future[bytes]] = {}
        upcoming = iter(range(start_index + (first is not None), total_pages))

        def fill() -> None:
            while len(window) < self.concurrency:
                index = next(upcoming, None)
                if index is None:
                    return
                window[index] = executor.submit(self._fetch_body, page_name(index))

        try:
            fill()
            for index in range(start_index, total_pages):
                name = page_name(index)
                if index == start_index and first is not None:
                    page = first
                else:
                    body = window.pop(index).result()
                    # Ask for the next page before decoding this one.
                    fill()
                    page = self._read_page(name, body)
                    del body
                if page.name != name:
                    LOGGER.warning(
                        "Job %s: asked for %s but the API answered %r; reading the rest "
                        "one page at a time by next_cursor.",
                        self.job_id,
                        name,
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
