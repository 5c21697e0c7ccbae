"""Applies `sql/migrations` in order, each once, each in its own transaction.

Several processes may start together on an empty database: a PostgreSQL
advisory lock lets one migrate while the others wait, then find nothing to do.
"""

from __future__ import annotations

import logging

import asyncpg

from .sql import migrations

log = logging.getLogger("chat.migrate")

# An arbitrary constant shared by every process of this service: "chat" in ASCII.
LOCK_ID = 0x63686174

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def pending(conn: asyncpg.Connection) -> list[int]:
    """Versions not yet applied (all of them on an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [version for version, _, _ in migrations() if version not in applied]


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply what is pending; returns the versions this call applied."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, text in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("migration applied", extra={"version": version, "migration": name})
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied_now
