"""Search benchmark (issue #14): query latency on a million messages, and the index's cost to sends.

`python -m bench.search` creates a database of its own on the local PostgreSQL
(`chat_bench_search_<random>`, dropped at the end unless `--keep`), and:

1. migrates it, then takes the search column and index off again: the schema
   of before the search migration;
2. seeds `--messages` messages over `--rooms` rooms with one `COPY` per chunk:
   bodies of 3-30 words drawn from a Zipf-like vocabulary (a few real English
   function words on top, then made-up words, rank r drawn with weight 1/r);
   five members per room, and one user, the searcher, in every tenth room;
3. `--rounds` times: measures the send path (the server's own
   `Store.insert_message`, group commit included, `--concurrency` senders)
   without the search column and index, applies
   `sql/migrations/0003_search.sql` to the seeded table (timed: what the
   migration costs an existing deployment), and measures the send path with
   them; a CHECKPOINT before each measurement;
4. searches, each case `--repeat` times through `chat.search.search` (the use
   case the HTTP route calls: membership, query building, SQL, highlights),
   first page of 20: a rare word, a common word, a phrase, a prefix, a
   medium-frequency word, and one room (common, rare, medium word);
5. takes the column and index off again and measures the send path once more,
   so that "without" brackets "with" in one run on a shared machine.

Results go to `bench/out/search-<time>.json` (ignored by git) and a summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from chat import migrate
from chat.accounts import hash_token
from chat.config import Settings
from chat.protocol import User
from chat.search import search
from chat.sql import sql_dir
from chat.store import Store

ADMIN_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
OUT = Path(__file__).resolve().parent / "out"
# The words every English chat is made of, most frequent first; the made-up words follow.
TOP_WORDS = (
    "the i to a you and it is of that in for on me we be have no so not this just "
    "but with what do are at was can if my all get like know ok your yes go up"
).split()
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["qu", "sh", "th", "ch"]
DROP_SEARCH = (
    "DROP INDEX IF EXISTS messages_search_idx; ALTER TABLE messages DROP COLUMN IF EXISTS tsv"
)


def db_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = list(TOP_WORDS)
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Corpus:
    """The bodies' vocabulary and the rank-weighted draw of words."""

    def __init__(self, size: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(size, self.rng)
        weights = [1 / rank for rank in range(1, size + 1)]
        total = 0.0
        self.cum: list[float] = []
        for w in weights:
            total += w
            self.cum.append(total)

    def body(self) -> str:
        n = self.rng.randint(3, 30)
        words = self.rng.choices(self.words, cum_weights=self.cum, k=n)
        if self.rng.random() < 0.3:
            words[0] = words[0].capitalize()
        return " ".join(words)


async def seed(
    conn: asyncpg.Connection, args: argparse.Namespace, corpus: Corpus
) -> dict[str, Any]:
    """Users, rooms, memberships and messages; returns the searcher and the rooms."""
    rng = random.Random(args.seed)
    users = await conn.fetch(
        "INSERT INTO users (username, password_hash) "
        "SELECT 'user' || i, 'x' FROM generate_series(1, $1) i RETURNING id",
        args.users,
    )
    user_ids = [r["id"] for r in users]
    searcher = user_ids[0]
    rooms = await conn.fetch(
        "INSERT INTO rooms (name, created_by) SELECT 'room ' || i, $2 "
        "FROM generate_series(1, $1) i RETURNING id",
        args.rooms,
        searcher,
    )
    room_ids = [r["id"] for r in rooms]
    # Five members per room among the other users; the searcher in every tenth room.
    members: dict[int, list[int]] = {}
    for i, room in enumerate(room_ids):
        others = [user_ids[1 + (i * 5 + k) % (len(user_ids) - 1)] for k in range(5)]
        members[room] = others + ([searcher] if i % 10 == 0 else [])
    await conn.copy_records_to_table(
        "members",
        records=[(room, user) for room, us in members.items() for user in us],
        columns=["room_id", "user_id"],
    )
    seqs = dict.fromkeys(room_ids, 0)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=365)
    step = dt.timedelta(days=365) / args.messages
    started = time.perf_counter()
    done = 0
    while done < args.messages:
        chunk = []
        for i in range(done, min(done + args.chunk, args.messages)):
            room = rng.choice(room_ids)
            seqs[room] += 1
            sender = rng.choice(members[room][:5])
            chunk.append((room, seqs[room], sender, corpus.body(), start + step * i))
        await conn.copy_records_to_table(
            "messages",
            records=chunk,
            columns=["room_id", "seq", "sender_id", "body", "created_at"],
        )
        done += len(chunk)
        print(f"seeded {done} messages ({time.perf_counter() - started:.0f} s)", flush=True)
    await conn.executemany("UPDATE rooms SET last_seq = $2 WHERE id = $1", list(seqs.items()))
    await conn.execute("VACUUM ANALYZE")
    return {
        "searcher": searcher,
        "rooms": room_ids,
        "member_rooms": [r for r, us in members.items() if searcher in us],
        "members": members,
        "seconds": time.perf_counter() - started,
    }


async def ingest(
    store: Store,
    users: dict[int, User],
    members: dict[int, list[int]],
    corpus: Corpus,
    total: int,
    concurrency: int,
) -> dict[str, Any]:
    """Messages a second through the send path, `concurrency` senders at once."""
    rooms = list(members)
    rng = random.Random(7)
    jobs = [(rng.choice(rooms), corpus.body()) for _ in range(total)]
    queue = iter(jobs)

    async def sender() -> None:
        for room, body in queue:
            user = users[members[room][0]]
            result = await store.insert_message(room, user, body, None)
            assert result is not None

    cpu_before = await backend_cpu(store)
    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu_after = await backend_cpu(store)
    cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
    return {
        "messages": total,
        "seconds": round(seconds, 2),
        "per_second": round(total / seconds),
        # CPU of the PostgreSQL backends that stored them, per message: unlike the
        # rate, it hardly moves with what else runs on the machine.
        "pg_cpu_us_per_message": round(cpu / total * 1e6, 1),
    }


class Server:
    """A `python -m chat serve` process on the bench database, and session tokens for its users."""

    def __init__(self, proc: asyncio.subprocess.Process, base: str, tokens: dict[int, str]) -> None:
        # The server process, its base URL, and a bearer token per user id.
        self.proc = proc
        self.base = base
        self.tokens = tokens

    @classmethod
    async def start(cls, url: str, conn: asyncpg.Connection) -> Server:
        tokens = {
            r["id"]: secrets.token_urlsafe(24) for r in await conn.fetch("SELECT id FROM users")
        }
        await conn.copy_records_to_table(
            "sessions",
            records=[(hash_token(t), uid, False) for uid, t in tokens.items()],
            columns=["token_hash", "user_id", "expires_idle"],
        )
        port = 20000 + secrets.randbelow(20000)
        env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "CHAT_ENV": "development"}
        env.pop("REDIS_URL", None)  # one process: the in-memory broker
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http, asyncio.timeout(60):
            while True:  # a benchmark may poll: the server says nothing else when it is up
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        return cls(proc, base, tokens)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) or 0.0

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()


async def ingest_http(
    store: Store,
    server: Server,
    members: dict[int, list[int]],
    corpus: Corpus,
    total: int,
    concurrency: int,
) -> dict[str, Any]:
    """Messages a second through the server's HTTP send path, `concurrency` requests at once."""
    rng = random.Random(7)
    rooms = list(members)
    queue = iter([(rng.choice(rooms), corpus.body()) for _ in range(total)])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as http:

        async def sender() -> None:
            for room, body in queue:
                token = server.tokens[members[room][0]]
                r = await http.post(
                    f"/api/rooms/{room}/messages",
                    json={"body": body},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 201, r.text

        cpu_before = server.cpu()
        pg_before = await backend_cpu(store)
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    pg_after = await backend_cpu(store)
    pg = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items())
    return {
        "messages": total,
        "seconds": round(seconds, 2),
        "per_second": round(total / seconds),
        "server_cpu_us_per_message": round((server.cpu() - cpu_before) / total * 1e6, 1),
        "pg_cpu_us_per_message": round(pg / total * 1e6, 1),
    }


async def backend_cpu(store: Store) -> dict[int, float]:
    """CPU seconds (user + system) so far of each backend serving this database."""
    async with store.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    out = {}
    for row in rows:
        seconds = proc_cpu(row["pid"])
        if seconds is not None:  # None: not on this machine, or gone
            out[row["pid"]] = seconds
    return out


def proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_ingest(
    report: dict[str, Any],
    kind: str,
    store: Store,
    users: dict[int, User],
    members: dict[int, list[int]],
    corpus: Corpus,
    args: argparse.Namespace,
) -> None:
    # Each round starts from a checkpoint: none pays for the previous one's dirty pages.
    async with store.pool.acquire() as conn:
        await conn.execute("CHECKPOINT")
    if args.server is not None:
        result = await ingest_http(
            store, args.server, members, corpus, args.sends, args.concurrency
        )
        result["path"] = "HTTP POST /api/rooms/{id}/messages, one server process"
    else:
        result = await ingest(store, users, members, corpus, args.sends, args.concurrency)
        result["path"] = "Store.insert_message"
    result["load"] = load()
    report["ingest"][kind].append(result)
    print(f"ingest {kind} index", result, flush=True)


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, Any]:
    samples = []
    found = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        samples.append((time.perf_counter() - started) * 1000)
        found = len(result)
    samples.sort()
    return {
        "runs": repeat,
        "results": found,
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2),
        "max_ms": round(samples[-1], 2),
    }


def word_counts(corpus: Corpus) -> list[str]:
    return corpus.words


async def searches(
    store: Store, searcher: User, seeded: dict[str, Any], corpus: Corpus, repeat: int
) -> dict[str, Any]:
    words = corpus.words
    rng = random.Random(11)
    # Rare: ranks near the tail, a few dozen messages each in the whole table.
    rare = [words[r] for r in rng.sample(range(len(words) * 3 // 5, len(words)), repeat)]
    common = words[0]  # "the": in about two messages of three
    phrase = f'"{words[2]} {words[3]}"'  # two frequent words next to each other
    prefix = words[150][:3] + "*"
    medium = words[70]  # in about one message of fifty
    room = seeded["member_rooms"][0]
    cases: dict[str, Callable[[], Awaitable[Any]]] = {}
    rare_iter = iter(rare * 2)
    cases["rare word"] = lambda: search(store, searcher, next(rare_iter), None, None, 20)
    cases["common word"] = lambda: search(store, searcher, common, None, None, 20)
    cases["phrase"] = lambda: search(store, searcher, phrase, None, None, 20)
    cases["prefix"] = lambda: search(store, searcher, prefix, None, None, 20)
    cases["medium word"] = lambda: search(store, searcher, medium, None, None, 20)
    cases["one room, common word"] = lambda: search(store, searcher, common, room, None, 20)
    rare_room = iter(rare * 2)
    cases["one room, rare word"] = lambda: search(store, searcher, next(rare_room), room, None, 20)
    cases["one room, medium word"] = lambda: search(store, searcher, medium, room, None, 20)
    results: dict[str, Any] = {
        "queries": {
            "rare": [*rare[:3], "..."],
            "common": common,
            "phrase": phrase,
            "prefix": prefix,
            "medium": medium,
            "room": room,
        }
    }
    for name, run in cases.items():
        await run()  # warm: the first run pays for reading the index pages from disk
        results[name] = await timed(run, repeat)
        print(f"{name:24} {results[name]}", flush=True)
    return results


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def load() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = args.database or f"chat_bench_search_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    if not args.database:
        await admin.execute(f'CREATE DATABASE "{name}"')
    report: dict[str, Any] = {
        "command": "python -m bench.search " + " ".join(args.argv),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load()},
        "commit": git_commit(),
        "ingest": {"without": [], "with": []},
        "migration_seconds": [],
    }
    try:
        url = db_url(name)
        conn = await asyncpg.connect(url)
        report["postgresql"] = await conn.fetchval("SELECT version()")
        corpus = Corpus(args.vocabulary, args.seed)
        if not args.database:
            await migrate.migrate(conn)
            await conn.execute(DROP_SEARCH)
            seeded = await seed(conn, args, corpus)
            report["seed_seconds"] = round(seeded.pop("seconds"), 1)
        else:
            seeded = await reread(conn)
        members = seeded["members"]
        rows = await conn.fetch("SELECT id, username, bot FROM users")
        users = {r["id"]: User(r["id"], r["username"], r["bot"]) for r in rows}
        store = await Store.connect(Settings(database_url=url), run_migrations=False)
        args.server = await Server.start(url, conn) if args.http else None
        try:
            has_tsv = await conn.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'messages'::regclass "
                "AND attname = 'tsv' AND NOT attisdropped"
            )
            if not has_tsv:
                migration = (sql_dir() / "migrations" / "0003_search.sql").read_text()
                for round_ in range(1, args.rounds + 1):
                    if round_ > 1:
                        await conn.execute(DROP_SEARCH)
                    await measure_ingest(report, "without", store, users, members, corpus, args)
                    started = time.perf_counter()
                    await conn.execute(migration)
                    report["migration_seconds"].append(round(time.perf_counter() - started, 1))
                    print("migration", report["migration_seconds"][-1], "s", flush=True)
                    await conn.execute("VACUUM ANALYZE messages")
                    await measure_ingest(report, "with", store, users, members, corpus, args)
            report["sizes"] = {
                r["name"]: r["size"]
                for r in await conn.fetch(
                    "SELECT c.relname AS name, pg_size_pretty(pg_relation_size(c.oid)) AS size "
                    "FROM pg_class c WHERE c.relname = 'messages' OR c.oid IN "
                    "(SELECT indexrelid FROM pg_index WHERE indrelid = 'messages'::regclass)"
                )
            }
            report["load_before_searches"] = load()
            report["searches"] = await searches(
                store, users[seeded["searcher"]], seeded, corpus, args.repeat
            )
            if not args.database:
                await conn.execute(DROP_SEARCH)
                await measure_ingest(report, "without", store, users, members, corpus, args)
        finally:
            if args.server is not None:
                await args.server.stop()
            await store.close()
            await conn.close()
    finally:
        if not args.keep and not args.database:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        await admin.close()
    report["load_after"] = load()
    if report["ingest"]["with"] and report["ingest"]["without"]:
        rates = {
            k: statistics.mean(r["per_second"] for r in v) for k, v in report["ingest"].items()
        }
        report["ingest_rate_cost_percent"] = round((1 - rates["with"] / rates["without"]) * 100, 1)
        cpu = {
            k: statistics.mean(r["pg_cpu_us_per_message"] for r in v)
            for k, v in report["ingest"].items()
        }
        report["ingest_pg_cpu_cost_percent"] = round((cpu["with"] / cpu["without"] - 1) * 100, 1)
    return report


async def reread(conn: asyncpg.Connection) -> dict[str, Any]:
    """The seeded layout of a kept database (`--database`): searcher, rooms, members."""
    searcher = await conn.fetchval("SELECT min(id) FROM users")
    members: dict[int, list[int]] = {}
    for r in await conn.fetch("SELECT room_id, user_id FROM members ORDER BY room_id, user_id"):
        members.setdefault(r["room_id"], []).append(r["user_id"])
    for room, us in members.items():
        members[room] = [u for u in us if u != searcher] + ([searcher] if searcher in us else [])
    return {
        "searcher": searcher,
        "rooms": list(members),
        "members": members,
        "member_rooms": [r for r, us in members.items() if searcher in us],
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--vocabulary", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=50_000, help="messages per COPY")
    parser.add_argument("--sends", type=int, default=30_000, help="messages per ingest round")
    parser.add_argument("--concurrency", type=int, default=64, help="senders at once")
    parser.add_argument("--repeat", type=int, default=100, help="runs per search case")
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds without, with")
    parser.add_argument(
        "--http", action="store_true", help="send through a server process's HTTP API"
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--database", help="search a kept database again (no seeding, no ingest)")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    report = asyncio.run(main(args))
    OUT.mkdir(exist_ok=True)
    path = OUT / f"search-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    print(f"written to {path}")


if __name__ == "__main__":
    cli()
