"""Answer SQL queries against fakesnow's files as JSON (tests only).

Run with the target-snowflake virtualenv's Python (it has fakesnow), after the target
exited: DuckDB locks the files. stdin: a JSON list of SQL strings; stdout: a JSON list
with each query's rows (lists; values that JSON lacks as text).
"""

from __future__ import annotations

import json
import sys

import fakesnow
import snowflake.connector


def main(db_path: str, database: str, schema: str) -> None:
    """Run the queries read from stdin and print their rows."""
    queries = json.load(sys.stdin)
    with fakesnow.patch(db_path=db_path):
        connection = snowflake.connector.connect(database=database, schema=schema)
        cursor = connection.cursor()
        results = [[list(row) for row in cursor.execute(sql).fetchall()] for sql in queries]
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
