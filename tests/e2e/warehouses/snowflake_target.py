"""Run meltanolabs-target-snowflake 0.20.4 inside fakesnow 0.12.1 (tests only).

fakesnow patches the Snowflake connector in process; this replaces four connector
methods where fakesnow falls short of Snowflake: no user stage (``@~``) or quoted stage
names (a named stage instead), no SELECT from a stage and a broken COPY with a
``$1:col`` subquery on JSON (COPY into a one-column VARIANT scratch table, then INSERT
or MERGE from it with ``v:col::TYPE`` casts), no SEQ8() (dedupe with ROW_NUMBER over
ROWID), and no REMOVE or DROP FILE FORMAT (no-ops). Sinks are drained one at a time:
fakesnow's DuckDB connection refuses a second call while one runs ("connection is
busy with another call"), which the SDK's parallel drain at the end of input hit. What
the tests prove through it is the target's DDL, its type mapping of our schemas and its
upsert on key properties, not Snowflake's staging. From ../shared/warehouses (the recipe
that ran both targets here).

Env: FAKESNOW_DB_PATH, the folder of fakesnow's DuckDB files.
"""

from __future__ import annotations

import os
import sys

import fakesnow
from sqlalchemy import text

DB_PATH = os.environ["FAKESNOW_DB_PATH"]
STAGE_SCHEMA, STAGE = "FS_STAGING", "TGT_STAGE"
NO_OPS = [r"^\s*remove\s", r"^\s*drop\s+file\s+format"]


def main() -> None:
    """Patch the connector, then run the target's CLI."""
    with fakesnow.patch(db_path=DB_PATH, nop_regexes=NO_OPS):
        # Imported inside the patch: fakesnow replaces snowflake.connector's connect.
        import singer_sdk.target_base  # noqa: PLC0415
        from target_snowflake.connector import SnowflakeConnector  # noqa: PLC0415
        from target_snowflake.target import TargetSnowflake  # noqa: PLC0415

        patch_connector(SnowflakeConnector)
        singer_sdk.target_base._MAX_PARALLELISM = 1
        try:
            TargetSnowflake.cli()
        except SystemExit as done:
            if done.code not in (0, None):
                raise


def patch_connector(connector: type) -> None:
    """Replace the connector's staging methods with ones fakesnow can run."""

    def stage(self) -> str:
        return f"{self.config['database']}.{STAGE_SCHEMA}.{STAGE}"

    original_put = connector.put_batches_to_stage

    def put_batches_to_stage(self, sync_id, files):
        with self._connect() as conn, conn.begin():
            database = self.config["database"]
            conn.execute(text(f"create schema if not exists {database}.{STAGE_SCHEMA}"))
            conn.execute(text(f"create stage if not exists {stage(self)}"))
        return original_put(self, sync_id, files)

    def get_put_statement(self, sync_id, file_uri):
        return text(f"put :file_uri @{stage(self)}/{sync_id}"), {}

    def scratch(self, conn, sync_id, file_format) -> str:
        table = f"{self.config['database']}.{STAGE_SCHEMA}.S_" + sync_id.replace("-", "_").upper()
        conn.execute(text(f"create or replace table {table} (v VARIANT)"))
        conn.execute(
            text(
                f"copy into {table} from @{stage(self)}/{sync_id} "
                f"file_format = (format_name='{file_format}')"
            )
        )
        return table

    def casts(self, schema) -> tuple[list[str], list[str]]:
        columns = self._get_column_selections(schema)
        selections = [
            f"v:{c['clean_property_name']}::{c['sql_type']} as {c['clean_alias']}" for c in columns
        ]
        return selections, [c["clean_alias"] for c in columns]

    def copy_from_stage(self, full_table_name, schema, sync_id, file_format):
        selections, aliases = casts(self, schema)
        with self._connect() as conn, conn.begin():
            table = scratch(self, conn, sync_id, file_format)
            inserted = conn.execute(
                text(
                    f"insert into {full_table_name} ({', '.join(aliases)}) "
                    f"select {', '.join(selections)} from {table}"
                )
            ).rowcount
            conn.execute(text(f"drop table if exists {table}"))
        return inserted

    def merge_from_stage(  # noqa: PLR0913, PLR0917 - the signature of the method replaced
        self, full_table_name, schema, sync_id, file_format, key_properties
    ):
        selections, aliases = casts(self, schema)
        keys = [self.format_identifier(k, safe=True) for k in key_properties]
        on = " and ".join(f"d.{k} = s.{k}" for k in keys)
        update = ", ".join(f"d.{c} = s.{c}" for c in aliases)
        with self._connect() as conn, conn.begin():
            table = scratch(self, conn, sync_id, file_format)
            # The last record of a key wins; MERGE's join cannot see ROWID in a subquery.
            conn.execute(
                text(
                    f"create or replace table {table}_T as select {', '.join(selections)} "
                    f"from {table} qualify row_number() over "
                    f"(partition by {', '.join(keys)} order by rowid desc) = 1"
                )
            )
            row = conn.execute(
                text(
                    f"merge into {full_table_name} d using {table}_T s on {on} "
                    f"when matched then update set {update} "
                    f"when not matched then insert ({', '.join(aliases)}) "
                    f"values ({', '.join('s.' + c for c in aliases)})"
                )
            ).fetchone()
            conn.execute(text(f"drop table if exists {table}_T"))
            conn.execute(text(f"drop table if exists {table}"))
        return sum(row) if row is not None else None

    connector.put_batches_to_stage = put_batches_to_stage
    connector._get_put_statement = get_put_statement
    connector.copy_from_stage = copy_from_stage
    connector.merge_from_stage = merge_from_stage


if __name__ == "__main__":
    main()
    sys.exit(0)
