"""Shared fixtures: a real PostgreSQL (embedded by default), one fresh database per test.

`TEST_DATABASE_URL` points the suite at another server (the user needs
CREATEDB). Otherwise an embedded PostgreSQL runs from `.data/test-pg` with
durability settings off (tests do not need crash safety of the test server).
A template database is migrated once per session and cloned for each test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from ai_service import embedded_db, migrate
from ai_service.api.app import create_app
from ai_service.store import Store
from tests.helpers import make_settings, serve, url_for_database

TEMPLATE = f"ai_service_template_{os.getpid()}"
DATA_ROOT = Path(__file__).resolve().parent.parent / ".data"
FAST_OPTIONS = ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]


def _remove_stale_servers() -> None:
    """Data dirs of earlier test runs whose process is gone (killed runs)."""
    for path in DATA_ROOT.glob("test-pg-*"):
        pid = int(path.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            embedded_db.EmbeddedPostgres(path, 0).stop("immediate")
            embedded_db.remove_data_dir(path)
        except PermissionError:
            continue


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """One private embedded server per test session (or TEST_DATABASE_URL)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    DATA_ROOT.mkdir(exist_ok=True)
    _remove_stale_servers()
    data_dir = DATA_ROOT / f"test-pg-{os.getpid()}"
    server = embedded_db.ensure_running(data_dir, FAST_OPTIONS)
    try:
        yield server.url
    finally:
        server.stop("immediate")
        embedded_db.remove_data_dir(data_dir)


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate.upgrade(url_for_database(pg_admin_url, TEMPLATE))
    yield TEMPLATE
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated, empty database for one test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield url_for_database(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.open(database_url, min_size=1, max_size=20, wait=True)
    yield s
    await s.close()


ApiFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def api_factory(database_url: str) -> ApiFactory:
    """`async with api_factory(AI_SERVICE_TOKEN="t") as client:` a real API on loopback.

    Keyword arguments are environment variables for the API's settings.
    """

    @asynccontextmanager
    async def start(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        env.setdefault("RESCUE_INTERVAL", "3600")
        app = create_app(make_settings(database_url, **env))
        async with (
            serve(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        ):
            yield client

    return start


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A real API (auth off) on loopback and an HTTP client for it."""
    async with api_factory() as client:
        yield client


@pytest.fixture
async def restartable(
    request: pytest.FixtureRequest,
) -> AsyncIterator[embedded_db.EmbeddedPostgres]:
    """A migrated PostgreSQL of the test's own, which it may stop and start (the
    session's server must not be stopped)."""
    data_dir = DATA_ROOT / f"test-pg-restartable-{os.getpid()}"
    server = await asyncio.to_thread(embedded_db.ensure_running, data_dir, ["-c fsync=off"])
    try:
        await asyncio.to_thread(migrate.upgrade, server.url)
        yield server
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        embedded_db.remove_data_dir(data_dir)
