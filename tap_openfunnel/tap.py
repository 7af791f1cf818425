"""TapOpenFunnel: settings, streams, and the command line."""

from __future__ import annotations

import copy
import sys
import typing as t
from functools import cached_property

from singer_sdk import Tap
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities, TapCapabilities
from singer_sdk.tap_base import CliTestOptionValue

from tap_openfunnel import cli
from tap_openfunnel.client import OpenFunnelClient, RetryPolicy
from tap_openfunnel.logs import install_secret_filter
from tap_openfunnel.registry import JobRegistry, JobSource
from tap_openfunnel.settings import CONFIG_SCHEMA, Settings, check_known_settings
from tap_openfunnel.streams import (
    CompanyStream,
    CreditsBalanceStream,
    JobsStream,
    LookalikeCompaniesStream,
    TamCompaniesStream,
)

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if t.TYPE_CHECKING:
    from types import FrameType

    import click
    from singer_sdk import Stream


class TapOpenFunnel(Tap):
    """Singer tap for OpenFunnel TAM Builder and Search Lookalikes Bulk jobs."""

    name = "tap-openfunnel"
    # A copy: the SDK appends its built-in settings to the class's schema in place.
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)
    # msgspec serialises a record several times faster than the default writer.
    message_writer_class = MsgSpecWriter
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

    @cached_property
    def settings(self) -> Settings:
        """The config, checked and typed."""
        settings = Settings.from_config(self.config)
        install_secret_filter(settings.api_key)
        check_known_settings(self.config, self.config_jsonschema["properties"])
        return settings

    @cached_property
    def client(self) -> OpenFunnelClient:
        """The HTTP client every stream shares."""
        settings = self.settings
        return OpenFunnelClient(
            api_url=settings.api_url,
            api_key=settings.api_key,
            timeout=settings.request_timeout,
            retry=RetryPolicy(max_retries=settings.max_retries, max_wait=settings.max_retry_wait),
            pool_size=settings.page_concurrency + 2,
        )

    @cached_property
    def registry(self) -> JobRegistry:
        """This run's jobs, for the selected company streams."""
        settings = self.settings
        job_ids = {
            TamCompaniesStream.name: settings.tam_job_ids,
            LookalikeCompaniesStream.name: settings.lookalike_job_ids,
        }
        sources = [
            JobSource(
                stream_name=stream.name,
                job_type=stream.job_type,
                job_ids=job_ids[stream.name],
                entries=tuple(e for e in settings.entries if e.job_type is stream.job_type),
                state_of=stream.job_state,
                partitions=stream.job_states,
            )
            for stream in self.streams.values()
            if isinstance(stream, CompanyStream) and stream.selected
        ]
        return JobRegistry(
            settings,
            self.client,
            sources,
            write_state=lambda: self.state_writer.write_state(self.state),
        )

    @override
    def discover_streams(self) -> list[Stream]:
        return [
            TamCompaniesStream(self),
            LookalikeCompaniesStream(self),
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
        super(Tap, cls).invoke(about=about, about_format=about_format)
        cls.print_version(print_fn=cls.logger.info)
        cli.sync(cli.build(cls, config, state=state, catalog=catalog))

    @classmethod
    @override
    def cb_test(cls, ctx: click.Context, param: click.Option, value: str) -> None:
        # The SDK's --test syncs until the first record of every stream, which here
        # would submit jobs and wait for them. A connection check needs one call.
        if value != CliTestOptionValue.All.value:
            super().cb_test(ctx, param, value)
            return
        cli.connection_test(cli.build(cls, ctx.params.get("config")))
        ctx.exit(0)

    @classmethod
    @override
    def cb_discover(cls, ctx: click.Context, param: click.Option, value: bool) -> None:
        # The SDK's discovery only warns "Config validation failed" on a bad config.
        if value:
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

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        cli.exit_on_signal(self, signum)
