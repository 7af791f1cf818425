"""End-to-end fixtures: Meltano in its own virtualenv, a throwaway PostgreSQL, the fake API.

The tests drive the project's real ``meltano.yml`` and the plugins that ``meltano
install`` put under ``.meltano/``. Each test gets its own Meltano system database (state
never leaks between tests, nor into the project's ``.meltano/meltano.db``), its own
target database or file, and a fake OpenFunnel server on loopback in this process.
"""

from __future__ import annotations

import pytest
from e2e_support import (
    E2E_API_KEY,
    MeltanoProject,
    PostgresDatabase,
    check_meltano_installed,
    postgres_cluster,
)

from openfunnel_sandbox import FakeOpenFunnel


@pytest.fixture(scope="session")
def meltano_installed() -> None:
    check_meltano_installed()


@pytest.fixture
def meltano(meltano_installed, tmp_path) -> MeltanoProject:
    return MeltanoProject(system_db=tmp_path / "meltano.db")


@pytest.fixture
def fake_api():
    with FakeOpenFunnel(api_keys=(E2E_API_KEY,), seed=0) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_database(postgres, request) -> PostgresDatabase:
    """A fresh database per test, so that row counts are exact."""
    name = "e2e_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    postgres.psql("postgres", f'DROP DATABASE IF EXISTS "{name}"')
    postgres.psql("postgres", f'CREATE DATABASE "{name}"')
    return PostgresDatabase(cluster=postgres, name=name)
