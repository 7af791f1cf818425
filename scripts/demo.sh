#!/usr/bin/env bash
# The README's first command (`make demo`): run `meltano run tap-openfunnel target-duckdb`
# and show what landed in DuckDB.
#
# Without TAP_OPENFUNNEL_API_KEY it starts the fake OpenFunnel server that comes with this
# repository (`python -m openfunnel_sandbox --demo`: one completed TAM job of 1,234
# companies and one lookalike job of 250) on a free loopback port, points the tap at it,
# loads output/demo.duckdb and fails unless every row arrived. With
# TAP_OPENFUNNEL_API_KEY set, the same pipeline runs against the real API with your
# settings (TAP_OPENFUNNEL_TAM_JOB_IDS='["..."]', `meltano config set tap-openfunnel ...`)
# and loads output/warehouse.duckdb, with your own submission journal
# ($XDG_STATE_HOME/tap-openfunnel/, or ~/.local/state/tap-openfunnel/): the one your
# pipelines use, so the demo never buys again an entry they already bought.
#
# Expects .venv (the project) and .meltano-venv (Meltano and its plugins) to exist:
# `make demo` creates both first.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
MELTANO="${MELTANO_VENV:-.meltano-venv}/bin/meltano"
DUCKDB_PYTHON=.meltano/loaders/target-duckdb/venv/bin/python
DEMO_DIR=.demo
TAM_ROWS=1234
LOOKALIKE_ROWS=250
# Each refresh of one entry moves this many rows on: it drops and adds as many companies.
REFRESH_DRIFT=40
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true
export PYTHONUNBUFFERED=1
mkdir -p "$DEMO_DIR" output

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_args=(run tap-openfunnel target-duckdb)
show_args=()
if [[ -z "${TAP_OPENFUNNEL_API_KEY:-}" ]]; then
    echo "==> TAP_OPENFUNNEL_API_KEY is not set: starting the fake OpenFunnel server (sandbox)"
    info="$DEMO_DIR/sandbox.json"
    rm -f "$info"
    "$VENV/bin/python" -m openfunnel_sandbox --port 0 --demo \
        --tam-rows "$TAM_ROWS" --lookalike-rows "$LOOKALIKE_ROWS" --refresh-drift "$REFRESH_DRIFT" \
        > "$info" 2> "$DEMO_DIR/sandbox.log" &
    server_pid=$!
    for _ in $(seq 100); do
        [[ -s "$info" ]] && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$DEMO_DIR/sandbox.log" >&2; exit 1; }
        sleep 0.1
    done
    [[ -s "$info" ]] || { echo "The sandbox did not start within 10 s" >&2; exit 1; }
    # The sandbox prints one JSON line: url, api_key and the ids of its sample jobs.
    eval "$("$VENV/bin/python" - "$info" <<'PY'
import json, os, shlex, sys
info = json.loads(open(sys.argv[1], encoding="utf-8").readline())
settings = {
    "API_URL": info["url"],
    "API_KEY": info["api_key"],
    "TAM_JOB_IDS": json.dumps(info["tam_job_ids"]),
    "LOOKALIKE_JOB_IDS": json.dumps(info["lookalike_job_ids"]),
    # Only the sample jobs: entries you configured for the real API are not submitted.
    "TAM_BUILDS": "[]",
    "LOOKALIKE_SEARCHES": "[]",
    # The sandbox's jobs stay out of your submission journal (~/.local/state/...).
    "JOURNAL_PATH": os.path.abspath(".demo/journal.sqlite3"),
}
for name, value in settings.items():
    print(f"export TAP_OPENFUNNEL_{name}={shlex.quote(value)}")
PY
)"
    echo "    $TAP_OPENFUNNEL_API_URL  TAM job $TAP_OPENFUNNEL_TAM_JOB_IDS  lookalike job $TAP_OPENFUNNEL_LOOKALIKE_JOB_IDS"
    export TARGET_DUCKDB_FILEPATH="$PWD/output/demo.duckdb"
    rm -f "$TARGET_DUCKDB_FILEPATH" "$TARGET_DUCKDB_FILEPATH.wal"
    # A state id of its own keeps the sandbox's jobs out of the real pipeline's state;
    # the sandbox draws new job ids on every start, and a full refresh ignores old state.
    run_args=(run --state-id-suffix sandbox --full-refresh tap-openfunnel target-duckdb)
    show_args=(--expect "tam_companies=$TAM_ROWS" --expect "lookalike_companies=$LOOKALIKE_ROWS" --expect jobs=2)
else
    echo "==> TAP_OPENFUNNEL_API_KEY is set: extracting from ${TAP_OPENFUNNEL_API_URL:-the OpenFunnel API}"
    export TARGET_DUCKDB_FILEPATH="${TARGET_DUCKDB_FILEPATH:-$PWD/output/warehouse.duckdb}"
fi

log="$DEMO_DIR/meltano-run.log"
echo "==> meltano ${run_args[*]}   (full log: $log)"
started=$SECONDS
# Meltano's output goes to the log whole and, as it happens, to the screen filtered to
# the lines a person follows: the tap's job progress, warnings and summary, the loads.
set +e
"$MELTANO" "${run_args[@]}" 2>&1 | tee "$log" \
    | grep --line-buffered -E "tap-openfunnel|target-duckdb +Loading|Run completed|\[(warning|error)" \
    | grep --line-buffered -vE "Beginning sync|Meltano SDK v" \
    | sed -u -E 's/^[^ ]+ +\[([a-z]+) *\] +/    \1  /'
meltano_status=${PIPESTATUS[0]}
set -e
if [[ "$meltano_status" != 0 ]]; then
    echo "meltano run failed (exit $meltano_status); the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "==> Done in $((SECONDS - started)) s. What landed in DuckDB:"
# Relative to the checkout when inside it: the same output on every machine.
"$DUCKDB_PYTHON" scripts/show_duckdb.py "${TARGET_DUCKDB_FILEPATH#"$PWD"/}" "${show_args[@]}"
if [[ ${#show_args[@]} -gt 0 ]]; then
    echo "==> OK: every row of the sample jobs arrived ($TAM_ROWS TAM companies, $LOOKALIKE_ROWS lookalikes)."
elif grep -q "in an earlier run; skipping" "$log"; then
    echo "==> Jobs extracted by an earlier run were skipped (Meltano keeps the state: \`meltano state list\`)."
fi

# The dbt models (transform/, docs/models.md): with the sandbox, one tam_builds entry is
# submitted and then refreshed (refresh_after 0 days), so that the models have two
# refreshes of one entry to compare; then the models are built and shown.
if [[ ${#show_args[@]} -gt 0 ]]; then
    export TAP_OPENFUNNEL_TAM_JOB_IDS='[]' TAP_OPENFUNNEL_LOOKALIKE_JOB_IDS='[]'
    export TAP_OPENFUNNEL_TAM_BUILDS='[{"query": "observability vendors in Europe"}]'
    for pass in submit refresh; do
        extra=(--full-refresh)
        [[ "$pass" == refresh ]] && extra=() && export TAP_OPENFUNNEL_REFRESH_AFTER=0
        echo "==> The demo entry: $pass (meltano run tap-openfunnel target-duckdb; log $DEMO_DIR/entry-$pass.log)"
        "$MELTANO" run --state-id-suffix sandbox "${extra[@]}" tap-openfunnel target-duckdb \
            > "$DEMO_DIR/entry-$pass.log" 2>&1 \
            || { echo "meltano run failed; the end of $DEMO_DIR/entry-$pass.log:" >&2; tail -n 40 "$DEMO_DIR/entry-$pass.log" >&2; exit 1; }
    done
fi
echo "==> meltano invoke dbt-duckdb build   (the models of transform/; log $DEMO_DIR/dbt.log)"
if ! DBT_DUCKDB_PATH="$TARGET_DUCKDB_FILEPATH" "$MELTANO" invoke dbt-duckdb build > "$DEMO_DIR/dbt.log" 2>&1; then
    echo "dbt build failed; the end of $DEMO_DIR/dbt.log:" >&2
    tail -n 40 "$DEMO_DIR/dbt.log" >&2
    exit 1
fi
grep -E "Done\. PASS" "$DEMO_DIR/dbt.log" | sed -E 's/^[^ ]+ +/    /' || true
.meltano/utilities/dbt-duckdb/venv/bin/python scripts/show_models.py "${TARGET_DUCKDB_FILEPATH#"$PWD"/}"
