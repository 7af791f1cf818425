"""SDK log lines a user cannot act on stay out of the log; its metrics on demand."""

from __future__ import annotations

import logging

# Logged by the SDK on every start of a tap that reads no TAP_OPENFUNNEL_* variables
# itself (Meltano passes a config file): it says nothing the user could act on.
NOISE = frozenset({"Skipping parse of env var settings..."})
METRICS_LOGGER = "singer_sdk.metrics"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in NOISE


def drop_sdk_noise(logger: logging.Logger) -> None:
    """Keep the SDK's noise out of ``logger`` (once, however often it is called).

    Args:
        logger: The tap's logger, before the SDK logs through it.
    """
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())


def metrics_on_debug(logger: logging.Logger) -> None:
    """Show the SDK's METRIC lines (timers, record counts) only at the DEBUG log level.

    The SDK logs one line per stream and counter at INFO. They stay available with
    ``TAP_OPENFUNNEL_LOGLEVEL=DEBUG`` (or ``LOGLEVEL``) and under ``meltano --log-level
    debug``, which set the level this reads.

    Args:
        logger: The tap's logger, whose effective level decides.
    """
    debugging = logger.getEffectiveLevel() <= logging.DEBUG
    logging.getLogger(METRICS_LOGGER).setLevel(logging.INFO if debugging else logging.WARNING)
