"""The ``tap-openfunnel`` command (also ``python -m tap_openfunnel``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import typing as t

# What Python itself exits with when flushing standard output fails at exit.
_FLUSH_FAILED = 120


def main() -> t.NoReturn:
    """Run the tap's command line, then end the process without the interpreter's teardown.

    At exit the interpreter frees, one object at a time, the ~500 modules the Singer SDK
    imports, a noticeable part of a short run (docs/benchmarks.md), spent after the
    last line is out. The operating system reclaims all of it at once.
    Only what the caller can see is done first: buffered RECORD lines and standard
    output and error are flushed and the log handlers closed. An exception other than
    ``SystemExit`` is left to the interpreter (traceback, exit 1), as before.

    The tap is imported here, with the cyclic garbage collector off: while those
    modules load it would run again and again over every object created so far, for
    next to no garbage. What the imports built is then frozen (``gc.freeze``): later
    collections skip it.
    """
    finish(invoke_cli())


def invoke_cli() -> object:
    """Import the tap and run its command line, without ending the process.

    :func:`main` without the exit, for a caller that still has work to do after the
    command, such as ``benchmarks/profile_tap.py`` writing its profile.

    Returns:
        The ``SystemExit`` code the command line ended with (0 if it returned).
    """
    gc.disable()
    try:
        from tap_openfunnel.tap import TapOpenFunnel  # noqa: PLC0415 - see main()
    finally:
        gc.enable()
    gc.freeze()
    from tap_openfunnel import writer  # noqa: PLC0415 - imported with the tap

    writer.widen_pipe()
    try:
        TapOpenFunnel.cli()
    except SystemExit as exc:
        return exc.code
    return 0


def finish(code: object) -> t.NoReturn:
    """Flush what the caller reads, then exit with ``code`` as ``sys.exit`` would.

    Args:
        code: A ``SystemExit`` code: None (0), an int, or a message (printed, exit 1).
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")
        status = 1
    from tap_openfunnel import writer  # noqa: PLC0415 - loaded by now, if used at all

    try:
        writer.flush_all()
        sys.stdout.flush()
    except OSError:
        # The reader of stdout went away: the run cannot have delivered everything.
        status = status or _FLUSH_FAILED
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    main()
