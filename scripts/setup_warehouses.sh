#!/usr/bin/env bash
# Install the warehouse emulators the end-to-end tests load into (tests/e2e/test_snowflake.py
# and test_bigquery.py); `make install` runs this after scripts/setup_meltano.sh.
#
# - Snowflake: fakesnow, into the virtualenv `meltano install` made for target-snowflake
#   (tests/e2e/warehouses/snowflake_target.py runs the target inside fakesnow's patch).
#   It adds packages there and changes none of the target's.
# - BigQuery: the local-bigquery emulator in .e2e/bigquery-emulator/. It needs Python
#   3.13 (found as $PYTHON313, python3.13, or pyenv's); without one this fails: the
#   BigQuery test must not be skipped quietly.
#
# Idempotent: stamp files hold what was installed (a second run takes ~0.1 s). The
# Snowflake stamp lives inside the plugin's virtualenv, so a `meltano install` that
# recreates it also brings fakesnow back here.
set -euo pipefail
cd "$(dirname "$0")/.."

MELTANO_VENV="${MELTANO_VENV:-.meltano-venv}"
UV="$MELTANO_VENV/bin/uv"  # Meltano 4 installs plugins with uv and brings it along
FAKESNOW_SPEC="fakesnow[server]==0.12.1"
EMULATOR_VENV=.e2e/bigquery-emulator
EMULATOR_SPECS=(
    local-bigquery==0.3.2
    # 0.4.0 needs duckdb 2.0 and downloads an extension: it fails offline. The
    # extensions come as wheels instead of from DuckDB's server.
    duckdb==1.5.5
    duckdb-extension-ducklake==1.5.5
    duckdb-extension-spatial==1.5.5
)

if [[ ! -x "$UV" ]]; then
    echo "$UV is missing: run scripts/setup_meltano.sh (make install) first." >&2
    exit 1
fi

snowflake_python=.meltano/loaders/target-snowflake/venv/bin/python
snowflake_stamp=.meltano/loaders/target-snowflake/venv/.fakesnow-installed
if [[ ! -x "$snowflake_python" ]]; then
    echo "target-snowflake is not installed: run scripts/setup_meltano.sh (make install) first." >&2
    exit 1
fi
if [[ "$(cat "$snowflake_stamp" 2>/dev/null)" != "$FAKESNOW_SPEC" ]]; then
    echo "==> Installing $FAKESNOW_SPEC into target-snowflake's virtualenv"
    "$UV" pip install --quiet --python "$snowflake_python" "$FAKESNOW_SPEC"
    printf '%s' "$FAKESNOW_SPEC" > "$snowflake_stamp"
fi

find_python313() {
    local candidate
    for candidate in "${PYTHON313:-}" "$(command -v python3.13 || true)" \
        "$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"/versions/3.13*/bin/python3.13; do
        # pyenv's shim is on PATH even when 3.13 is not a selected version, and then
        # fails: run each candidate rather than trusting that it exists.
        if [[ -n "$candidate" ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

emulator_stamp="$EMULATOR_VENV/.installed"
if [[ ! -x "$EMULATOR_VENV/bin/python" || "$(cat "$emulator_stamp" 2>/dev/null)" != "${EMULATOR_SPECS[*]}" ]]; then
    if ! python313="$(find_python313)"; then
        echo "No Python 3.13 found (PYTHON313, python3.13 on PATH, or pyenv's versions/3.13*):" \
            "the BigQuery emulator (local-bigquery) needs it. Install one (pyenv install 3.13," \
            "or Debian's python3.13) or point PYTHON313 at it." >&2
        exit 1
    fi
    echo "==> Creating $EMULATOR_VENV with $python313: ${EMULATOR_SPECS[*]}"
    rm -rf "$EMULATOR_VENV"
    "$UV" venv --quiet --python "$python313" "$EMULATOR_VENV"
    printf '*\n' > "$EMULATOR_VENV/.gitignore"
    "$UV" pip install --quiet --python "$EMULATOR_VENV/bin/python" "${EMULATOR_SPECS[@]}"
    printf '%s' "${EMULATOR_SPECS[*]}" > "$emulator_stamp"
fi
