"""Run z3-target-bigquery 0.7.2 against the local-bigquery emulator (tests only).

The target has no endpoint setting: its clients get AnonymousCredentials and the
emulator's REST endpoint (BQ_EMULATOR_REST) or gRPC address (BQ_EMULATOR_GRPC) here.
Also: load payloads are gunzipped (local-bigquery 0.3.2 does not for ``batch_job``),
protobuf's removed ``MessageFactory.GetPrototype`` is restored for
``storage_write_api``, and the target's waits for BigQuery's eventual consistency after
creating a table (5 s, 2.5 s for each upsert's temporary table) are skipped: the
emulator is consistent at once, and the waits were most of a test's minute.
From ../shared/warehouses (the recipe that ran both targets here).
"""

from __future__ import annotations

import gzip
import io
import os
import time
import types

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, bigquery_storage_v1
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcTransport,
)
from google.protobuf import message_factory

REST = os.environ["BQ_EMULATOR_REST"]
GRPC = os.environ["BQ_EMULATOR_GRPC"]


def patch_clients() -> None:
    """Point every client the target makes at the emulator."""
    original_init = bigquery.Client.__init__

    def init(self, *args, **kwargs):
        kwargs["credentials"] = AnonymousCredentials()
        kwargs["client_options"] = {"api_endpoint": REST}
        original_init(self, *args, **kwargs)

    original_load = bigquery.Client.load_table_from_file

    def load_table_from_file(self, file_obj, *args, **kwargs):
        data = file_obj.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return original_load(self, io.BytesIO(data), *args, **kwargs)

    bigquery.Client.__init__ = init
    bigquery.Client.load_table_from_file = load_table_from_file
    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = lambda _self, descriptor: (
            message_factory.GetMessageClass(descriptor)
        )


def write_client(_credentials):
    """A Storage Write client on a plain gRPC channel to the emulator."""
    channel = grpc.insecure_channel(GRPC)
    return bigquery_storage_v1.BigQueryWriteClient(
        transport=BigQueryWriteGrpcTransport(channel=channel)
    )


def main() -> None:
    """Patch the clients, then run the target's CLI."""
    patch_clients()
    # Imported after the patch, and their module-level factory replaced.
    import target_bigquery.core  # noqa: PLC0415
    import target_bigquery.storage_write  # noqa: PLC0415
    from target_bigquery.target import TargetBigQuery  # noqa: PLC0415

    target_bigquery.core.storage_client_factory = write_client
    no_waits = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    no_waits["sleep"] = lambda _seconds: None
    target_bigquery.core.time = types.SimpleNamespace(**no_waits)
    target_bigquery.storage_write.storage_client_factory = write_client
    TargetBigQuery.cli()


if __name__ == "__main__":
    main()
