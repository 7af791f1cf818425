"""Pages of a job's results: the page itself, the next_cursor paginator, an in-order prefetcher."""

from __future__ import annotations

import functools
import logging
import re
import typing as t
from dataclasses import dataclass

from tap_openfunnel.bounds import check_page
from tap_openfunnel.exceptions import MalformedPageError, PageSequenceError
from tap_openfunnel.logs import shown
from tap_openfunnel.prefetch import Lookahead, RequestBudget

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from tap_openfunnel.prefetch import Request

LOGGER = logging.getLogger("tap-openfunnel")

_PAGE_NAME = re.compile(r"page_(\d{4,})")
_OBJECTS_ONLY = {dict}  # the types of a page's rows when all are JSON objects


@dataclass(frozen=True)
class Page:
    """One page of a job's results, as the poll endpoint returned it.

    Attributes:
        name: The page name the API says it returned (``page``), e.g. ``page_0003``.
        rows: The company rows (``[]`` when the API sent none or null).
        next_cursor: The next page's name, or None on the last page written so far.
        text_checked: True when decoding already proved every string valid UTF-8
            without NUL, so the record path need not check each one again.
        status: The job's ``status`` in the same answer, as sent (None: absent).
        job_id: The ``job_id`` in the same answer, as sent (None: absent).
    """

    name: str | None
    rows: list[dict[str, t.Any]]
    next_cursor: str | None
    text_checked: bool = False
    status: t.Any = None
    job_id: t.Any = None

    @classmethod
    def from_response(cls, body: Mapping[str, t.Any], *, text_checked: bool = False) -> Page:
        """Read the page part of a poll answer, tolerating odd shapes.

        Args:
            body: The decoded poll answer.
            text_checked: See the attribute.

        Returns:
            The page.
        """
        rows = body.get("rows")
        cursor = body.get("next_cursor")
        name = body.get("page")
        check_page(name, cursor, rows)
        if rows is not None and not isinstance(rows, list):
            msg = (
                f"the answer for page '{shown(name, 40)}' has 'rows' of type "
                f"{type(rows).__name__}, not a list, so its companies cannot be read."
            )
            raise MalformedPageError(msg)
        if cursor is not None and not isinstance(cursor, str):
            msg = (
                f"the answer for page '{shown(name, 40)}' has a next_cursor of type "
                f"{type(cursor).__name__}, not a page name, so the next page is unknown."
            )
            raise MalformedPageError(msg)
        if rows and set(map(type, rows)) == _OBJECTS_ONLY:
            kept = rows  # every row an object, as documented: nothing to copy
        else:
            kept = [row for row in rows if isinstance(row, dict)] if rows else []
        if isinstance(rows, list) and len(kept) < len(rows):
            LOGGER.warning(
                "Page %s: %d of its rows are not JSON objects and cannot become records; "
                "they were skipped (and will show in the row count check).",
                shown(name, 40),
                len(rows) - len(kept),
            )
        return cls(
            name=name if isinstance(name, str) and name else None,
            rows=kept,
            next_cursor=cursor if isinstance(cursor, str) and cursor else None,
            text_checked=text_checked,
            status=body.get("status"),
            job_id=body.get("job_id"),
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


# Bounds on a page walk, so that no answer can keep a job reading forever.
MAX_PAGES_PAST_MANIFEST = 5  # pages followed beyond manifest.pages
MAX_PAGES_WITHOUT_MANIFEST = 10_000  # a million rows at the documented 100 per page
MAX_EMPTY_PAGES_IN_A_ROW = 3  # empty pages that still point on


class NextCursorPaginator:
    """Follows ``next_cursor`` from a start cursor, and refuses any walk that cannot end.

    Each page is checked by :meth:`accept` *before* any of its rows go out: a page that
    was already served (under any name, the first page included), a ``next_cursor``
    pointing at one, more pages than the manifest allows (plus a small margin) or a run
    of empty pages that keep pointing on end the walk with a ``PageSequenceError``. The
    rows delivered before keep their ranks and state keeps the cursor of the refused
    page, so nothing is emitted twice under a new rank.

    Args:
        job_id: The job, for error messages.
        start: The cursor to read first (None: the first page).
        total_pages: ``manifest.pages``, when known.
    """

    def __init__(self, job_id: str, start: str | None, total_pages: int | None = None) -> None:
        self.job_id = job_id
        self.current: str | None = start
        self.finished = False
        # Pages before a resumed start were served in earlier runs: by the page_NNNN
        # scheme, a cursor pointing back at one of them is a loop too.
        self._walked = min(page_index(start) or 0, MAX_PAGES_WITHOUT_MANIFEST)
        self._served: set[str] = {page_name(index) for index in range(self._walked)}
        self._empty_in_a_row = 0
        self.limit = (
            total_pages + MAX_PAGES_PAST_MANIFEST
            if total_pages is not None
            else MAX_PAGES_WITHOUT_MANIFEST
        )

    def accept(self, page: Page) -> None:
        """Check a page just read, then move to the cursor it points at.

        Args:
            page: The page answered for ``current``.

        Raises:
            PageSequenceError: The walk would repeat a page or never end.
        """
        requested = self.current
        names = {page_name(0) if requested is None else requested}
        if page.name:
            if page.name in self._served and page.name != requested:
                # Its rows were delivered already: none of them may go out again.
                self._fail(f"answered {requested!r} with page {page.name!r}, already read")
            names.add(page.name)
        self._served |= names
        self._walked += 1
        self._empty_in_a_row = 0 if page.rows else self._empty_in_a_row + 1
        next_cursor = page.next_cursor
        if not next_cursor:
            self.finished = True
            return
        # From here on the page's own rows are sound; only where it points is not.
        if next_cursor in self._served:
            self._fail(f"pointed from {page.name or requested!r} back to {next_cursor!r}", page)
        if self._walked >= self.limit:
            self._fail(
                f"still pointed on after {self._walked} pages, beyond what its manifest "
                f"allows ({self.limit - MAX_PAGES_PAST_MANIFEST} pages and a margin of "
                f"{MAX_PAGES_PAST_MANIFEST})"
                if self.limit != MAX_PAGES_WITHOUT_MANIFEST
                else f"still pointed on after {self._walked} pages, the most the tap "
                "follows for a job without a manifest page count",
                page,
            )
        if self._empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW:
            self._fail(
                f"sent {self._empty_in_a_row} empty pages in a row that still point on", page
            )
        self.current = next_cursor

    def _fail(self, problem: str, page: Page | None = None) -> t.NoReturn:
        msg = (
            f"Job {self.job_id}: the API {problem}, so following its pages would repeat rows "
            "or never end. The tap stopped reading this job there; every row before was "
            "delivered once, with its rank, and state keeps the cursor of the last page "
            "it could trust. Report this to OpenFunnel; the next run retries from there."
        )
        raise PageSequenceError(self.job_id, msg, page)


def page_requests(
    job_id: str,
    fetch_body: Callable[[str | None], bytes],
    start: str | None,
    total_pages: int | None,
    *,
    first_at_hand: bool,
) -> Iterator[Request]:
    """The page requests :class:`PageReader` makes ahead for one job, in reading order.

    None when the walk cannot be planned: the cursor scheme is not ``page_NNNN`` or the
    manifest gives no page count (the pages are then read one at a time).

    Args:
        job_id: The job.
        fetch_body: Fetches one page's body by cursor.
        start: The cursor the walk starts at (None: the first page).
        total_pages: ``manifest.pages``, when known.
        first_at_hand: True when the start page came with the poll (not fetched again).

    Yields:
        ``((job_id, page name), fetch)`` for each page to fetch ahead.
    """
    start_index = page_index(start)
    if total_pages is None or start_index is None:
        return
    for index in range(start_index + first_at_hand, total_pages):
        name = page_name(index)
        yield (job_id, name), functools.partial(fetch_body, name)


class PageReader:
    """Reads a terminal job's pages in order, with up to ``concurrency`` requests in flight.

    Records must come out in page order and state may only move past pages that were
    fully emitted, so prefetched pages are yielded strictly in sequence. Prefetching is
    used only when it is provably reading the right pages: the cursor scheme is
    ``page_NNNN``, the manifest gives the page count, and every page answered names
    itself and its successor as expected. On any disagreement the reader falls back to
    following ``next_cursor`` one page at a time.

    The bodies fetched ahead come from a :class:`~tap_openfunnel.prefetch.Lookahead`:
    the run's, which fetches across jobs (the next jobs' pages while this one's are
    emitted), or, when none is given, one of the reader's own over this job's pages.

    Prefetch threads only fetch bytes; every body is decoded in the thread that iterates
    :meth:`pages`, in :meth:`_decode`, the one place a page's answer becomes a page.
    Objects built in a worker thread are allocated in that thread's own malloc arena and
    freed from another; decoding there left each worker's arena holding decoded pages'
    leftovers, the suspected source of the native memory growth of long runs
    (docs/benchmarks.md).

    Args:
        job_id: The job.
        fetch_body: Fetches one page's body by cursor (None: the first page); called
            from the prefetch threads, so it must not decode.
        read_page: Decodes a fetched body, ``read_page(cursor, body)``, or fetches and
            decodes the page itself when ``body`` is None; re-reads a body that does
            not decode.
        concurrency: Page requests in flight (1: strictly sequential).
        lookahead: The run's look-ahead, shared by every job it reads.
    """

    def __init__(
        self,
        job_id: str,
        fetch_body: Callable[[str | None], bytes],
        read_page: Callable[[str | None, bytes | None], Page],
        *,
        concurrency: int = 1,
        lookahead: Lookahead | None = None,
    ) -> None:
        self.job_id = job_id
        self._fetch_body = fetch_body
        self._read_page = read_page
        self.concurrency = max(1, concurrency)
        self._lookahead = lookahead

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
        paginator = NextCursorPaginator(self.job_id, start, total_pages)
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
            first = None
        yield from self._sequential(paginator, first)

    def _decode(self, cursor: str | None, body: bytes | None) -> Page:
        """The page answered for ``cursor``, from its body (None: fetched here, in turn)."""
        if body is None and self._lookahead is not None:
            # Within the run's budget of requests in flight.
            body = self._lookahead.budget.call(functools.partial(self._fetch_body, cursor))
        return self._read_page(cursor, body)

    def _sequential(self, paginator: NextCursorPaginator, first: Page | None) -> Iterator[Page]:
        page = first if first is not None else self._decode(paginator.current, None)
        while True:
            paginator.accept(page)
            yield page
            if paginator.finished:
                return
            page = self._decode(paginator.current, None)

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
        lookahead, own = self._lookahead, None
        if lookahead is None:
            own = RequestBudget(self.concurrency)
            lookahead = Lookahead(
                own,
                page_requests(
                    self.job_id,
                    self._fetch_body,
                    page_name(start_index),
                    total_pages,
                    first_at_hand=first is not None,
                ),
            )
            # The workers start on this job's pages before the first is needed.
            lookahead.fill()
        try:
            for index in range(start_index, total_pages):
                if index == start_index and first is not None:
                    page = first
                else:
                    body = lookahead.take((self.job_id, page_name(index)))
                    page = self._decode(page_name(index), body)
                    del body
                if page.name != page_name(index):
                    LOGGER.warning(
                        "Job %s: asked for %s but the API answered %r; reading the rest "
                        "one page at a time by next_cursor.",
                        self.job_id,
                        page_name(index),
                        page.name,
                    )
                    return
                paginator.accept(page)
                yield page
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
            # Whatever this job left fetched ahead is of no use any more.
            lookahead.forget(self.job_id)
            if own is not None:
                lookahead.close()
                own.close()
