"""The lock runs share while they submit through one journal: one submit at a time."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Each try is short, so a signal reaches the run within a fraction of a second while
# it waits (a long SQLite busy wait would hold it off in C).
_STEP_SECONDS = 0.1


class LockWaitError(Exception):
    """Another run held the lock for the whole wait."""


class SubmitLock:
    """An exclusive lock on a small SQLite file beside the journal.

    SQLite's file locks work alike on every platform and are released by the operating
    system when the process holding them dies, however it dies: a run killed mid-submit
    never leaves the lock behind.

    Args:
        path: The lock file.
        wait: Seconds to wait for another run's lock before giving up.
    """

    def __init__(self, path: Path, *, wait: float) -> None:
        self.path = path
        self.wait = wait

    def held_elsewhere(self) -> bool:
        """Whether another connection (another run) holds the lock right now.

        Returns:
            True while someone else is submitting.
        """
        if not self.path.exists():
            return False
        probe = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
        return False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the block, waiting for another holder up to ``wait``.

        Yields:
            Nothing; the lock is held meanwhile.

        Raises:
            LockWaitError: Another run held it all that time.
        """
        lock = sqlite3.connect(self.path, timeout=_STEP_SECONDS, isolation_level=None)
        deadline = time.monotonic() + self.wait
        try:
            while True:
                try:
                    lock.execute("BEGIN EXCLUSIVE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise LockWaitError(str(exc)) from None
                    time.sleep(_STEP_SECONDS)
            try:
                yield
            finally:
                lock.execute("ROLLBACK")
        finally:
            lock.close()
