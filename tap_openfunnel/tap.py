"""TapOpenFunnel: settings, streams, and the command line."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import typing as t
from functools import cached_property

from singer_sdk import Tap
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities, TapCapabilities
from singer_sdk.tap_base import CliTestOptionValue

from tap_openfunnel.client import BALANCE_PATH, OpenFunnelClient, RetryPolicy
from tap_openfunnel.exceptions import OpenFunnelError
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
        try:
            tap = cls(
                config=config.config if config is not None else None,
                state=None if state is None else json.loads(state.read()),
                catalog=None if catalog is None else json.loads(catalog.read()),
                parse_env_config=config.parse_env if config is not None else False,
                validate_config=True,
            )
        except ValueError as exc:
            cls._fail(
                f"A config, state or catalog file given to the tap is not valid JSON ({exc}). "
                "Fix the file, or pass a state file that a previous run wrote.",
            )
        try:
            tap.settings  # noqa: B018 - check the settings before any stream starts
            tap.sync_all()
            tap.registry.log_summary()
            tap.registry.raise_for_failures()
        except OpenFunnelError as exc:
            cls._fail(str(exc))

    @classmethod
    @override
    def cb_test(cls, ctx: click.Context, param: click.Option, value: str) -> None:
        # The SDK's --test syncs until the first record of every stream, which here
        # would submit jobs and wait for them. A connection check needs one call.
        if value != CliTestOptionValue.All.value:
            super().cb_test(ctx, param, value)
            return
        config: t.Any = ctx.params.get("config")
        try:
            tap = cls(
                config=config.config if config is not None else None,
                parse_env_config=config.parse_env if config is not None else False,
                validate_config=True,
            )
            balance = tap.client.get(BALANCE_PATH)
        except OpenFunnelError as exc:
            cls._fail(f"Connection test failed. {exc}")
        cls.logger.info(
            "Connection test passed: %s accepted the API key; %s credits left.",
            tap.settings.api_url,
            balance.get("credits_left", "an unknown number of"),
        )
        ctx.exit(0)

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
            cls._fail(
                f"Could not read the config given with --config ({exc}). Pass a readable "
                "JSON file, or ENV to take settings from TAP_OPENFUNNEL_* variables.",
            )

    @classmethod
    def _fail(cls, message: str) -> t.NoReturn:
        # A user-facing failure: one paragraph, a non-zero exit, no traceback.
        cls.logger.error("%s", message)
        sys.exit(1)

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        # The SDK writes state and exits 0, which tells a scheduler all went well.
        self.logger.warning("Interrupted by signal %d; writing state and exiting non-zero.", signum)
        self.state_writer.write_state(self.state)
        if self.settings.cancel_on_interrupt and "registry" in self.__dict__:
            cancelled = self.registry.cancel_submitted()
            if cancelled:
                self.logger.warning(
                    "cancel_on_interrupt: asked to cancel %s.", ", ".join(cancelled)
                )
        # Exit now: a normal exit would wait for page requests still in flight in the
        # prefetch threads (up to request_timeout). Everything written is flushed first.
        sys.stdout.flush()
        logging.shutdown()
        os._exit(128 + signum)
