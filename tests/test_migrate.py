"""Migrations run once however many processes start together; the SQL loader refuses mistakes.

Each test that migrates gets a brand-new empty database of its own, so what it
sees in `schema_migrations` is only what it did.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from chat.migrate import migrate, pending
from chat.sql import load_queries, migrations, parse_queries

from .conftest import REDIS_URL, fresh_database
from .support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = [(version, name) for version, name, _ in migrations()]


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """The URL of a database created empty for this test, dropped after it."""
    async with fresh_database(f"chat_migrate_{secrets.token_hex(4)}") as url:
        yield url


async def recorded(url: str) -> list[tuple[int, str]]:
    """The rows of schema_migrations, in version order."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(row["version"], row["name"]) for row in rows]


async def test_two_servers_starting_together_migrate_once(empty_database: str) -> None:
    """Two processes started at once on an empty database both come up; each migration runs once."""
    env = {
        "DATABASE_URL": empty_database,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": f"chatmigrate{secrets.token_hex(4)}",
        "CHAT_ENV": "development",
    }
    a, b = ServerProcess(env, "a"), ServerProcess(env, "b")
    try:
        await asyncio.gather(a.start(), b.start())
        async with httpx.AsyncClient(timeout=10) as http:
            for server in (a, b):
                ready = await http.get(server.url + "/readyz")
                assert ready.status_code == 200, ready.text
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert await recorded(empty_database) == MIGRATIONS
    applied = [line for line in a.lines + b.lines if "migration applied" in line]
    assert len(applied) == len(MIGRATIONS), applied


async def test_concurrent_migrate_calls_apply_each_version_once(empty_database: str) -> None:
    """migrate() on two connections at once: one applies everything, the other nothing."""
    first, second = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
    try:
        assert await pending(first) == [v for v, _ in MIGRATIONS]
        results = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(results, key=len) == [[], [v for v, _ in MIGRATIONS]]
        assert await pending(first) == []
        assert await migrate(second) == []
    finally:
        await first.close()
        await second.close()
    assert await recorded(empty_database) == MIGRATIONS


def run_migrate(database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat", "migrate"],
        env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_migrate_command_twice_applies_once(empty_database: str, tmp_path: Path) -> None:
    """`python -m chat migrate` applies every migration, then finds nothing to do."""
    first = await asyncio.to_thread(run_migrate, empty_database, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"migrated: {len(MIGRATIONS)} applied" in first.stdout
    second = await asyncio.to_thread(run_migrate, empty_database, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "migrated: 0 applied" in second.stdout
    assert await recorded(empty_database) == MIGRATIONS


def test_the_project_sql_loads() -> None:
    """sql/ parses: numbered migrations from 0001 and named queries."""
    assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert "insert_message" in load_queries()


def test_parse_queries_splits_named_blocks() -> None:
    """Each `-- name:` block becomes one query, without its trailing semicolon."""
    text = "-- Users.\n\n-- name: one\nSELECT 1;\n\n-- name: two\n-- why\nSELECT 2\n"
    assert parse_queries(text) == {"one": "SELECT 1", "two": "-- why\nSELECT 2"}


def test_parse_queries_refuses_a_duplicate_name() -> None:
    """A name defined twice in one file is an error naming it and the file."""
    text = "-- name: same\nSELECT 1;\n-- name: same\nSELECT 2;\n"
    with pytest.raises(RuntimeError, match=r"users\.sql: query 'same' is defined twice"):
        parse_queries(text, "users.sql")


def test_parse_queries_refuses_sql_without_a_name() -> None:
    """SQL above the first `-- name:` line would be lost, so it is an error."""
    with pytest.raises(RuntimeError, match=r"rooms\.sql: SQL before the first `-- name:`"):
        parse_queries("SELECT 0;\n-- name: one\nSELECT 1;\n", "rooms.sql")


def test_load_queries_refuses_a_name_in_two_files(tmp_path: Path) -> None:
    """The same query name in two files is an error naming the second file."""
    (tmp_path / "a.sql").write_text("-- name: shared\nSELECT 1;\n", encoding="utf-8")
    (tmp_path / "b.sql").write_text("-- name: shared\nSELECT 2;\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"b\.sql: query 'shared' is defined in two files"):
        load_queries(tmp_path)


def test_a_missing_query_name_fails_at_lookup(tmp_path: Path) -> None:
    """Looking up a name no file defines raises KeyError (store.py does it at import)."""
    (tmp_path / "a.sql").write_text("-- name: present\nSELECT 1;\n", encoding="utf-8")
    queries = load_queries(tmp_path)
    with pytest.raises(KeyError, match="absent"):
        queries["absent"]


def test_migrations_refuse_a_gap(tmp_path: Path) -> None:
    """A missing migration number (0001, 0003) is an error naming where the sequence breaks."""
    (tmp_path / "0001_init.sql").write_text("SELECT 1;", encoding="utf-8")
    (tmp_path / "0003_later.sql").write_text("SELECT 3;", encoding="utf-8")
    with pytest.raises(RuntimeError, match="0003_later breaks the sequence at 2"):
        migrations(tmp_path)


def test_migrations_refuse_a_duplicate_number(tmp_path: Path) -> None:
    """Two migrations with one number are an error."""
    (tmp_path / "0001_init.sql").write_text("SELECT 1;", encoding="utf-8")
    (tmp_path / "0001_other.sql").write_text("SELECT 1;", encoding="utf-8")
    with pytest.raises(RuntimeError, match="breaks the sequence"):
        migrations(tmp_path)


def test_migrations_refuse_a_badly_named_file(tmp_path: Path) -> None:
    """A migration file not named NNNN_name.sql is an error naming it."""
    (tmp_path / "0001_init.sql").write_text("SELECT 1;", encoding="utf-8")
    (tmp_path / "2-Oops.sql").write_text("SELECT 2;", encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"2-Oops\.sql: migrations are named NNNN_name\.sql"):
        migrations(tmp_path)


async def test_an_installed_wheel_finds_its_sql(tmp_path: Path, empty_database: str) -> None:
    """A wheel built from the repo, installed outside the checkout, migrates with its own SQL."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    await asyncio.to_thread(
        subprocess.run, [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True
    )
    (wheel,) = wheels.glob("chat-*.whl")
    await asyncio.to_thread(
        subprocess.run, [*pip, "install", "--no-deps", "-t", str(target), str(wheel)], check=True
    )
    # PYTHONPATH comes before the editable install's finder: this runs the wheel's copy.
    env = {**os.environ, "PYTHONPATH": str(target), "DATABASE_URL": empty_database}
    where = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import chat.sql as s; print(s.sql_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(target / "chat" / "sqlfiles")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "chat", "migrate"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert await recorded(empty_database) == MIGRATIONS
