"""What ``tap-openfunnel --help`` says: this tap's options, not the SDK's generic text."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import click

SUMMARY = (
    "Extract OpenFunnel's TAM Builder and Search Lookalikes Bulk jobs as Singer messages "
    "on stdout (logs on stderr). Without --test, --discover or --about: a sync with "
    "--config, --state and --catalog, which attaches to, submits (once) and waits for "
    "the jobs the config names, then reads their pages."
)
# By the option's first name, as the SDK declares it.
OPTIONS = {
    "--test": (
        "Check api_key and api_url with one balance call (GET /api/v1/credits/balance) "
        "and exit: no job is submitted, polled or read. --test=schema prints the "
        "streams' SCHEMA messages instead."
    ),
    "--discover": (
        "Print the catalog of the four streams (tam_companies, lookalike_companies, "
        "jobs, credits_balance) and exit. Needs no api_key and sends no request."
    ),
    "--about": (
        "Print the tap's name, version, capabilities and every setting (name, type, "
        "environment variable), then exit. --format markdown or json adds each "
        "setting's description and default."
    ),
    "--config": (
        "A JSON config file (repeat the option to merge several: later files win), or "
        "ENV to read TAP_OPENFUNNEL_* variables."
    ),
    "--state": (
        "A state file a previous run wrote: jobs read to the end are skipped, an "
        "interrupted one goes on from its next page, submitted entries are re-attached."
    ),
    "--catalog": "A catalog from --discover, with the streams to sync selected.",
}


def describe(command: click.Command) -> click.Command:
    """The SDK's command with this tap's help text.

    Args:
        command: What ``get_singer_command`` built.

    Returns:
        The same command.
    """
    command.help = SUMMARY
    for param in command.params:
        text = OPTIONS.get(param.opts[0]) if param.opts else None
        if text is not None:
            param.help = text
    return command
