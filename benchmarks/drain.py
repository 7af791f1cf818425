"""Sink for benchmark runs: reads Singer lines from stdin, counts and times RECORD lines."""

from __future__ import annotations

import json
import sys
import time

# Both the tap (singer_sdk's simplejson, compact separators) and the bare loop write
# this exact prefix, so a line is classified without parsing its JSON.
_RECORD_PREFIX = b'{"type":"RECORD","stream":"'
_STREAM_AT = len(_RECORD_PREFIX)


def main() -> None:
    """Drain stdin to its end, then print one JSON summary line on stdout.

    The summary has ``lines``, ``bytes``, ``records`` (per stream) and, for RECORD
    lines of the stream named in ``argv[1]``, the ``time.monotonic()`` of the first and
    the last one (CLOCK_MONOTONIC is system-wide, so the parent can compare).
    """
    timed = sys.argv[1].encode() if len(sys.argv) > 1 else b""
    lines = size = 0
    records: dict[bytes, int] = {}
    first: float | None = None
    last: float | None = None
    for line in sys.stdin.buffer:
        lines += 1
        size += len(line)
        if line.startswith(_RECORD_PREFIX):
            stream = line[_STREAM_AT : line.index(b'"', _STREAM_AT)]
            records[stream] = records.get(stream, 0) + 1
            if stream == timed:
                last = time.monotonic()
                if first is None:
                    first = last
    summary = {
        "lines": lines,
        "bytes": size,
        "records": {name.decode(): count for name, count in records.items()},
        "first_record": first,
        "last_record": last,
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
