# The README's two commands:
#   make demo   extract the sample jobs of a fake OpenFunnel server (or, with
#               TAP_OPENFUNNEL_API_KEY set, the real API) into DuckDB through Meltano
#   make test   every test, the end-to-end runs through Meltano included
#
# Both create what they need on a fresh machine (Debian 12: python3.11 with python3-venv;
# `make test` also needs PostgreSQL's binaries: apt-get install postgresql, and a Python
# 3.13 for the BigQuery emulator: pyenv's, python3.13 on PATH, or $PYTHON313) and skip
# the installs on later runs: stamp files in .venv/, .meltano-venv/, .meltano/ and .e2e/
# remember them.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
TOOLS_VENV := .tools-venv
PYTEST_ARGS ?=

.PHONY: demo test test-quick install meltano warehouses clean-demo

demo: $(VENV)/.installed meltano
	scripts/demo.sh

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The quick part: every test but the end-to-end runs through Meltano (no Meltano, no
# PostgreSQL, no emulators needed).
test-quick: $(VENV)/.installed-test $(TOOLS_VENV)/.installed
	$(VENV)/bin/pytest -m "not e2e" $(PYTEST_ARGS)

# Everything the tests, linters and type checker need (what .ci/run calls first).
install: $(VENV)/.installed-test $(TOOLS_VENV)/.installed meltano warehouses

# Meltano in its own virtualenv (.meltano-venv/) and the plugins of meltano.yml.
meltano:
	PYTHON="$(PYTHON)" scripts/setup_meltano.sh

# The Snowflake and BigQuery emulators of the end-to-end tests (after the plugins:
# fakesnow goes into target-snowflake's virtualenv).
warehouses: meltano
	scripts/setup_warehouses.sh

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "No python3.11 or python3 on PATH." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "'$(PYTHON) -m venv' failed (Debian: apt-get install python3-venv)." >&2; exit 1; }

# The project itself (editable), for the demo: the tap and the fake OpenFunnel server, a
# distribution of its own in sandbox/ (the tap's wheel holds the tap only).
# An editable install is not byte-compiled as a wheel install is; where Python does not
# write bytecode itself (PYTHONDONTWRITEBYTECODE, read-only images) every start would
# compile the modules again. Stale files are simply recompiled in memory.
$(VENV)/.installed: pyproject.toml sandbox/pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e . -e ./sandbox
	$(VENV)/bin/python -m compileall -q tap_openfunnel sandbox/openfunnel_sandbox
	touch $@

# The project with its test extras, and the fake server the tests run against.
$(VENV)/.installed-test: pyproject.toml sandbox/pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[test]' -e ./sandbox
	$(VENV)/bin/python -m compileall -q tap_openfunnel sandbox/openfunnel_sandbox
	touch $@ $(VENV)/.installed

# singer-tools (singer-check-tap validates the tap's output in the tests) pins
# jsonschema 2.6.0: it gets a virtualenv of its own, away from singer-sdk.
$(TOOLS_VENV)/.installed:
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet 'singer-tools==0.4.1' setuptools
	touch $@

clean-demo:
	rm -rf .demo output/demo.duckdb output/demo.duckdb.wal
