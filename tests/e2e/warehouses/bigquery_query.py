"""Answer queries against the local-bigquery emulator as JSON (tests only).

Run with the target-bigquery virtualenv's Python (it has google-cloud-bigquery).
stdin: a JSON list of {"sql": "..."} (rows, as lists) or {"table": "dataset.table"}
(its columns as [name, type, mode]); stdout: a JSON list of the answers.
"""

from __future__ import annotations

import json
import sys

from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery


def main(endpoint: str, project: str) -> None:
    """Run the requests read from stdin and print their answers."""
    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )
    results = []
    for request in json.load(sys.stdin):
        if "table" in request:
            table = client.get_table(request["table"])
            results.append([[f.name, f.field_type, f.mode] for f in table.schema])
        else:
            rows = client.query_and_wait(request["sql"])
            results.append([list(row.values()) for row in rows])
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
