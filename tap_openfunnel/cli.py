"""What the command line owes its caller: one-paragraph failures, a cheap check, honest exits."""

from __future__ import annotations

import json
import logging
import os
import sys
import typing as t

from tap_openfunnel.checkpoint import state_problem
from tap_openfunnel.exceptions import OpenFunnelError
from tap_openfunnel.logs import install_secret_filter

if t.TYPE_CHECKING:
    from tap_openfunnel.planner import Plan
    from tap_openfunnel.tap import TapOpenFunnel


def fail(logger: logging.Logger, message: str) -> t.NoReturn:
    """End with a user-facing failure: one paragraph, a non-zero exit, no traceback.

    Args:
        logger: The tap's logger.
        message: What is wrong and what to do.
    """
    logger.error("%s", message)
    sys.exit(1)


def build(
    tap_class: type[TapOpenFunnel],
    config: t.Any,  # noqa: ANN401 - the SDK's private _ConfigInput
    *,
    state: t.IO[str] | None = None,
    catalog: t.IO[str] | None = None,
) -> TapOpenFunnel:
    """Create the tap from the CLI's inputs, failing cleanly on unusable files.

    Args:
        tap_class: The tap class.
        config: The parsed ``--config`` input, if any.
        state: The ``--state`` file, if any.
        catalog: The ``--catalog`` file, if any.

    Returns:
        The tap.
    """
    raw = config.config if config is not None else {}
    # Before anything can echo it (the SDK's own config validation included).
    key = raw.get("api_key") if isinstance(raw, dict) else None
    install_secret_filter(str(key or os.environ.get("TAP_OPENFUNNEL_API_KEY", "")).strip())
    try:
        state_value = None if state is None else json.loads(state.read())
        catalog_value = None if catalog is None else json.loads(catalog.read())
    except (ValueError, RecursionError) as exc:
        fail(
            tap_class.logger,
            f"A state or catalog file given to the tap is not valid JSON ({exc}). Fix the "
            "file, or pass a state file that a previous run wrote.",
        )
    problem = None if state_value is None else state_problem(state_value)
    if problem is not None:
        fail(
            tap_class.logger,
            f"The state given with --state is not one this tap wrote: {problem}. Fix or "
            "remove that entry, or start from a clean state ('meltano state clear "
            "<state id>', or no --state). A clean state reads every configured job again "
            "and submits every tam_builds / lookalike_searches entry again (billed) unless "
            "you attach their jobs by id in 'tam_job_ids' / 'lookalike_job_ids'.",
        )
    return tap_class(
        config=config.config if config is not None else None,
        state=state_value,
        catalog=catalog_value,
        parse_env_config=config.parse_env if config is not None else False,
        validate_config=True,
    )


def sync(tap: TapOpenFunnel) -> None:
    """Config, then plan, then the streams; jobs that failed fail the run after the others.

    Args:
        tap: The tap.
    """
    try:
        tap.settings  # noqa: B018 - check the settings before anything is sent
        plan = tap.make_plan()
        if tap.settings.dry_run:
            report_plan(tap, plan)
            return
        plan.check_budget()
        run = tap.prepare(plan)
        tap.sync_all()
        run.log_summary()
        run.raise_for_failures()
    except OpenFunnelError as exc:
        fail(tap.logger, str(exc))


def report_plan(tap: TapOpenFunnel, plan: Plan) -> None:
    """Print the plan of a dry run on stderr; nothing is submitted, read or written.

    Args:
        tap: The tap.
        plan: The run's plan.
    """
    lines = [
        "Dry run: nothing was submitted, no page was read, state is unchanged.",
        *plan.describe(),
    ]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    tap.logger.info("Dry run finished.")


def connection_test(tap: TapOpenFunnel) -> None:
    """Check the key with one balance call and report the balance.

    Args:
        tap: The tap.
    """
    try:
        balance = tap.api.balance()
    except OpenFunnelError as exc:
        fail(tap.logger, f"Connection test failed. {exc}")
    tap.logger.info(
        "Connection test passed: %s accepted the API key; %s credits left.",
        tap.settings.api_url,
        balance.get("credits_left", "an unknown number of"),
    )


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
    run = tap.__dict__.get("_run")
    if "checkpoint" in tap.__dict__:
        tap.checkpoint.write()
    else:
        tap.state_writer.write_state(tap.state)
    if run is not None and tap.settings.cancel_on_interrupt:
        cancelled = run.cancel_submitted()
        if cancelled:
            tap.logger.warning("cancel_on_interrupt: asked to cancel %s.", ", ".join(cancelled))
    sys.stdout.flush()
    logging.shutdown()
    os._exit(128 + signum)
