"""TapOpenFunnel: settings, streams, and the command line."""

from __future__ import annotations

import copy
import io
import sys
import typing as t
from functools import cached_property

from singer_sdk import Tap
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities, TapCapabilities
from singer_sdk.tap_base import CliTestOptionValue

from tap_openfunnel import cli, cli_help
from tap_openfunnel.api import JobAPI
from tap_openfunnel.checkpoint import Checkpoint, PartitionIndex
from tap_openfunnel.exceptions import RunNotPreparedError
from tap_openfunnel.families import FAMILIES
from tap_openfunnel.journal import Journal
from tap_openfunnel.logs import install_secret_filter
from tap_openfunnel.planner import Planner
from tap_openfunnel.quiet import drop_sdk_noise, metrics_on_debug
from tap_openfunnel.reader import JobReader
from tap_openfunnel.run import Run
from tap_openfunnel.settings import CONFIG_SCHEMA, Settings, check_known_settings
from tap_openfunnel.streams import (
    CompanyStream,
    CreditsBalanceStream,
    JobsStream,
)
from tap_openfunnel.writer import BlockWriter, StateLines

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    import click
    from singer_sdk import Stream

    from tap_openfunnel.planner import Plan


class TapOpenFunnel(Tap):
    """Singer tap for OpenFunnel TAM Builder and Search Lookalikes Bulk jobs."""

    name = "tap-openfunnel"
    # A copy: the SDK appends its built-in settings to the class's schema in place.
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)
    # msgspec serialises a record faster than the default writer, and
    # BlockWriter spares a write system call per record (flushing at every STATE).
    message_writer_class = BlockWriter
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.BATCH,
        # Meltano 4 parses the SDK's JSON log lines (and so shows warnings as warnings)
        # only for plugins that declare this.
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:  # noqa: ANN401 - the SDK's
        """Build the tap as the SDK does, with no run prepared yet.

        Without the SDK's noise: its "Skipping parse of env var settings..." line, and
        its METRIC lines below the DEBUG level.

        Args:
            *args: The SDK's positional arguments.
            **kwargs: The SDK's keyword arguments.
        """
        # The run this invocation carries out, once prepared (:meth:`prepare`).
        self.current: Run | None = None
        drop_sdk_noise(self.logger)
        super().__init__(*args, **kwargs)
        metrics_on_debug(self.logger)  # after the SDK set the metrics logger's level
        writer = self.message_writer
        self._state_lines = StateLines(writer)
        # The single writer of every job's state partition. Its STATE lines go straight
        # to the message writer, which leaves out a line equal to the last one.
        self.checkpoint = Checkpoint(
            PartitionIndex(lambda stream_name: self.streams[stream_name].stream_state),
            lambda: self._state_lines.write_state(self.state),
            hold_until_promoted=bool(self.config.get("batch_config")),
            due=writer.state_due if isinstance(writer, BlockWriter) else None,
        )

    @cached_property
    def settings(self) -> Settings:
        """The config, checked and typed."""
        settings = Settings.from_config(self.config)
        install_secret_filter(settings.api_key)
        check_known_settings(self.config, self.config_jsonschema["properties"])
        return settings

    @cached_property
    def api(self) -> JobAPI:
        """The job API every stream shares."""
        return JobAPI.connect(self.settings)

    @cached_property
    def journal(self) -> Journal | None:
        """The submission journal, opened when entries may be submitted (None: off)."""
        settings = self.settings
        if settings.journal_path is None or not settings.entries:
            return None
        return Journal(
            settings.journal_path,
            api_key=settings.api_key,
            api_url=settings.api_url,
            read_only=settings.dry_run,
        )

    def make_plan(self) -> Plan:
        """Decide what this run does with each job of the selected company streams.

        Returns:
            The plan; nothing billed has been sent.
        """
        streams = {
            stream.job_type: stream.name
            for stream in self.streams.values()
            if isinstance(stream, CompanyStream) and stream.selected
        }
        if not streams and self.streams[JobsStream.name].selected:
            first, *others = (family.stream_name for family in FAMILIES)
            unselected = (
                f"neither {first} nor {others[0]}"
                if len(others) == 1
                else f"none of {', '.join([first, *others])}"
            )
            self.logger.warning(
                "The jobs stream reports the jobs of the selected company streams, and "
                "%s is selected: no job is planned, submitted or read in this run. Select "
                "a company stream too.",
                unselected,
            )
        planner = Planner(
            self.settings,
            self.api,
            streams,
            # Read without creating entries: the plan must not change state.
            lambda name: self.state.get("bookmarks", {}).get(name, {}).get("partitions", []),
            journal=self.journal,
        )
        return planner.plan()

    def prepare(self, plan: Plan, *, may_submit: bool = True) -> Run:
        """Set the run up from its plan, before the streams sync.

        Args:
            plan: From :meth:`make_plan`.
            may_submit: False to leave the plan's submits out (a connection check).

        Returns:
            The run the streams read their jobs from (also :attr:`current`).
        """
        self.current = Run(
            plan,
            self.api,
            self.checkpoint,
            self.settings,
            may_submit=may_submit,
            journal=self.journal,
        )
        return self.current

    def plan_run(self) -> Run:
        """Plan and prepare the run in one call, for code that calls ``sync_all()`` itself.

        The command line plans before the sync (and stops there on ``dry_run``); an
        embedder, or the SDK's test suite, calls this once before syncing instead.

        Returns:
            The prepared run.
        """
        return self.prepare(self.make_plan())

    def reader(self) -> JobReader:
        """The reader of the prepared run's jobs, which the company and jobs streams ask.

        Returns:
            The reader.

        Raises:
            RunNotPreparedError: No run was prepared: nothing says which jobs to read.
        """
        if self.current is None:
            msg = (
                "The tap has no prepared run, so its streams do not know which jobs to "
                "read. Call tap.plan_run() (or tap.prepare(tap.make_plan())) before "
                "sync_all(); the tap-openfunnel command does this itself."
            )
            raise RunNotPreparedError(msg)
        return JobReader(self.current)

    @property
    @override
    def state_writer(self) -> StateLines:  # type: ignore[override]
        # What the streams write their STATE through (public): the message writer,
        # which tells a repeated state by its encoded line, instead of the SDK's
        # writer, which keeps a deep copy of every state it writes.
        return self._state_lines

    @override
    def discover_streams(self) -> list[Stream]:
        return [
            *(CompanyStream(self, family) for family in FAMILIES),
            JobsStream(self),
            CreditsBalanceStream(self),
        ]

    @classmethod
    @override
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: t.Any = None,
        state: t.IO[str] | None = None,
        catalog: t.IO[str] | None = None,
    ) -> None:
        # Tap.invoke, plus what a run owes its scheduler: jobs that could not be
        # extracted fail the run *after* the others were delivered, and user-facing
        # errors end in one paragraph instead of a traceback.
        if about:
            cls.print_about(about_format)
            sys.exit(0)
        cls.print_version(print_fn=cls.logger.info)
        cli.sync(cli.build(cls, config, state=state, catalog=catalog))

    @classmethod
    @override
    def get_singer_command(cls) -> click.Command:
        return cli_help.describe(super().get_singer_command())

    @classmethod
    @override
    def cb_test(cls, ctx: click.Context, param: click.Option, value: str) -> None:
        # The SDK's --test syncs until the first record of every stream, which here
        # would submit jobs and wait for them. A connection check needs one call.
        if value != CliTestOptionValue.All.value:
            super().cb_test(ctx, param, value)
            return
        _close_files(ctx)  # not read by a connection check, which may end with a failure
        cli.connection_test(cli.build(cls, ctx.params.get("config")))
        ctx.exit(0)

    @classmethod
    @override
    def cb_discover(cls, ctx: click.Context, param: click.Option, value: bool) -> None:
        # The SDK's discovery only warns "Config validation failed" on a bad config.
        if value:
            _close_files(ctx)  # discovery reads neither, and may end with a failure
            cli.discover(cls, ctx.params.get("config"))
            ctx.exit()

    @classmethod
    @override
    def cb_config(
        cls,
        ctx: click.Context,
        param: click.Option,
        value: tuple[str, ...],
    ) -> t.Any:
        try:
            return super().cb_config(ctx, param, value)
        except (OSError, ValueError) as exc:
            cli.fail(
                cls.logger,
                f"Could not read the config given with --config ({exc}). Pass a readable "
                "JSON file, or ENV to take settings from TAP_OPENFUNNEL_* variables.",
            )


def _close_files(ctx: click.Context) -> None:
    """Close the --state and --catalog files click opened, before an early exit.

    ``--test`` and ``--discover`` end the command from their callbacks (or fail there),
    and click then leaves the files it opened for the garbage collector (a
    ResourceWarning).
    """
    for value in ctx.params.values():
        if isinstance(value, io.IOBase):  # a text file included
            value.close()
