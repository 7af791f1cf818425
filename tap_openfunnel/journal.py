"""The submission journal: what this machine has bought, whichever pipeline or state asked."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import sqlite3
import typing as t
from dataclasses import dataclass, replace
from pathlib import Path

from tap_openfunnel.exceptions import AmbiguousSubmitError, ApiError, OpenFunnelError
from tap_openfunnel.journal_lock import LockWaitError, SubmitLock
from tap_openfunnel.submissions import (
    IN_FLIGHT,
    INTENT,
    NOT_SENT,
    SUBMITTED,
    Submission,
    UnconfirmedSubmitError,
    resubmit_hint,
    surely_not_created,
    unconfirmed_message,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tap_openfunnel.entries import BuildEntry

SCHEMA_VERSION = 1
# How long a run waits for another run's submit to the same journal to finish.
LOCK_WAIT_SECONDS = 900.0
_WRITE_TIMEOUT_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    api_url TEXT NOT NULL,
    job_type TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    entry TEXT NOT NULL,
    job_id TEXT,
    submitted_at TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_request
    ON submissions (account, api_url, job_type, fingerprint, id);
"""


class JournalError(OpenFunnelError):
    """The journal cannot be opened, read or written; nothing was submitted after that."""


def default_path() -> Path:
    """Where the journal lives unless ``journal_path`` says otherwise.

    Returns:
        ``$XDG_STATE_HOME/tap-openfunnel/journal.sqlite3``, with ``~/.local/state``
        when the variable is unset or not an absolute path (as the XDG spec says).
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "tap-openfunnel" / "journal.sqlite3"


def account_of(api_key: str) -> str:
    """Who the submissions belong to: a digest of the API key, never the key.

    Args:
        api_key: The API key.

    Returns:
        A short, stable digest.
    """
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class SubmitOutcome:
    """What :meth:`Journal.submit_once` did.

    Attributes:
        job_id: The entry's job.
        submitted_at: When it was submitted, ISO 8601.
        sent_here: True when this run sent the submit; False when another run had
            submitted the same request meanwhile and this one re-attaches to its job.
    """

    job_id: str
    submitted_at: str
    sent_here: bool


class Journal:
    """Every submission of one account and API URL, in a SQLite file shared by all runs.

    Singer state belongs to one pipeline; this file belongs to the machine's user, so
    a second pipeline, a full refresh or a lost state still finds what was bought. An
    *intent* row is committed before each POST and the job id written after it, so a
    run killed in between leaves a trace instead of a silent second purchase. Runs
    that submit take a lock file beside the journal for the whole look-up, intent,
    POST and answer: two runs planning the same entry submit it once, and the second
    re-attaches to the first one's job.

    Args:
        path: The journal file.
        api_key: The API key (only its digest is stored).
        api_url: The API's base URL.
        read_only: True for a dry run: an absent file reads as empty and is not created.
        lock_wait: Seconds to wait for another run's submit before giving up.
    """

    def __init__(
        self,
        path: Path,
        *,
        api_key: str,
        api_url: str,
        read_only: bool = False,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.path = path
        self.account = account_of(api_key)
        self.api_url = api_url
        self._submit_lock = SubmitLock(path.with_name(path.name + "-lock"), wait=lock_wait)
        self._seen: dict[tuple[str, str], int] = {}
        self._db: sqlite3.Connection | None = None
        if read_only and not path.exists():
            return
        with self._failing("opened"):
            if read_only:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
                )
                if not self._check_version():
                    self._db.close()
                    self._db = None  # created, never written: nothing submitted yet
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    path, timeout=_WRITE_TIMEOUT_SECONDS, isolation_level=None
                )
                self._check_version()  # before changing anything in someone else's file
                self._db.execute("PRAGMA journal_mode=WAL")
                # An intent must be on disk before the POST goes out.
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._checkpoint()

    def describe(self) -> str:
        """The journal in words, for the dry run.

        Returns:
            Its path and what it holds for this account and API URL.
        """
        if self._db is None:
            return f"Journal: {self.path} (not created yet: nothing submitted through it)."
        with self._failing("read"):
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM submissions WHERE account = ? AND api_url = ?",
                (self.account, self.api_url),
            ).fetchone()
        return f"Journal: {self.path} ({count} submission(s) for this API key and API URL)."

    def latest(self, entry: BuildEntry, *, probe: bool = True) -> Submission | None:
        """The newest submission of the entry's request (sent, or perhaps sent).

        Args:
            entry: The config entry.
            probe: Tell an intent whose run is submitting right now (``in_flight``)
                from one left by a run that died.

        Returns:
            The row, or None when this request was never submitted through the journal.
        """
        row = None
        if self._db is not None:
            with self._failing("read"):
                row = self._db.execute(
                    "SELECT id, entry, job_id, submitted_at, status FROM submissions "
                    "WHERE account = ? AND api_url = ? AND job_type = ? AND fingerprint = ? "
                    "AND status != ? ORDER BY id DESC LIMIT 1",
                    (*self._request(entry), NOT_SENT),
                ).fetchone()
        found = None if row is None else Submission(*row)
        seen = 0 if found is None else found.row_id
        if probe and found is not None and found.status == INTENT and self._submit_held_elsewhere():
            # Another run is between its intent and OpenFunnel's answer: this run's
            # submit waits for it and then re-attaches to its job.
            found = replace(found, status=IN_FLIGHT)
            seen -= 1
        self._seen[self._request(entry)[2:]] = seen
        return found

    def submit_once(
        self,
        entry: BuildEntry,
        send: Callable[[], str],
        *,
        resubmit_unconfirmed: bool,
    ) -> SubmitOutcome:
        """Submit the entry unless another run did since it was planned; record it either way.

        Args:
            entry: The config entry.
            send: POSTs the request and returns the job id.
            resubmit_unconfirmed: Submit even when a newer intent has no answer recorded.

        Returns:
            The job to follow, and whether this run sent it.

        Raises:
            UnconfirmedSubmitError: Another run's submit of the entry may have landed.
        """
        with self._lock():
            newer = self._newer_than_planned(entry)
            if newer is not None and newer.confirmed and newer.job_id:
                return SubmitOutcome(newer.job_id, newer.submitted_at, sent_here=False)
            if newer is not None and not resubmit_unconfirmed:
                raise UnconfirmedSubmitError(unconfirmed_message(entry, newer, self.path))
            submitted_at = dt.datetime.now(dt.timezone.utc).isoformat()
            row_id = self._write(
                "INSERT INTO submissions (account, api_url, job_type, fingerprint, entry, "
                "submitted_at, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*self._request(entry), entry.label, submitted_at, INTENT),
            )
            try:
                job_id = send()
            except AmbiguousSubmitError as exc:
                # The intent stays: a plain re-run fails the entry instead of buying it twice.
                text = resubmit_hint(str(exc))
                raise AmbiguousSubmitError(text, status=exc.status, path=exc.path) from None
            except ApiError as exc:
                if surely_not_created(exc):
                    self._write(
                        "UPDATE submissions SET status = ? WHERE id = ?", (NOT_SENT, row_id)
                    )
                raise
            try:
                self._write(
                    "UPDATE submissions SET job_id = ?, status = ? WHERE id = ?",
                    (job_id, SUBMITTED, row_id),
                )
            except JournalError as exc:
                msg = f"{entry.label} was submitted as job {job_id}, but {exc}"
                raise JournalError(msg) from None
            self._seen[self._request(entry)[2:]] = row_id
            return SubmitOutcome(job_id, submitted_at, sent_here=True)

    # Internals --------------------------------------------------------------------

    def _request(self, entry: BuildEntry) -> tuple[str, str, str, str]:
        return (self.account, self.api_url, entry.job_type.value, entry.fingerprint)

    def _newer_than_planned(self, entry: BuildEntry) -> Submission | None:
        planned = self._seen.get(self._request(entry)[2:], 0)
        latest = self.latest(entry, probe=False)
        return latest if latest is not None and latest.row_id > planned else None

    def _check_version(self) -> bool:
        """Refuse a newer journal, or a database that is not a journal at all.

        Returns:
            Whether the journal's table exists yet.
        """
        assert self._db is not None  # noqa: S101 - called right after connecting
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            msg = (
                f"version {version} was written by a newer tap-openfunnel (this one reads "
                f"version {SCHEMA_VERSION}); upgrade the tap"
            )
            raise sqlite3.DatabaseError(msg)
        tables = {
            name
            for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        foreign = sorted(tables - {"submissions", "sqlite_sequence"})
        if foreign:
            msg = (
                f"it is another program's SQLite database (tables {', '.join(foreign[:3])}), "
                "not a tap-openfunnel journal; it was left as it was"
            )
            raise sqlite3.DatabaseError(msg)
        return "submissions" in tables

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        if self._db is None:
            msg = f"The submission journal {self.path} is open read-only; nothing was submitted."
            raise JournalError(msg)
        with self._failing("written"):
            # Each statement commits on its own (autocommit), synchronously to disk.
            cursor = self._db.execute(sql, params)
            self._checkpoint()
            return int(cursor.lastrowid or 0)

    def _checkpoint(self) -> None:
        """Move what the WAL holds into the journal file itself.

        The tap ends without closing its connections (no interpreter teardown), so the WAL
        is never folded back on close: without this, a copy or backup of the journal file
        alone would hold no submission. A reader holding the WAL only delays this to the
        next write; SQLite answers "busy" instead of raising.
        """
        assert self._db is not None  # noqa: S101 - only called on a writable journal
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _submit_held_elsewhere(self) -> bool:
        with self._failing("read"):
            return self._submit_lock.held_elsewhere()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            with self._failing("locked"), self._submit_lock.hold():
                yield
        except LockWaitError as exc:
            msg = (
                f"Could not lock the submission journal ({self._submit_lock.path}) within "
                f"{self._submit_lock.wait:,.0f} s ({exc}): another tap-openfunnel run has "
                "been submitting through it all that time. Nothing was submitted. Wait "
                "for that run, or give this one another 'journal_path'."
            )
            raise JournalError(msg) from None

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            msg = (
                f"The submission journal {self.path} could not be {what} ({exc}). It is "
                "how the tap knows what it already bought, whichever pipeline or state "
                "file submitted it, so the run stops here rather than risk paying twice. "
                "Fix the file or its folder's permissions, point 'journal_path' at a "
                "writable place, or turn the journal off ('journal: false'; runs then "
                "rely on their own Singer state alone)."
            )
            raise JournalError(msg) from None
