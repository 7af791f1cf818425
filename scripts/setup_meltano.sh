#!/usr/bin/env bash
# Create Meltano's own virtualenv (.meltano-venv/) and install the plugins of meltano.yml.
#
# Meltano lives apart from the tap's .venv because its pins (sqlalchemy, click) clash
# with singer-sdk's; each plugin then gets its own virtualenv under .meltano/. Every
# plugin is defined in the project (inline, or the lockfile under plugins/), so nothing
# here asks Meltano Hub.
# Idempotent: stamp files skip the work when nothing changed (a second run takes ~0.1 s).
set -euo pipefail
cd "$(dirname "$0")/.."

MELTANO_VENV="${MELTANO_VENV:-.meltano-venv}"
MELTANO_SPEC="${MELTANO_SPEC:-meltano>=4,<5}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
PLUGIN_EXECUTABLES=(
    .meltano/extractors/tap-openfunnel/venv/bin/tap-openfunnel
    .meltano/loaders/target-duckdb/venv/bin/target-duckdb
    .meltano/loaders/target-postgres/venv/bin/target-postgres
    .meltano/loaders/target-jsonl/venv/bin/target-jsonl
    .meltano/loaders/target-snowflake/venv/bin/target-snowflake
    .meltano/loaders/target-bigquery/venv/bin/target-bigquery
    .meltano/utilities/dbt-duckdb/venv/bin/dbt
    .meltano/utilities/dbt-postgres/venv/bin/dbt
    .meltano/utilities/dbt-snowflake/venv/bin/dbt
    .meltano/utilities/dbt-bigquery/venv/bin/dbt
)
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true

venv_stamp="$MELTANO_VENV/.installed"
if [[ ! -x "$MELTANO_VENV/bin/meltano" || "$(cat "$venv_stamp" 2>/dev/null)" != "$MELTANO_SPEC" ]]; then
    if [[ -z "$PYTHON" ]]; then
        echo "No python3.11 or python3 on PATH (Debian: apt-get install python3 python3-venv)." >&2
        exit 1
    fi
    echo "==> Creating $MELTANO_VENV with $PYTHON and installing '$MELTANO_SPEC'"
    if ! "$PYTHON" -m venv "$MELTANO_VENV"; then
        echo "'$PYTHON -m venv' failed (Debian: apt-get install python3-venv)." >&2
        exit 1
    fi
    # Keep the virtualenv out of git whatever the project's .gitignore says.
    printf '*\n' > "$MELTANO_VENV/.gitignore"
    "$MELTANO_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$MELTANO_VENV/bin/python" -m pip install --quiet "$MELTANO_SPEC"
    printf '%s' "$MELTANO_SPEC" > "$venv_stamp"
fi

# Plugins are (re)installed when meltano.yml or the tap's dependencies (it is installed
# with `pip_url: -e .`) changed since the last install, or a plugin is missing.
plugins_stamp=.meltano/.plugins-installed
wanted="$("$MELTANO_VENV/bin/python" scripts/plugins_fingerprint.py)"
missing=0
for executable in "${PLUGIN_EXECUTABLES[@]}"; do
    [[ -x "$executable" ]] || missing=1
done
if [[ "$missing" == 1 || "$(cat "$plugins_stamp" 2>/dev/null)" != "$wanted" ]]; then
    echo "==> meltano install (each plugin in its own virtualenv under .meltano/)"
    "$MELTANO_VENV/bin/meltano" install
    # Meltano installs plugins with uv, which does not byte-compile them as pip does.
    # Where Python does not write bytecode itself (PYTHONDONTWRITEBYTECODE, read-only
    # images) every start of the tap would compile the Singer SDK again: `--about`
    # took 0.77 s instead of 0.36 s. A file that does not compile is left to Python.
    echo "==> byte-compiling the plugins' virtualenvs"
    for plugin_venv in .meltano/*/*/venv; do
        "$plugin_venv/bin/python" -m compileall -q -j0 "$plugin_venv/lib" >/dev/null 2>&1 || true
    done
    # The tap is installed editable (`pip_url: -e .`): its modules are these.
    .meltano/extractors/tap-openfunnel/venv/bin/python -m compileall -q tap_openfunnel >/dev/null
    printf '%s' "$wanted" > "$plugins_stamp"
fi
