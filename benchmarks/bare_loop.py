"""The bare minimum the tap is compared with: fetch every page, parse it, write RECORD lines."""

from __future__ import annotations

import argparse
import json
import sys

import requests


def main() -> None:
    """Read one terminal job page by page, following ``next_cursor``, records to stdout.

    One ``requests.Session``, one request at a time, no retries, no schema, no state:
    what any hand-written extractor does at least.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="Base URL of the (fake) API")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--path", default="/api/v1/tam/build", help="Job family base path")
    parser.add_argument("--stream", default="tam_companies")
    parser.add_argument(
        "--import-singer-sdk",
        action="store_true",
        help="import singer_sdk first: the same start-up as the tap pays",
    )
    args = parser.parse_args()
    if args.import_singer_sdk:
        import singer_sdk  # noqa: F401, PLC0415 - its import time is the point

    session = requests.Session()
    session.headers["X-API-Key"] = args.api_key
    url = f"{args.url}{args.path}/{args.job_id}"
    write = sys.stdout.write
    stream = args.stream
    cursor: str | None = None
    while True:
        response = session.get(url, params={"cursor": cursor} if cursor else None, timeout=60)
        response.raise_for_status()
        body = response.json()
        for row in body["rows"] or ():
            # Compact separators: the same bytes per record as the SDK writes.
            message = {"type": "RECORD", "stream": stream, "record": row}
            write(json.dumps(message, separators=(",", ":")) + "\n")
        cursor = body.get("next_cursor")
        if not cursor:
            break
    sys.stdout.flush()


if __name__ == "__main__":
    main()
