"""Fixtures: the run's own PostgreSQL database and Redis prefix, and server processes.

PostgreSQL and Redis are real: `DATABASE_URL` and `REDIS_URL` (or the local
defaults) name servers that `make test` made sure answer. Each run creates a
database of its own and drops it at the end, and uses a Redis prefix of its
own, so runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from .support import Api, PrivatePostgres, ServerProcess, Ws, processes

ADMIN_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = secrets.token_hex(4)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_database(name: str) -> AsyncIterator[str]:
    """The URL of a database created empty under `name`, dropped afterwards."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(ADMIN_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(autouse=True)
async def leftovers() -> AsyncIterator[None]:
    """Cancel and await the tasks a test left running, and close its sockets, even on failure.

    A task or socket that outlives its test fails a later one (an unraisable
    exception warning, a port still in use); the session-scoped fixtures' own
    tasks predate this snapshot and are left alone.
    """
    before = asyncio.all_tasks()
    yield
    tasks = asyncio.all_tasks() - before - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ws in list(Ws.still_open):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh, empty database for this run, dropped afterwards."""
    async with fresh_database(f"chat_test_{RUN}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"chattest{RUN}"


@pytest.fixture(scope="session")
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def server_env(database_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "CHAT_ENV": "development",
        "RECONCILE_INTERVAL": "1",
        # Every test client connects from 127.0.0.1.
        "HANDSHAKE_RATE": "100000",
        # Tests write, join and replay quickly as one user (10,000 joins in the churn
        # test); the per-user budgets are tested by processes of their own.
        "SEND_RATE": "100000",
        "SEND_BURST": "100000",
        "CONTROL_RATE": "100000",
        "CONTROL_BURST": "100000",
        "REPLAY_RATE": "10000000",
        "REPLAY_BURST": "10000000",
    }


@pytest.fixture(scope="session")
async def servers(server_env: dict[str, str]) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two processes of one service: same PostgreSQL, same Redis."""
    async with processes(server_env, "a", "b") as (a, b):
        yield a, b


@pytest.fixture(scope="session")
def server(servers: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return servers[0]


@pytest.fixture
async def alice(server: ServerProcess) -> AsyncIterator[Api]:
    api = await Api.new_user(server.url, "alice")
    yield api
    await api.close()


@pytest.fixture
async def bob(server: ServerProcess) -> AsyncIterator[Api]:
    api = await Api.new_user(server.url, "bob")
    yield api
    await api.close()


@pytest.fixture
async def anon(server: ServerProcess) -> AsyncIterator[Api]:
    api = Api(server.url)
    yield api
    await api.close()


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, to stop and start at will."""
    pg = PrivatePostgres()
    try:
        await pg.start()
        yield pg
    finally:
        await pg.remove()
