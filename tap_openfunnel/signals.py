"""SIGINT and SIGTERM: delivered to the main thread only, and never inside a write of output."""

from __future__ import annotations

import contextlib
import signal
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterator

# The signals whose handler (cli.exit_on_signal) writes a STATE line and exits.
HANDLED = frozenset({signal.SIGINT, signal.SIGTERM})


def keep_from_this_thread() -> None:
    """Block the handled signals in the calling (worker) thread, for good.

    Python runs signal handlers in the main thread, but the kernel may deliver a signal
    to any thread that does not block it, and the handler then runs at whatever point
    the main thread has reached. Worker threads that block them leave delivery to the
    main thread, where :func:`deferred` can hold it back.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the handled signals in this thread until the block ends, then deliver them.

    Yields:
        Nothing; the block runs with the signals pending instead of delivered.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
