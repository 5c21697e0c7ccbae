"""What the conversation insert statements would cost a plain message.

`python -m bench.insert_plain` (the PostgreSQL server of DATABASE_URL, or the
local default): on a scratch database, rounds of 30 group-commit batches of 50
plain messages over 10 rooms plus 300 single sends, through the plain
statements (`insert_messages_plain`, `insert_message_plain`) and through the
conversation ones (`insert_messages`, `insert_message`, with no thread and no
mention), alternating which goes first. Prints the median wall-clock time per
round of each. It is why plain messages keep statements of their own
(sql/queries/messages.sql).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from chat.config import Settings
from chat.sql import QUERIES
from chat.store import Store

ADMIN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROUNDS = 12
BATCHES = 30
BATCH = 50
SINGLES = 10


def _db(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN)._replace(path="/" + name))


async def _round(conn: asyncpg.Connection, rooms: list[int], user: int, plain: bool) -> float:
    """One round through the plain or the conversation statements; its seconds."""
    started = time.perf_counter()
    extra: list[list[object]] = [[None] * BATCH, [None] * BATCH, [False] * BATCH]
    for k in range(BATCHES):
        in_rooms = [rooms[(k + j) % len(rooms)] for j in range(BATCH)]
        columns = [in_rooms, [user] * BATCH, [f"hello {k} {j}" for j in range(BATCH)]]
        columns.append([None] * BATCH)
        async with conn.transaction():
            await conn.execute(QUERIES["lock_rooms"], sorted(set(in_rooms)))
            if plain:
                await conn.fetch(QUERIES["insert_messages_plain"], *columns)
            else:
                await conn.fetch(QUERIES["insert_messages"], *columns, *extra)
        for room in rooms[:SINGLES]:
            if plain:
                await conn.fetchrow(QUERIES["insert_message_plain"], room, user, "one", None)
            else:
                await conn.fetchrow(
                    QUERIES["insert_message"], room, user, "one", None, None, None, False
                )
    return time.perf_counter() - started


async def main() -> None:
    admin = await asyncpg.connect(ADMIN)
    name = "chat_bench_plain_" + secrets.token_hex(3)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        store = await Store.connect(Settings(database_url=_db(name)))
        user = await store.create_user("benchplain", "not-a-hash")
        rooms = [(await store.create_room(f"r{i}", False, user.id)).id for i in range(10)]
        await store.close()
        conn = await asyncpg.connect(_db(name))
        try:
            times: dict[str, list[float]] = {"plain": [], "conversation": []}
            for n in range(ROUNDS):
                order = (True, False) if n % 2 == 0 else (False, True)
                for plain in order:
                    spent = await _round(conn, rooms, user.id, plain)
                    times["plain" if plain else "conversation"].append(spent)
        finally:
            await conn.close()
        for kind, spent in times.items():
            print(f"{kind}: median {statistics.median(spent):.4f} s per round")
        ratio = statistics.median(times["conversation"]) / statistics.median(times["plain"])
        print(f"conversation / plain: {ratio:.3f}")
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
