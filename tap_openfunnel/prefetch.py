"""The run's in-flight budget, and a look-ahead that fetches page bodies in reading order.

The tap reads jobs one after another and each job's pages in order, since records go
out in that order and state moves past a page only once its records are out. Fetching
need not wait for that: while one job's pages are emitted, the next pages, of this job
and of the jobs after it, can already be on their way. Two rules keep that safe:

- at most ``limit`` requests are in flight for the whole run (``page_concurrency``),
  whoever sends them: the look-ahead's workers, the poller, or the reading thread;
- at most ``2 x limit`` page bodies are asked for ahead and not yet taken, so memory
  is bounded by that many undecoded bodies, whatever the number of jobs or pages.

Workers only move bytes; bodies are decoded in the thread that takes them (see
:class:`~tap_openfunnel.pagination.PageReader`).
"""

from __future__ import annotations

import threading
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor

from tap_openfunnel import signals

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = t.TypeVar("T")

# What the look-ahead fetches: a page by job and page name.
Key = tuple[str, str]
# One request of a plan: its key, and the call that fetches its body.
Request = tuple[Key, "Callable[[], bytes]"]
_END = object()


class RequestBudget:
    """At most ``limit`` requests in flight for the whole run, and the workers that use them.

    Every request of the read path takes a slot while it is sent and answered: the
    workers' (:meth:`submit`) and the reading thread's own (:meth:`call`). The workers
    are started on first use and block the termination signals, which the main thread
    handles.

    Args:
        limit: Requests in flight at most (``page_concurrency``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._slots = threading.BoundedSemaphore(self.limit)
        self._executor: ThreadPoolExecutor | None = None

    def call(self, fetch: Callable[[], T]) -> T:
        """Run one request in the calling thread, within the budget.

        Args:
            fetch: Sends the request and returns its answer.

        Returns:
            What ``fetch`` returned.
        """
        with self._slots:
            return fetch()

    def submit(self, fetch: Callable[[], T]) -> Future[T]:
        """Run one request in a worker, within the budget.

        Args:
            fetch: Sends the request and returns its answer; must not decode.

        Returns:
            Its future.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.limit,
                thread_name_prefix="fetch",
                # SIGINT/SIGTERM go to the main thread, which holds them while it writes.
                initializer=signals.keep_from_this_thread,
            )
        return self._executor.submit(self.call, fetch)

    def close(self) -> None:
        """Drop the requests not started yet; the workers end when their request does."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class Lookahead:
    """Page bodies fetched ahead of the reader, in the order it will take them.

    ``plan`` yields the requests in reading order: the pages of one job, then those of
    the next. It yields None when nothing more is known yet (the next job is not
    terminal); asked again later, it goes on from there. The reader takes each body by
    its key with :meth:`take`; a key the plan does not reach, or not yet, is None, and
    the reader fetches that page itself. Bodies asked for before a taken key were
    skipped by the reader (a job it gave up on) and are dropped.

    Args:
        budget: The run's request budget.
        plan: The requests, in reading order.
    """

    def __init__(self, budget: RequestBudget, plan: Iterator[Request | None]) -> None:
        self.budget = budget
        self._plan = plan
        self._window: dict[Key, Future[bytes]] = {}
        self._forgotten: set[str] = set()
        self._planned_all = False

    @property
    def depth(self) -> int:
        """The most bodies asked for ahead and not yet taken."""
        return 2 * self.budget.limit

    def fill(self) -> None:
        """Ask for the next bodies of the plan, up to :attr:`depth` waiting."""
        while len(self._window) < self.depth and not self._planned_all:
            request = next(self._plan, _END)
            if request is _END:
                self._planned_all = True
                return
            if request is None:
                return
            key, fetch = t.cast("Request", request)
            if key[0] not in self._forgotten and key not in self._window:
                self._window[key] = self.budget.submit(fetch)

    def take(self, key: Key) -> bytes | None:
        """The body for ``key`` (waiting for it), or None when it was not fetched ahead.

        Args:
            key: The job and page name the reader needs next.

        Returns:
            The body, undecoded; None when the reader must fetch the page itself.

        Raises:
            Exception: Whatever fetching it raised (the job's failure, not the run's).
        """
        if key not in self._window:
            self.fill()
            if key not in self._window:
                return None
        for earlier in list(self._window):
            if earlier == key:
                break
            self._window.pop(earlier).cancel()
        future = self._window.pop(key)
        # Ask for the next body before waiting for this one.
        self.fill()
        return future.result()

    def forget(self, job_id: str) -> None:
        """Drop a job's bodies and fetch no more of them (the reader is done with it).

        Args:
            job_id: The job.
        """
        self._forgotten.add(job_id)
        for key in [key for key in self._window if key[0] == job_id]:
            self._window.pop(key).cancel()

    def close(self) -> None:
        """Drop every body not taken."""
        for future in self._window.values():
            future.cancel()
        self._window.clear()
        self._planned_all = True
