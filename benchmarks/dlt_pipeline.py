"""The peer: dlt's rest_api source reading one completed job's pages into DuckDB or PostgreSQL.

Run by bench.py with the Python of .bench-venvs/dlt (dlt[duckdb]) or .bench-venvs/dlt-postgres
(dlt[postgres]), never
by the tap's own environment. What a user might write instead of the tap: a cursor
paginator on ``next_cursor``, rows at ``rows``. It cannot submit or wait for a job; the
job it reads is already completed.
"""

from __future__ import annotations

import argparse
import sys

import dlt
from dlt.sources.rest_api import rest_api_source


def main() -> int:
    """Load every row of one job into ``<dataset>.tam_companies`` and print the load info.

    Returns:
        0 when the load finished.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="Base URL of the (fake) API")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--job-id", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database", help="DuckDB file to load into")
    where.add_argument("--postgres", help="PostgreSQL URL to load into (dlt[postgres])")
    parser.add_argument("--pipelines-dir", required=True, help="dlt's working folder")
    parser.add_argument("--dataset", default="openfunnel_dlt")
    args = parser.parse_args()

    source = rest_api_source(
        {
            "client": {
                "base_url": args.url,
                "auth": {
                    "type": "api_key",
                    "name": "X-API-Key",
                    "api_key": args.api_key,
                    "location": "header",
                },
            },
            "resources": [
                {
                    "name": "tam_companies",
                    "endpoint": {
                        "path": f"api/v1/tam/build/{args.job_id}",
                        "data_selector": "rows",
                        "paginator": {
                            "type": "cursor",
                            "cursor_path": "next_cursor",
                            "cursor_param": "cursor",
                        },
                    },
                    "write_disposition": "append",
                },
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="openfunnel_bench",
        destination=(
            dlt.destinations.postgres(args.postgres)
            if args.postgres
            else dlt.destinations.duckdb(args.database)
        ),
        dataset_name=args.dataset,
        pipelines_dir=args.pipelines_dir,
    )
    info = pipeline.run(source)
    print(info, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
