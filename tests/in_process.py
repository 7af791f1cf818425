"""The tap's command line run inside the test process: a subprocess's output, without its start.

Starting the tap as a process costs the Python start and the Singer SDK's imports on
every run, most of a quick test's time. A run here goes through the same command line
(``TapOpenFunnel.cli``, arguments, exit code), with standard output and error, file
descriptors 1 and 2 included, sent to files of its own, and then puts back what a
process would have thrown away: signal handlers, log handlers, levels and filters
(the API key's filter among them), and the environment.

Tests that need a process of their own (signals, kills, the installed command, how
the process ends) start one; ``pytest --tap-subprocess`` runs every other test's tap
as a process too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# False under ``pytest --tap-subprocess`` (tests/conftest.py): every run is a process.
ENABLED = True


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the tap's command line with ``args``; return its exit code, stdout and stderr."""
    from tap_openfunnel import writer  # noqa: PLC0415 - the SDK's imports, once
    from tap_openfunnel.tap import TapOpenFunnel  # noqa: PLC0415

    with (
        tempfile.TemporaryFile() as out_file,
        tempfile.TemporaryFile() as err_file,
        _process_state_kept(),
        _descriptors(out_file.fileno(), err_file.fileno()) as (out, err),
    ):
        try:
            TapOpenFunnel.cli.main(args=args, prog_name="tap-openfunnel")
            code = 0
        except SystemExit as exc:
            code = _exit_status(exc.code, err)
        except Exception:  # noqa: BLE001 - what the interpreter prints for an uncaught error
            err.write(traceback.format_exc())
            code = 1
        finally:
            writer.flush_all()
            out.flush()
            err.flush()
        out_file.seek(0)
        err_file.seek(0)
        return code, out_file.read().decode(), err_file.read().decode()


def _exit_status(code: Any, err: io.TextIOBase) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    err.write(f"{code}\n")
    return 1


@contextlib.contextmanager
def _descriptors(out_fd: int, err_fd: int) -> Iterator[tuple[io.TextIOWrapper, io.TextIOWrapper]]:
    """File descriptors 1 and 2, and sys.stdout and sys.stderr, on the given files."""
    saved = os.dup(1), os.dup(2)
    out = io.TextIOWrapper(open(out_fd, "wb", closefd=False), encoding="utf-8", write_through=True)  # noqa: SIM115
    err = io.TextIOWrapper(open(err_fd, "wb", closefd=False), encoding="utf-8", write_through=True)  # noqa: SIM115
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        out.close()
        err.close()


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Put back the signal handlers, logging and environment a run changes."""
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    environ = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("TAP_OPENFUNNEL_")]:
        del os.environ[name]
    loggers = _logging_state()
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.environ.clear()
        os.environ.update(environ)
        _restore_logging(loggers)


def _all_loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    found += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return found


_Kept = tuple[dict[logging.Logger, tuple[Any, ...]], list[Any]]


def _logging_state() -> _Kept:
    loggers: dict[logging.Logger, tuple[Any, ...]] = {}
    for logger in _all_loggers():
        handlers = [(handler, list(handler.filters)) for handler in logger.handlers]
        filters = list(logger.filters)
        loggers[logger] = (logger.level, logger.propagate, logger.disabled, filters, handlers)
    last_resort = list(logging.lastResort.filters) if logging.lastResort is not None else []
    return loggers, last_resort


def _restore_logging(kept: _Kept) -> None:
    loggers, last_resort = kept
    for logger in _all_loggers():
        if logger not in loggers:
            # Created by the run: as a new process would find it on its next start.
            for handler in logger.handlers:
                handler.close()
            logger.handlers.clear()
            logger.filters.clear()
            logger.setLevel(logging.NOTSET)
            continue
        level, propagate, disabled, filters, handlers = loggers[logger]
        for handler in logger.handlers:
            if handler not in [kept for kept, _ in handlers]:
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
        logger.filters[:] = filters
        logger.handlers[:] = [handler for handler, _ in handlers]
        for handler, handler_filters in handlers:
            handler.filters[:] = handler_filters
    if logging.lastResort is not None:
        logging.lastResort.filters[:] = last_resort
