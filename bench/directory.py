"""The room directory on 100,000 rooms: which index serves each query, and how fast.

    .venv/bin/python -m bench.directory            # DATABASE_URL names the server

Creates the `chat_bench_directory` database afresh, migrates it with sql/migrations,
fills it with 100,000 rooms (90% public, 5% private, 5% DMs; member counts skewed like
real rooms: most small, a few large), runs ANALYZE, then EXPLAIN (ANALYZE, BUFFERS)
of the directory's queries exactly as store.py runs them: without q, with a rare q,
a common q and a one-letter q; then times each as store.py runs it (prepared, custom
plans). The plans and times go to bench/out/directory.txt.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from chat import migrate
from chat.moderation import like_pattern
from chat.sql import QUERIES

ROOMS = 100_000
DB_NAME = "chat_bench_directory"
OUT = Path(__file__).parent / "out" / "directory.txt"
ADMIN_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

FILL = """
INSERT INTO users (username, password_hash) VALUES ('bench_owner', 'x'), ('bench_other', 'x');
INSERT INTO rooms (name, topic, private, created_by, dm_key, member_count)
SELECT 'room '
           || (ARRAY['general', 'random', 'python', 'rust',
                     'music', 'games', 'news', 'jobs'])[1 + g % 8]
           || ' ' || md5(g::text),
       CASE WHEN g % 3 = 0 THEN 'talk about ' || md5((g * 7)::text) ELSE '' END,
       g % 20 = 1,
       1,
       CASE WHEN g % 20 = 2 THEN '1:' || g END,
       -- skewed: most rooms have a handful of members, a few thousands
       greatest(1, floor(power(random(), 8) * 5000))::int
FROM generate_series(1, $1::int) AS g;
ANALYZE rooms;
"""


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def main() -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_database(ADMIN_URL, DB_NAME))
    lines: list[str] = []
    try:
        await migrate.migrate(conn)
        started = time.perf_counter()
        # The trigger keeps member_count for real members; the bench sets it directly.
        await conn.execute(FILL.replace("$1::int", str(ROOMS)))
        lines.append(f"{ROOMS} rooms filled in {time.perf_counter() - started:.1f} s")
        version = await conn.fetchval("SELECT version()")
        lines.append(f"{version}\n")
        cases: list[tuple[str, str, list[object]]] = [
            ("no q, limit 50", QUERIES["directory"], [50]),
            ("rare q (one room's hash)", QUERIES["directory_search"], [None, 50]),
            ("common q 'python'", QUERIES["directory_search"], [like_pattern("python"), 50]),
            ("one-letter q 'a'", QUERIES["directory_search"], [like_pattern("a"), 50]),
            ("q matching nothing", QUERIES["directory_search"], [like_pattern("zzzqqq"), 50]),
        ]
        rare = await conn.fetchval(
            "SELECT substr(name, 20, 8) FROM rooms WHERE NOT private AND dm_key IS NULL "
            "ORDER BY id DESC LIMIT 1"
        )
        for title, query, args in cases:
            if args[0] is None:
                args = [like_pattern(rare), *args[1:]]
            # Twice: the first run warms the cache; the second is the one reported.
            for _ in range(2):
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query, *args)
            lines.append(f"== {title}: {args[0]!r}")
            lines += [r[0] for r in rows]
            lines.append("")
        # As store.py runs it: a prepared statement, custom plans forced for the search.
        lines.append("== as the server runs them (prepared, 20 runs each): median, max ms")
        for q in ("", "python", "a", rare, "zzzqqq", "x", "zq"):
            took = []
            for _ in range(20):
                started = time.perf_counter()
                if not q:
                    await conn.fetch(QUERIES["directory"], 50)
                else:
                    async with conn.transaction():
                        await conn.execute(QUERIES["custom_plans"])
                        await conn.fetch(QUERIES["directory_search"], like_pattern(q), 50)
                took.append((time.perf_counter() - started) * 1000)
            took.sort()
            lines.append(f"q={q!r:12} {took[10]:8.2f} {took[-1]:8.2f}")
    finally:
        await conn.close()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
