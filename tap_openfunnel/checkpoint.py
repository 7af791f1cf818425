"""The single writer of each job's state partition, and the rule that keeps state honest."""

from __future__ import annotations

import datetime as dt
import json
import typing as t
from dataclasses import dataclass

from tap_openfunnel.job_ids import job_id_problem

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping


_SUBMISSION_FIELDS = ("origin", "fingerprint", "submitted_at", "request")


@dataclass(frozen=True)
class Position:
    """Where reading a job stands.

    Attributes:
        cursor: The next page to read (None: the first page, or nothing left when done).
        rows_read: Rows of the job delivered before that page, over all runs.
        done: The job was read to the end.
    """

    cursor: str | None = None
    rows_read: int = 0
    done: bool = False


class Checkpoint:
    """Writes every job's state partition; nothing else does.

    A partition lives at ``bookmarks.<stream>.partitions[]`` with context
    ``{"job_id": ...}`` and holds the reading position (``next_cursor``, ``rows_read``,
    ``done``), the submission (``origin``, ``fingerprint``, ``submitted_at``,
    ``request``), ``terminal_at`` and ``failed``.

    **Invariant: a partition in the tap's state only ever holds what is durable
    downstream.** The cursor moves past a page only once every record before it is
    durable: handed to the message writer when records are written as they come (the
    writer puts every RECORD line it holds on stdout before any STATE line, so no STATE
    can overtake its records), or, in BATCH mode, inside a batch file whose BATCH
    message is out. So whatever writes the tap's
    state, whenever it does (after a page, after each BATCH message, at stream end,
    or from a signal handler in the middle of a page), it can only write durable
    positions. Progress that is not durable yet is kept here, outside the state, until
    :meth:`promote` moves it in.

    Args:
        partition: Returns the live state partition of a job in a stream.
        emit: Writes a STATE message with the tap's whole state.
        hold_until_promoted: True in BATCH mode: pages read are durable only once the
            batch file holding them has been announced.
        due: Whether a page's new position is worth a STATE line now (None: always).
            A position that is not written at once stays in the state, and goes out
            with the next STATE line, whoever writes it. The end of a job is paced
            the same way; a submit, a failure, a job set back to be read again and a
            BATCH file are written at once regardless.
    """

    def __init__(
        self,
        partition: Callable[[str, str], dict[str, t.Any]],
        emit: Callable[[], None],
        *,
        hold_until_promoted: bool = False,
        due: Callable[[], bool] | None = None,
    ) -> None:
        self._partition = partition
        self._emit = emit
        self.hold_until_promoted = hold_until_promoted
        self._due = due
        self._streams: dict[str, str] = {}
        self._handed: dict[str, Position] = {}

    def register(self, job_id: str, stream_name: str) -> None:
        """Say which stream's state holds a job.

        Args:
            job_id: The job.
            stream_name: Its company stream.
        """
        self._streams[job_id] = stream_name

    def position(self, job_id: str) -> Position:
        """The durable reading position of a job, where a read resumes.

        Args:
            job_id: A registered job.

        Returns:
            The position.
        """
        state = self._state(job_id)
        cursor = state.get("next_cursor")
        rows = state.get("rows_read", 0)
        return Position(
            cursor=cursor if isinstance(cursor, str) and cursor else None,
            rows_read=rows if isinstance(rows, int) and not isinstance(rows, bool) else 0,
            done=state.get("done") is True,
        )

    def submission(self, job_id: str) -> dict[str, t.Any]:
        """What state remembers of a job's submission (empty for a job from config).

        Args:
            job_id: A registered job.

        Returns:
            ``origin``, ``fingerprint``, ``submitted_at`` and ``request``, where present.
        """
        state = self._state(job_id)
        return {key: state[key] for key in _SUBMISSION_FIELDS if key in state}

    def submitted(
        self,
        job_id: str,
        *,
        fingerprint: str,
        request: Mapping[str, t.Any],
        submitted_at: str,
    ) -> None:
        """Record a job just submitted, and write it out before anything else happens.

        A run killed from here on re-attaches to this job instead of paying for a
        second one.

        Args:
            job_id: The new job.
            fingerprint: The entry's fingerprint.
            request: The body sent.
            submitted_at: When, ISO 8601.
        """
        self._state(job_id).update(
            {
                "origin": "submitted",
                "fingerprint": fingerprint,
                "submitted_at": submitted_at,
                "request": dict(request),
            },
        )
        self._emit()

    def terminal_at(self, job_id: str, seen: dt.datetime) -> str:
        """When the tap first saw a job terminal: kept in state, the same on every re-read.

        Goes out with the next STATE line. A time in state that does not parse (a hand
        edit) is replaced by ``seen``.

        Args:
            job_id: A registered job, terminal now.
            seen: When this run saw it terminal.

        Returns:
            The time, ISO 8601.
        """
        state = self._state(job_id)
        kept = state.get("terminal_at")
        if isinstance(kept, str):
            try:
                dt.datetime.fromisoformat(kept)
            except ValueError:
                pass
            else:
                return kept
        state["terminal_at"] = seen.isoformat()
        return str(state["terminal_at"])

    def failed(self, job_id: str) -> None:
        """Record that OpenFunnel reports the job failed (its entry is submitted again).

        Args:
            job_id: The job.
        """
        self._state(job_id)["failed"] = True
        self._emit()

    def page_read(self, job_id: str, *, next_cursor: str | None, rows_read: int) -> None:
        """Note that every record of a page has been handed downstream.

        Args:
            job_id: The job.
            next_cursor: The page's ``next_cursor`` (None: the job is read to the end).
            rows_read: Rows of the job handed so far, over all runs.
        """
        self._handed[job_id] = Position(next_cursor, rows_read, done=next_cursor is None)
        if not self.hold_until_promoted:
            # Records written as they come are on stdout before the generator that
            # produced them resumes: the page is durable now.
            self.promote(self.handed())

    def read_again(self, job_id: str) -> None:
        """Set a job back to its first page: read whole, it failed a check the user asked for.

        Moving back is never ahead of durable rows, so it is written at once, in BATCH
        mode too; a position of the job handed but not yet promoted is dropped, so a
        batch file announced later cannot move the job forward again.

        Args:
            job_id: The job.
        """
        self._handed.pop(job_id, None)
        state = self._state(job_id)
        state.update({"rows_read": 0, "next_cursor": None})
        state.pop("done", None)
        self._emit()

    def handed(self) -> dict[str, Position]:
        """Positions handed downstream but not promoted yet (a snapshot)."""
        return dict(self._handed)

    def promote(self, positions: Mapping[str, Position]) -> None:
        """Move positions that are now durable into the state, and write it out.

        Args:
            positions: A snapshot from :meth:`handed`, taken when the records before
                those positions became durable.
        """
        if not positions:
            return
        for job_id, position in positions.items():
            state = self._state(job_id)
            # One update per partition: a signal handler writing state between two
            # statements sees either the old position or the new one.
            state.update(
                {"rows_read": position.rows_read, "next_cursor": position.cursor}
                if not position.done
                else {"rows_read": position.rows_read, "done": True},
            )
            if position.done:
                state.pop("next_cursor", None)
            if self._handed.get(job_id) == position:
                del self._handed[job_id]
        # A finished job is paced like a page: writing the whole state at every end
        # would make STATE grow with the square of a run's jobs. The SDK writes the
        # state at the end of every stream (Stream._sync_records), which carries the
        # last jobs' ends.
        if self._due is None or self.hold_until_promoted or self._due():
            self._emit()

    def write(self) -> None:
        """Write the state as it is: by the invariant, durable positions only."""
        self._emit()

    def _state(self, job_id: str) -> dict[str, t.Any]:
        return self._partition(self._streams[job_id], job_id)


class PartitionIndex:
    """Each job's live state partition, found by its job id in one look-up.

    The SDK finds a partition (``Stream.get_context_state``) by comparing the context
    with every partition of the stream, and the checkpoint asks several times per job:
    with thousands of jobs in one run or in state, that scan made the run quadratic in
    its jobs. Here a stream's partitions are indexed once, on first use, and a new job
    gets its partition appended as the SDK would create it (``{"context": {"job_id":
    ...}}``). The partitions stay the SDK's own objects, in the SDK's list: what the SDK
    later reads or writes of them is the same either way.

    Args:
        stream_state: Returns a stream's live, writable state (``Stream.stream_state``).
    """

    def __init__(self, stream_state: Callable[[str], dict[str, t.Any]]) -> None:
        self._stream_state = stream_state
        self._index: dict[str, dict[str, dict[str, t.Any]]] = {}
        self._lists: dict[str, list[dict[str, t.Any]]] = {}

    def __call__(self, stream_name: str, job_id: str) -> dict[str, t.Any]:
        """The partition of ``job_id`` in ``stream_name``'s state, created if absent.

        Args:
            stream_name: The job's company stream.
            job_id: The job.

        Returns:
            The live partition.
        """
        index = self._index.get(stream_name)
        if index is None:
            index = self._build(stream_name)
        found = index.get(job_id)
        if found is None:
            found = {"context": {"job_id": job_id}}
            self._lists[stream_name].append(found)
            index[job_id] = found
        return found

    def _build(self, stream_name: str) -> dict[str, dict[str, t.Any]]:
        partitions = self._stream_state(stream_name).setdefault("partitions", [])
        index: dict[str, dict[str, t.Any]] = {}
        for partition in partitions:
            context = partition.get("context") if isinstance(partition, dict) else None
            if isinstance(context, dict) and context.keys() == {"job_id"}:
                job_id = context["job_id"]
                if isinstance(job_id, str):
                    index.setdefault(job_id, partition)  # the first, as the SDK finds it
        self._lists[stream_name] = partitions
        self._index[stream_name] = index
        return index


_PARTITION_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "next_cursor": ((str, type(None)), "a page name or null"),
    "rows_read": ((int,), "a whole number of at least 0"),
    "done": ((bool,), "true or false"),
    "failed": ((bool,), "true or false"),
    "origin": ((str,), "a string"),
    "fingerprint": ((str,), "a string"),
    "submitted_at": ((str,), "an ISO 8601 time"),
    "terminal_at": ((str,), "an ISO 8601 time"),
    "request": ((dict,), "an object"),
}


def state_problem(state: object) -> str | None:
    """Say what is wrong with a state the tap is given, before anything reads it.

    Checks the shape the SDK needs (objects where it expects objects) and every field
    of every job partition, whichever stream it is under.

    Args:
        state: The decoded ``--state`` file.

    Returns:
        Where and what the first problem is, or None for a usable state.
    """
    if not isinstance(state, dict):
        return f"the state is a JSON {type(state).__name__}, not an object"
    bookmarks = state.get("bookmarks", {})
    if not isinstance(bookmarks, dict):
        return "'bookmarks' is not an object"
    for stream, entry in bookmarks.items():
        where = f"bookmarks.{stream}"
        if not isinstance(entry, dict):
            return f"{where} is not an object"
        problem = _partitions_problem(where, entry.get("partitions", []))
        if problem is not None:
            return problem
    return None


def _partitions_problem(where: str, partitions: object) -> str | None:
    if not isinstance(partitions, list):
        return f"{where}.partitions is not a list"
    seen: dict[str, int] = {}
    for index, partition in enumerate(partitions):
        problem = _partition_problem(partition)
        if problem is not None:
            return f"{where}.partitions[{index}]{problem}"
        context = json.dumps(partition["context"], sort_keys=True)
        if context in seen:
            return (
                f"{where}.partitions[{index}] has the context of partitions"
                f"[{seen[context]}]: one job, two positions"
            )
        seen[context] = index
    return None


def _partition_problem(partition: object) -> str | None:
    if not isinstance(partition, dict):
        return " is not an object"
    context = partition.get("context")
    if not isinstance(context, dict):
        return " has no 'context' object"
    problem = job_id_problem(context.get("job_id"))
    if problem is not None:
        return f".context.job_id is {problem}"
    for name, (types, wanted) in _PARTITION_FIELDS.items():
        if name not in partition:
            continue
        value = partition[name]
        bad_type = not isinstance(value, types) or (bool in types) != isinstance(value, bool)
        # An empty cursor would read from the first page with ranks after rows_read.
        if bad_type or (name == "rows_read" and value < 0) or value == "":
            return f".{name} is {json.dumps(value)[:40]}, not {wanted}"
    rows = partition.get("rows_read", 0)
    if rows and partition.get("done") is not True and not partition.get("next_cursor"):
        # Read from the first page, its rows would be ranked after rows already counted.
        return (
            f".rows_read is {rows} without a next_cursor or done: true, a position the "
            "tap never writes"
        )
    return None
