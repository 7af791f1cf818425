"""Singer output: RECORD messages without needless work, written in blocks of lines."""

from __future__ import annotations

import atexit
import datetime as dt
import os
import stat
import sys
import typing as t
import weakref

from singer_sdk import Stream
from singer_sdk.contrib.msgspec import MsgSpecWriter, serialize_jsonl
from singer_sdk.contrib.msgspec import encoder as sdk_encoder
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.singerlib import StateMessage
from singer_sdk.singerlib.encoding.base import SingerMessageType

from tap_openfunnel import signals

if sys.platform != "win32":
    import fcntl

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from singer_sdk.helpers.types import Context
    from singer_sdk.mapper import StreamMap
    from singer_sdk.singerlib.encoding.simple import Message

# RECORD lines are handed to stdout once about this many bytes are pending.
BLOCK_SIZE = 64 * 1024
# What a pipe on stdout is asked to hold: Linux's default ceiling for an unprivileged
# process (/proc/sys/fs/pipe-max-size), 16 times the default 64 KiB.
PIPE_SIZE = 1024 * 1024


class BlockWriter(MsgSpecWriter):
    """The SDK's msgspec writer without a write and flush (system calls) per RECORD.

    The SDK's writer flushes stdout after every message, and with PYTHONUNBUFFERED
    (which schedulers and containers often set) stdout has no buffer at all: one
    system call per record, a large share of the tap's time per record. Here RECORD lines
    collect in a block of about 64 KiB; any other message (STATE, SCHEMA...) writes
    the block out first and flushes. So a STATE line never reaches the target before
    the records it covers, and a run that dies leaves unwritten at most records after
    the last STATE, which a resume from that STATE reads again. Exit (:func:`flush_all`)
    writes the rest; the tap's signal exit writes a STATE, which does too.

    A STATE equal to the last one written is left out, as the SDK's state writer does;
    but told by its encoded line, not by a deep copy of every state written. The tap
    writes a STATE after a page, and the state holds a partition for every job ever read
    (docs/state.md): once many jobs are remembered, the SDK's copies (and ``asdict``,
    see :meth:`serialize_message`) would take most of a run's time. The line is made in C, and
    comparing two is one ``memcmp``. A state that differs only in key order or in ``1``
    against ``1.0`` counts as changed here: at worst a STATE line the SDK would have
    left out, never one missed.
    """

    def __init__(self) -> None:
        super().__init__()
        self._block = bytearray()
        # RECORD bytes written since the last STATE line (see state_due).
        self.since_state = 0
        self._last_state: bytes | None = None
        # What surrounds the record in the last RECORD line (see _record_frame).
        self._frame: _Frame | None = None
        _LIVE.add(self)

    @override
    def serialize_message(self, message: Message) -> bytearray:
        if type(message) is StateMessage:
            # The SDK's to_dict() is dataclasses.asdict: a copy of the whole state, one
            # Python call per value, for every STATE line. The same line, straight
            # from the state (see state_line).
            return state_line(message.value)
        return super().serialize_message(message)

    @override
    def write_message(self, message: Message) -> None:
        line = self.format_message(message)
        if message.type is SingerMessageType.STATE:
            self.write_state_line(line)
            return
        self._block += line
        if message.type is SingerMessageType.RECORD:
            self.since_state += len(line)
            if len(self._block) >= BLOCK_SIZE:
                self.flush()
            return
        self.flush()

    def write_record(
        self,
        stream: str,
        record: t.Mapping[str, t.Any],
        version: int | None,
        time_extracted: dt.datetime,
    ) -> None:
        """Add the RECORD line the SDK's writer would write, encoded straight into the block.

        The same bytes as ``RecordMessage(...)`` through :meth:`write_message` (the
        SDK's ``to_dict`` and encoder), without the message object, its dictionary or
        the copy of the line from the SDK's shared buffer.

        Args:
            stream: The stream (its alias).
            record: The record.
            version: The stream version, if any.
            time_extracted: When the record was read, an aware UTC datetime.

        Raises:
            TypeError: A value the SDK's encoder cannot encode either; nothing of its
                line is left in the block.
        """
        frame = self._frame
        if (
            frame is None
            or frame[0] is not stream
            or frame[1] != version
            or frame[2] is not time_extracted
        ):
            frame = self._frame = _record_frame(stream, version, time_extracted)
        block = self._block
        start = len(block)
        block += frame[3]
        try:
            sdk_encoder.encode_into(record, block, -1)
        except BaseException:
            del block[start:]  # msgspec leaves what it had written
            raise
        block += frame[4]
        self.since_state += len(block) - start
        if len(block) >= BLOCK_SIZE:
            self.flush()

    def write_state_line(self, line: bytes | bytearray) -> None:
        """Write an encoded STATE line, unless it is the last one written again.

        Args:
            line: The line, newline included (copied: it may be the encoder's buffer).
        """
        encoded = bytes(line)
        if encoded == self._last_state:
            return
        self._last_state = encoded
        self._block += encoded
        self.since_state = 0
        self.flush()

    def state_due(self) -> bool:
        """Whether a STATE line after this page is worth its size.

        True once the RECORD lines written since the last STATE line are at least as
        long as it was: STATE then never takes more than half of the output. A small
        state (under a page of records: a few hundred jobs remembered, at 100 rows a
        page) is written after every page, as always; a state that has grown is written
        every few pages, and a resume from it reads those few pages again (docs/state.md).

        Returns:
            True if the caller should write the state now.
        """
        return self._last_state is None or self.since_state >= len(self._last_state)

    def flush(self) -> None:
        """Write out the pending lines and flush stdout.

        The tap's SIGINT/SIGTERM handler writes a STATE through this writer. Were it to
        run in the middle of a write (a partial write returns, then the handler runs
        before the block knows what went out), it would repeat or cut lines. So the
        signals are held while the block is written, and delivered once it is out; the
        page prefetch threads block them for good, so they reach this thread only.
        """
        out = sys.stdout
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            # Captured output (tests): no file descriptor, no system calls to save.
            binary = getattr(out, "buffer", None)
            if binary is not None:
                binary.write(bytes(self._block))
            else:
                out.write(self._block.decode("utf-8"))
            self._block.clear()
            out.flush()
            return
        out.flush()  # whatever the text layer holds was written before these lines
        block = self._block
        with signals.deferred():
            while block:
                # An unbuffered stdout is a raw file: a write may be partial.
                del block[: os.write(fd, block)]


# A RECORD line's stream, version and time_extracted, and the bytes before and after
# its record.
_Frame = tuple[str, "int | None", dt.datetime, bytes, bytes]


def _record_frame(stream: str, version: int | None, time_extracted: dt.datetime) -> _Frame:
    """The bytes of a RECORD line around its record, as the SDK's writer encodes them.

    The SDK's line is its encoder's compact JSON of ``{"type": "RECORD", "stream": ...,
    "record": ..., "version": ... (if any), "time_extracted": ...}`` and a newline: the
    keys in that order, no spaces. What comes before and after the record is the same
    for every record of a page, so it is encoded once.
    """
    head = b'{"type":"RECORD","stream":' + sdk_encoder.encode(stream) + b',"record":'
    tail = b',"version":' + sdk_encoder.encode(version) if version is not None else b""
    tail += b',"time_extracted":' + sdk_encoder.encode(time_extracted) + b"}\n"
    return stream, version, time_extracted, head, tail


def state_line(state: t.Mapping[str, t.Any]) -> bytearray:
    """The STATE line of ``state``, as the SDK's msgspec writer writes it.

    ``{"type":"STATE","value":...}`` and a newline. The SDK encodes a deep copy of the
    state (``dataclasses.asdict``), which holds the same JSON values in the same order.

    Args:
        state: The tap's state.

    Returns:
        The line, newline included, in the SDK's one shared buffer: copy it (or add it
        to a block) before the next line is made.
    """
    return serialize_jsonl({"type": SingerMessageType.STATE, "value": state})


class StateLines:
    """The state writer the streams use (``Tap.state_writer``): each STATE to the message writer.

    The SDK's own ``StateWriter`` keeps a ``copy.deepcopy`` of every state it writes to
    tell an unchanged one, and the state holds a partition for every job ever read
    (docs/state.md): with many of them remembered, those copies cost more than the
    records. :class:`BlockWriter` tells an unchanged state by its encoded line instead,
    so this hands every state straight to it.

    Args:
        message_writer: The tap's message writer.
    """

    def __init__(self, message_writer: t.Any) -> None:  # noqa: ANN401 - the SDK's writer
        self._message_writer = message_writer

    def write_state(self, state: t.Mapping[str, t.Any]) -> None:
        """Hand a STATE message to the message writer, which leaves out a repeated one.

        Args:
            state: The tap's state.
        """
        self._message_writer.write_message(StateMessage(value=state))


def widen_pipe(fd: int = 1) -> int | None:
    """Let a pipe on ``fd`` hold about 1 MiB of output instead of 64 KiB.

    A pipe holds 64 KiB, about 100 records, by default: while the target loads a batch
    (and reads nothing), the tap stops after that many. With 1 MiB it goes on reading
    pages and writing about 1,500 more, which the target then reads without waiting
    for the tap, so a pipeline with a batching target spends less time with one side
    idle (docs/benchmarks.md). It changes nothing the
    target has not read: records and state in the pipe are not delivered either way.
    Anything but a pipe, or a refusal (a lower ceiling, the user's pipe memory used
    up), leaves things as they were.

    Args:
        fd: The file descriptor (standard output).

    Returns:
        The pipe's size now, or None if it is not a pipe or could not be changed.
    """
    if sys.platform == "win32":
        return None
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is None:
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        return int(fcntl.fcntl(fd, set_size, PIPE_SIZE))
    except OSError:
        return None


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC: what a RECORD's ``time_extracted`` holds.

    Returns:
        The time.
    """
    return dt.datetime.now(dt.timezone.utc)


# Weak references: an embedding process may create many taps.
_LIVE: weakref.WeakSet[BlockWriter] = weakref.WeakSet()


def flush_all() -> None:
    """Write out the pending lines of every block writer still alive.

    Run at interpreter exit, and by the command's own exit (``__main__.finish``),
    which skips the interpreter's exit.
    """
    for alive in list(_LIVE):
        alive.flush()


atexit.register(flush_all)


class SelectedRecordMessages(Stream):
    """Writes RECORD lines without per-record work that cannot change a record.

    The SDK builds a ``RecordMessage`` per record and passes it through four layers to
    the writer, after walking each property against the catalog's selection mask
    (``pop_deselected_record_properties``: a copy of the record and a tuple per
    property). When the mask selects everything and the type conformance level is NONE,
    nothing can be popped or changed: this encodes the line the SDK would write straight
    into the block writer (:meth:`BlockWriter.write_record`). Any deselected property,
    another conformance level, or a message writer that is not a :class:`BlockWriter`
    takes the SDK's own path unchanged.

    The same holds for a stream map that is the SDK's identity (``SameRecordTransform``,
    no flattening): it returns the record it is given, so it is not called. What can be
    decided per stream is decided once, on its first record. With no child streams, the
    public ``generate_child_contexts`` makes no child context (the SDK's default makes
    one per record, and a shallow copy of the record).

    ``time_extracted`` is read from the clock once per page: the records of one API
    answer were observed together. A record that names its page (``page``) by the same
    object as the record before shares that record's time; any other gets a fresh one.

    ``_write_record_message`` is the one private SDK method the tap replaces (pinned by
    tests/test_output.py, and as the only one by tests/test_sdk_seams.py);
    docs/how-it-works.md says what it saves.
    """

    _decided = False
    _maps: tuple[tuple[str, StreamMap | None], ...] = ()
    # The writer of the fast path; None: the SDK's own path.
    _record_writer: BlockWriter | None = None
    _extracted_page: object = None
    _extracted_at: dt.datetime | None = None

    def _decide_paths(self) -> None:
        self._maps = tuple(
            (
                stream_map.stream_alias,
                None
                if type(stream_map) is SameRecordTransform and not stream_map.flattening_enabled
                else stream_map,
            )
            for stream_map in self.stream_maps
        )
        writer = self._tap.message_writer
        plain = self.TYPE_CONFORMANCE_LEVEL is TypeConformanceLevel.NONE and all(self.mask.values())
        self._record_writer = writer if plain and isinstance(writer, BlockWriter) else None
        self._decided = True

    @override
    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        # With no child stream there is no child context to make: the SDK's default
        # makes one per record and copies the record for children that do not exist.
        if not self.child_streams:
            return ()
        return super().generate_child_contexts(record, context)

    @override
    def _write_record_message(self, record: dict[str, t.Any]) -> None:
        if not self._decided:
            self._decide_paths()
        writer = self._record_writer
        if writer is None:
            super()._write_record_message(record)
        else:
            page = record.get("page")
            time_extracted = self._extracted_at
            if time_extracted is None or page is None or page is not self._extracted_page:
                # Once per page: see the class docstring.
                time_extracted = self._extracted_at = utc_now()
                self._extracted_page = page
            version = self._stream_version
            for alias, stream_map in self._maps:
                mapped = record if stream_map is None else stream_map.transform(record)
                if mapped is not None:
                    writer.write_record(alias, mapped, version, time_extracted)
            self.state_manager.is_flushed = False
        if self.ABORT_AT_RECORD_COUNT is not None:
            # A dry run (the SDK's connection test) stops after a few records without
            # a closing STATE: hand each record out at once instead of at exit.
            sink = self._tap.message_writer
            if isinstance(sink, BlockWriter):
                sink.flush()
