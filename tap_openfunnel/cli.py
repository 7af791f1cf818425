"""What the command line owes its caller: one-paragraph failures, a cheap check, honest exits."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
import threading
import typing as t

from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.logging import StructuredFormatter

from tap_openfunnel import signals
from tap_openfunnel.api import JobAPI
from tap_openfunnel.budget import credit_amount, credits_text
from tap_openfunnel.checkpoint import state_problem
from tap_openfunnel.exceptions import OpenFunnelError
from tap_openfunnel.families import settings_text
from tap_openfunnel.logs import install_reported_error_filter, install_secret_filter
from tap_openfunnel.settings import MISSING_API_KEY, Settings, check_known_settings
from tap_openfunnel.state_file import StateFileError, read_state

if t.TYPE_CHECKING:
    from types import FrameType

    from tap_openfunnel.planner import Plan
    from tap_openfunnel.tap import TapOpenFunnel

# The SDK's schema error for an absent key; the tap's own message says what to do.
_KEY_REQUIRED = "'api_key' is a required property"
# The SDK's bare warning when a tap is built without validating its config.
SDK_CONFIG_WARNING = "Config validation failed"
JOURNAL_OFF = (
    "Journal: off ('journal: false'): only the state given to this run knows what was submitted."
)


def fail(logger: logging.Logger, message: str) -> t.NoReturn:
    """End with a user-facing failure: one paragraph, a non-zero exit, no traceback.

    Args:
        logger: The tap's logger.
        message: What is wrong and what to do.
    """
    logger.error("%s", message)
    if logs_are_json() and output_is_a_check():
        # `meltano config test` shows the last line it read as it is: the message
        # itself, rather than the JSON log line that carried it.
        sys.stderr.write(f"{message}\n")
    sys.exit(1)


def logs_are_json() -> bool:
    """True when the log goes out as JSON lines (Meltano's ``structured-logging``)."""
    return any(
        isinstance(handler.formatter, StructuredFormatter)
        for handler in logging.getLogger().handlers
    )


def build(  # noqa: PLR0913 - the CLI's inputs, keyword-only
    tap_class: type[TapOpenFunnel],
    config: t.Any,  # noqa: ANN401 - the SDK's private _ConfigInput
    *,
    state: t.IO[str] | None = None,
    catalog: t.IO[str] | None = None,
    require_api_key: bool = True,
    setup_mapper: bool = True,
) -> TapOpenFunnel:
    """Create the tap from the CLI's inputs, failing cleanly on unusable files or config.

    Args:
        tap_class: The tap class.
        config: The parsed ``--config`` input, if any.
        state: The ``--state`` file, if any.
        catalog: The ``--catalog`` file, if any.
        require_api_key: False for discovery, which sends no request.
        setup_mapper: False for discovery, as the SDK does.

    Returns:
        The tap.
    """
    raw = config.config if config is not None else {}
    # Before anything can echo it (the SDK's own config validation included).
    key = raw.get("api_key") if isinstance(raw, dict) else None
    install_secret_filter(str(key or os.environ.get("TAP_OPENFUNNEL_API_KEY", "")).strip())
    state_value, form, catalog_value = _read_files(tap_class.logger, state, catalog)
    if form is not None:
        tap_class.logger.info("The state given with --state is %s; reading its state.", form)
    problem = None if state_value is None else state_problem(state_value)
    if problem is not None:
        fail(
            tap_class.logger,
            f"The state given with --state is not one this tap wrote: {problem}. Fix or "
            "remove that entry, or start from a clean state ('meltano state clear "
            "<state id>', or no --state). A clean state reads every configured job again; "
            f"{settings_text('entries', ' / ', quote=False)} entries are re-attached to the "
            "jobs the submission journal remembers, and submitted again (billed) only when "
            "it has none (or 'journal' is false).",
        )

    def create(*, validate: bool) -> TapOpenFunnel:
        return tap_class(
            config=config.config if config is not None else None,
            state=state_value,
            catalog=catalog_value,
            parse_env_config=config.parse_env if config is not None else False,
            validate_config=validate,
            setup_mapper=setup_mapper,
        )

    try:
        tap = create(validate=True)
    except ConfigValidationError as exc:
        errors = [error for error in exc.errors if not _about_api_key(error)]
        if errors:
            key = f" {MISSING_API_KEY}" if len(errors) < len(exc.errors) else ""
            fail(
                tap_class.logger,
                f"Config validation failed: {'; '.join(errors)}. Fix the setting(s) "
                f"named (`tap-openfunnel --about` lists every setting and its type); "
                f"nothing was sent to the API.{key}",
            )
        if require_api_key:
            fail(tap_class.logger, MISSING_API_KEY)
        # The SDK re-validates and warns a bare "Config validation failed"; the caller
        # says what is missing instead.
        quiet = _DropMessage(SDK_CONFIG_WARNING)
        tap_class.logger.addFilter(quiet)
        try:
            tap = create(validate=False)
        finally:
            tap_class.logger.removeFilter(quiet)
    exit_on_signals(tap)
    return tap


def _read_files(
    logger: logging.Logger,
    state: t.IO[str] | None,
    catalog: t.IO[str] | None,
) -> tuple[t.Any, str | None, t.Any]:
    """The --state file (its value and form) and the --catalog file, or one paragraph."""
    state_value, form = None, None
    try:
        if state is not None:
            state_value, form = read_state(state.read())
    except StateFileError as exc:
        fail(logger, str(exc))
    except (ValueError, RecursionError) as exc:
        fail(
            logger,
            f"The state file given with --state ({_file_name(state)}) is not valid JSON "
            f"({exc}). Fix the file, or pass a state file that a previous run wrote (or no "
            "--state, to start from a clean state).",
        )
    try:
        catalog_value = None if catalog is None else json.loads(catalog.read())
    except (ValueError, RecursionError) as exc:
        fail(
            logger,
            f"The catalog file given with --catalog ({_file_name(catalog)}) is not valid "
            f"JSON ({exc}). Fix the file, or write a new one with `tap-openfunnel "
            "--discover` (Meltano makes its own: leave --catalog out there).",
        )
    return state_value, form, catalog_value


def _file_name(file: t.IO[str] | None) -> str:
    name = getattr(file, "name", None)
    return name if isinstance(name, str) else "an unnamed stream"


class _DropMessage(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.message


def _about_api_key(error: str) -> bool:
    return error == _KEY_REQUIRED or error.endswith("in config['api_key']")


def discover(
    tap_class: type[TapOpenFunnel],
    config: t.Any,  # noqa: ANN401 - the SDK's private _ConfigInput
) -> None:
    """Print the catalog; refuse a config that a sync would refuse, except a missing key.

    The catalog is static and discovery sends no request, so a missing ``api_key`` only
    warns: Meltano discovers before ``meltano select --list``, which should work before
    the key is set. A misspelt setting or a malformed entry fails here, since Meltano
    also discovers before every run and this is the earliest place to say so.

    Args:
        tap_class: The tap class.
        config: The parsed ``--config`` input, if any.
    """
    tap = build(tap_class, config, require_api_key=False, setup_mapper=False)
    try:
        if tap.config.get("api_key"):
            tap.settings  # noqa: B018 - the same checks as a sync
        else:
            check_known_settings(tap.config, tap.config_jsonschema["properties"])
            Settings.from_config({**tap.config, "api_key": "unset"})
            tap.logger.warning(
                "Setting 'api_key' is not set: the catalog needs no API call, so it is "
                "printed, but a sync or --test fails until the key is set."
            )
    except OpenFunnelError as exc:
        fail(tap.logger, str(exc))
    tap.run_discovery()


def sync(tap: TapOpenFunnel) -> None:
    """Config, then plan, then the streams; jobs that failed fail the run after the others.

    Args:
        tap: The tap.
    """
    install_reported_error_filter()
    exit_on_signals(tap)  # an embedder's tap too, not only one from build()
    try:
        tap.settings  # noqa: B018 - check the settings before anything is sent
        plan = tap.make_plan()
        if tap.settings.dry_run:
            report_plan(tap, plan)
            return
        plan.check_budget()
        run = tap.prepare(plan, may_submit=not output_is_a_check())
        tap.sync_all()
        run.log_summary()
        run.raise_for_failures()
        run.raise_for_skipped_submits()
    except OpenFunnelError as exc:
        fail(tap.logger, str(exc))


def output_is_a_check() -> bool:
    """True when stdout and stderr are one pipe: a reader of the first record, not a target.

    ``meltano config test`` reads the tap's stdout and stderr through one pipe and stops
    the tap (SIGTERM) at the first RECORD; with a target on the other end, stdout is a
    pipe of its own (log lines would break the target). So one shared pipe means the
    run is a check, and its jobs must not be submitted: the SIGTERM would come just
    too late to stop a billed submit. A run that gets to its end this way left work
    undone and exits non-zero (:meth:`~tap_openfunnel.run.Run.raise_for_skipped_submits`);
    a check stopped at its first record never gets there.

    Returns:
        Whether this run should spend nothing.
    """
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return stat.S_ISFIFO(out.st_mode) and (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def report_plan(tap: TapOpenFunnel, plan: Plan) -> None:
    """Print the plan of a dry run on stderr; nothing is submitted, read or written.

    Args:
        tap: The tap.
        plan: The run's plan.
    """
    journal = tap.journal
    lines = [
        "Dry run: nothing was submitted, no page was read, state is unchanged.",
        *plan.describe(),
    ]
    if tap.settings.entries:
        lines.append(journal.describe() if journal is not None else JOURNAL_OFF)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    tap.logger.info("Dry run finished.")


def connection_test(tap: TapOpenFunnel) -> None:
    """Check the key with one balance call and report the balance, within seconds.

    A refused connection or an unknown host fails at once, and throttling or a 5xx gets
    two short retries: a sync retries those for minutes, a connection check should not.

    Args:
        tap: The tap.
    """
    try:
        settings = tap.settings
        balance = JobAPI.connect(settings, check=True).balance()
    except OpenFunnelError as exc:
        fail(tap.logger, f"Connection test failed. {exc}")
    left = credit_amount(balance.get("credits_left"))
    tap.logger.info(
        "Connection test passed: %s accepted the API key; %s credits left.",
        settings.api_url,
        "an unknown number of" if left is None else credits_text(left),
    )


def exit_on_signals(tap: TapOpenFunnel) -> None:
    """Make SIGINT and SIGTERM end the tap through :func:`exit_on_signal`.

    The SDK installs its own handlers when a tap is created (exit 0, which tells a
    scheduler all went well); these replace them, so they are installed after the tap
    exists. Only the main thread can install a handler: elsewhere (an embedder's worker
    thread) the SDK's stay.

    Args:
        tap: The tap.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        exit_on_signal(tap, signum)

    for signum in signals.HANDLED:
        signal.signal(signum, handle)


def exit_on_signal(tap: TapOpenFunnel, signum: int) -> t.NoReturn:
    """Write the durable state, cancel this run's jobs if asked, and exit 128+signal at once.

    The SDK exits 0, which tells a scheduler all went well; and a normal exit would wait
    for page requests still in flight in the prefetch threads (up to request_timeout).
    The state written holds only positions the checkpoint has made durable (see
    :class:`~tap_openfunnel.checkpoint.Checkpoint`): in BATCH mode, records still
    waiting for their batch file are read again by the next run.

    Args:
        tap: The tap.
        signum: The signal received.
    """
    tap.logger.warning("Interrupted by signal %d; writing state and exiting non-zero.", signum)
    tap.checkpoint.write()
    run = tap.current
    if run is not None and tap.settings.cancel_on_interrupt:
        cancelled = run.cancel_submitted()
        if cancelled:
            tap.logger.warning("cancel_on_interrupt: asked to cancel %s.", ", ".join(cancelled))
    sys.stdout.flush()
    logging.shutdown()
    os._exit(128 + signum)
