"""`python -m bench.run SCENARIO [options]`: one scenario end to end.

It resets the bench database and Redis keys, starts two server processes of
the target (PostgreSQL and Redis shared, like the Procfile's `web:` line twice),
creates the accounts and rooms through the HTTP API, starts the generator
workers (bench/worker.py), runs the open-loop steps, checks every delivery and
(for our server) PostgreSQL, and writes bench/out/<scenario>-<target>-<time>.json.
See bench/README.md for the scenarios and options.

`chat-cluster` is our server with `REDIS_CLUSTER=true` on a private 3-master
Redis Cluster started for the run (bench/servers.py); `cluster` runs the hot
room (S2) on `chat` and `chat-cluster` in one run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench.common import (
    decode_hist,
    hist_summary,
    machine,
    machine_busy,
    new_hist,
    proc_cpu_seconds,
    proc_rss_kib,
    tcp_mem_kib,
)
from bench.servers import (
    PROTOCOL,
    ROOT,
    TARGETS,
    WS_PATH,
    BenchCluster,
    Server,
    chat_servers,
    peer_servers,
)

RESULTS = ROOT / "bench" / "out"
PASSWORD = "bench-password-1"
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("BENCH_DB", "chat_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "bench")

# name: (rooms, members per room, rates (messages/s), seconds per step, stop rule)
SCENARIOS: dict[str, dict[str, Any]] = {
    "S0": {"rooms": 100, "members": 100, "levels": "1000,5000,10000", "rates": ""},
    "S1": {"rooms": 200, "members": 10, "rates": "500,1000,2000", "step_seconds": 10},
    "S2": {
        "rooms": 1,
        "members": 1000,
        "rates": "5,10,20,30,40,50,60,80,100,120,150,200",
        "step_seconds": 5,
        "stop_p99_ms": 250,
    },
    "S3": {
        "rooms": 1,
        "members": 1000,
        "rates": "10,20",
        "step_seconds": 15,
        "slow_fraction": 0.01,
    },
    "S4": {
        "rooms": 500,
        "members": 1,
        "rates": "250,500,750,1000,1250,1500,2000,3000,5000,10000",
        "step_seconds": 5,
        "stop_ack_p99_ms": 20,
    },
}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(text: str) -> None:
    print(text, flush=True)


def server_version() -> dict[str, Any]:
    """The commit the servers ran from, and chat/ files changed on top of it (shared tree)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "chat_changes_not_committed": git("status", "--porcelain", "chat").splitlines(),
    }


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the backing services -------------------------------------------------------


def db_url(name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))


async def reset_database() -> None:
    import asyncpg

    if DB_NAME in ("test", "postgres") or not DB_NAME.startswith(("chat_bench", "bench")):
        raise SystemExit(f"refusing to reset database {DB_NAME!r}")
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()


async def reset_redis() -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=f"{PREFIX}*", count=1000)]
        for i in range(0, len(keys), 500):
            await r.delete(*keys[i : i + 500])
    finally:
        await r.aclose()


async def postgres_pids() -> list[int]:
    """The PostgreSQL backends serving the bench database (their CPU is the server's too)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(db_url(DB_NAME))
    except Exception:
        return []
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            DB_NAME,
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def postgres_commits() -> int:
    """Transactions committed in the bench database so far (pg_stat_database.xact_commit)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(db_url(DB_NAME))
    except Exception:
        return 0
    try:
        return int(
            await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", DB_NAME
            )
            or 0
        )
    finally:
        await conn.close()


async def redis_cpu(urls: list[str] | None = None) -> float:
    """CPU seconds used so far by the Redis server(s): every node of a cluster, summed."""
    import redis.asyncio as aioredis

    total = 0.0
    for url in urls or [REDIS_URL]:
        r = aioredis.Redis.from_url(url)
        try:
            info = await r.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        finally:
            await r.aclose()
    return total


# -- accounts and rooms through the HTTP API -------------------------------------


async def create_accounts(
    servers: list[Server], n: int, mode: str, run_id: str
) -> tuple[list[str], str]:
    """n tokens (users signed up and logged in, or bots of one owner) and the owner's token.

    Through the SDK's `HttpApi`, one per server process, used round robin.
    """
    from chat.client import HttpApi

    apis = [HttpApi(s.http, timeout=60) for s in servers]
    sem = asyncio.Semaphore(32)
    try:

        async def signup(i: int) -> str:
            name = f"b{run_id}u{i}"
            async with sem, HttpApi(servers[i % len(servers)].http, timeout=60) as api:
                await api.sign_up(name, PASSWORD)
                return (await api.log_in(name, PASSWORD)).token

        owner = await signup(0)
        if mode == "signup":
            tokens = await asyncio.gather(*(signup(i) for i in range(1, n + 1)))
            return list(tokens), owner
        for api in apis:
            api.token = owner

        async def bot(i: int) -> str:
            async with sem:
                made = await apis[i % len(apis)].create_bot(f"b{run_id}bot{i}")
                return made.token

        tokens = await asyncio.gather(*(bot(i) for i in range(1, n + 1)))
        return list(tokens), owner
    finally:
        for api in apis:
            await api.aclose()


async def create_rooms(server: Server, owner: str, n: int, run_id: str) -> list[int]:
    from chat.client import HttpApi

    async with HttpApi(server.http, owner, timeout=60) as api:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> int:
            async with sem:
                return (await api.create_room(f"bench {run_id} {i}")).id

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def verify_database(rooms: list[int], acked_by_room: dict[int, int]) -> dict[str, Any]:
    """Every acknowledged send is stored once, seqs 1..N with no gap, per room."""
    import asyncpg

    conn = await asyncpg.connect(db_url(DB_NAME))
    try:
        rows = await conn.fetch(
            """
            SELECT r.id, r.last_seq, count(m.id) AS n, coalesce(min(m.seq), 0) AS lo,
                   coalesce(max(m.seq), 0) AS hi, count(DISTINCT m.seq) AS distinct_seqs
            FROM rooms r LEFT JOIN messages m ON m.room_id = r.id
            WHERE r.id = ANY($1::bigint[]) GROUP BY r.id
            """,
            rooms,
        )
    finally:
        await conn.close()
    problems = []
    stored = 0
    last_seq: dict[int, int] = {}
    for r in rows:
        n = r["n"]
        stored += n
        last_seq[r["id"]] = r["last_seq"]
        ok = (
            n == r["last_seq"] == r["hi"] == r["distinct_seqs"]
            and (n == 0 or r["lo"] == 1)
            and n == acked_by_room.get(r["id"], 0)
        )
        if not ok:
            problems.append({k: r[k] for k in r.keys()} | {"acked": acked_by_room.get(r["id"], 0)})
    return {
        "rooms_checked": len(rows),
        "messages_stored": stored,
        "messages_acked": sum(acked_by_room.values()),
        "problems": problems[:20],
        "ok": not problems and len(rows) == len(rooms),
        "last_seq": last_seq,
    }


# -- the generator workers ------------------------------------------------------


@dataclass
class WorkerProc:
    index: int
    proc: asyncio.subprocess.Process
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    progress: dict[str, Any] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"ev": "eof"})
                return
            try:
                ev = json.loads(line)
            except ValueError:
                sys.stderr.write(f"worker {self.index}: {line.decode(errors='replace')}")
                continue
            if ev.get("ev") == "progress":
                self.progress = ev
            else:
                await self.events.put(ev)

    async def expect(self, name: str, timeout: float = 120) -> dict[str, Any]:
        while True:
            ev = await asyncio.wait_for(self.events.get(), timeout)
            if ev.get("ev") == name:
                return ev
            if ev.get("ev") == "eof":
                raise RuntimeError(f"worker {self.index} exited (waiting for {name})")


async def start_workers(
    specs: list[list[Any]], n: int, target: str, args: argparse.Namespace, gid_offset: int = 0
) -> list[WorkerProc]:
    chunks: list[list[list[Any]]] = [[] for _ in range(n)]
    for i, spec in enumerate(specs):
        chunks[i % n].append(spec)
    workers = []
    for i, chunk in enumerate(chunks):
        argv = [sys.executable, "-m", "bench.worker"]
        if args.worker_cpus:
            argv = ["taskset", "-c", args.worker_cpus, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            limit=1 << 28,
        )
        w = WorkerProc(i + gid_offset // 1_000_000, proc)
        w.reader = asyncio.create_task(w.read())
        cfg = {
            "worker": i,
            "target": PROTOCOL[target],
            "client": args.client,
            "gid_base": gid_offset + i * 100_000 + 1,
            "body_size": args.body_size,
            "conns": chunk,
            "mode": args.mode,
            "connect_concurrency": args.connect_concurrency,
            "slow_rcvbuf": args.slow_rcvbuf,
        }
        await w.send(cfg)
        workers.append(w)
    return workers


async def stop_workers(workers: list[WorkerProc]) -> None:
    for w in workers:
        if w.proc.returncode is None:
            try:
                await w.send({"cmd": "quit"})
            except (BrokenPipeError, ConnectionResetError):
                pass
    for w in workers:
        try:
            await asyncio.wait_for(w.proc.wait(), 10)
        except TimeoutError:
            w.proc.kill()
            await w.proc.wait()


# -- one run --------------------------------------------------------------------


class Run:
    """One scenario against one target: servers, accounts, workers, steps, checks."""

    def __init__(self, scenario: str, target: str, args: argparse.Namespace, repeat: int) -> None:
        self.scenario = scenario
        self.target = target
        self.args = args
        self.repeat = repeat
        self.run_id = f"{int(time.time()) % 100000:05d}{random.randint(0, 99):02d}"
        self.servers: list[Server] = []
        self.workers: list[WorkerProc] = []
        self.rooms: list[int] = []
        self.members: dict[int, int] = {}
        self.result: dict[str, Any] = {}
        self.samples: list[dict[str, Any]] = []
        self.monitor_task: asyncio.Task[None] | None = None
        self.redis_prefix = f"{PREFIX}{self.run_id}"
        # Our server (on one Redis, or on a Redis Cluster): accounts, database checks.
        self.is_chat = target in ("chat", "chat-cluster")
        # The private Redis Cluster of a `chat-cluster` run.
        self.cluster: BenchCluster | None = None

    # -- set-up -------------------------------------------------------------

    async def start_servers(self) -> None:
        if self.is_chat:
            await reset_database()
            await reset_redis()
            env = dict(kv.split("=", 1) for kv in self.args.server_env)
            redis_url = REDIS_URL
            if self.target == "chat-cluster":
                self.cluster = BenchCluster(masters=3, cpus=self.args.server_cpus)
                await self.cluster.start()
                redis_url = self.cluster.url
                env["REDIS_CLUSTER"] = "true"
            self.servers = chat_servers(
                db_url(DB_NAME), redis_url, self.redis_prefix, env, self.args.server_cpus
            )
        else:
            self.servers = peer_servers(
                self.target, REDIS_URL, self.redis_prefix, self.args.server_cpus
            )
        for s in self.servers:
            await s.start()
        # Let the processes finish importing and settle before the baseline.
        await asyncio.sleep(1.0)

    def ws_url(self, i: int) -> str:
        s = self.servers[i % len(self.servers)]
        return f"ws://127.0.0.1:{s.port}{WS_PATH[self.target]}"

    async def make_specs(
        self, rooms: int, members: int, slow_fraction: float, start_index: int = 0
    ) -> list[list[Any]]:
        """[url, token, room, sender, slow] for every connection, half of each room per process."""
        n = rooms * members
        if self.is_chat:
            mode = self.args.accounts or ("signup" if n <= 2500 else "bots")
            t = time.monotonic()
            say(f"  creating {n} accounts ({mode}) and {rooms} rooms ...")
            tokens, owner = await create_accounts(
                self.servers, n, mode, f"{self.run_id}x{start_index}"
            )
            if not self.rooms or start_index:
                self.rooms += await create_rooms(self.servers[0], owner, rooms, self.run_id)
            room_ids = self.rooms[-rooms:]
            say(f"  accounts and rooms in {time.monotonic() - t:.1f} s")
            self.result.setdefault("setup", {})["accounts"] = {
                "mode": mode,
                "n": n,
                "seconds": round(time.monotonic() - t, 1),
            }
        else:
            tokens = [None] * n  # type: ignore[list-item]
            base = len(self.rooms)
            room_ids = list(range(base + 1, base + rooms + 1))
            self.rooms += room_ids
        slow_every = round(1 / slow_fraction) if slow_fraction else 0
        specs = []
        for r, room in enumerate(room_ids):
            for m in range(members):
                i = r * members + m
                slow = bool(slow_every) and (i % slow_every == slow_every // 2)
                # Alternate processes within a room; rooms of one alternate by room.
                server = (m if members > 1 else r) + start_index
                specs.append([self.ws_url(server), tokens[i], room, True, slow])
                if not slow:
                    self.members[room] = self.members.get(room, 0) + 1
        return specs

    async def open_connections(self, specs: list[list[Any]], gid_offset: int = 0) -> dict[str, Any]:
        n_workers = max(1, min(self.args.workers, len(specs)))
        t = time.monotonic()
        workers = await start_workers(specs, n_workers, self.target, self.args, gid_offset)
        self.workers += workers
        readies = [await w.expect("ready", timeout=600) for w in workers]
        ok = sum(r["ok"] for r in readies)
        failed = sum(r["failed"] for r in readies)
        failures: dict[str, int] = {}
        for r in readies:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        info = {
            "presence_diff_frames_received": sum(r.get("presence_diffs", 0) for r in readies),
            "connections": len(specs),
            "ok": ok,
            "failed": failed,
            "failures": failures,
            "seconds": round(time.monotonic() - t, 1),
        }
        say(
            f"  {ok}/{len(specs)} connections joined in {info['seconds']} s"
            + (
                f" ({info['presence_diff_frames_received']} presence_diff frames)"
                if info["presence_diff_frames_received"]
                else ""
            )
            + (f"; failures: {failures}" if failures else "")
        )
        if failed:
            self.result.setdefault("warnings", []).append(f"connections failed: {failures}")
        return info

    # -- measurements ---------------------------------------------------------

    def server_cpu(self) -> float:
        return sum(s.cpu() for s in self.servers)

    def server_rss(self) -> list[int]:
        return [s.rss() for s in self.servers]

    def worker_cpu(self) -> float:
        return sum(proc_cpu_seconds(w.pid) for w in self.workers)

    async def monitor(self) -> None:
        """Every second: progress line and a sample of the servers' CPU and memory."""
        t0 = time.monotonic()
        last_cpu = self.server_cpu()
        last_wcpu = self.worker_cpu()
        last_recv = sum(w.progress.get("recv", 0) for w in self.workers)
        last_sent = sum(w.progress.get("sent", 0) for w in self.workers)
        last_t = t0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            cpu = self.server_cpu()
            wcpu = self.worker_cpu()
            recv = sum(w.progress.get("recv", 0) for w in self.workers)
            sent = sum(w.progress.get("sent", 0) for w in self.workers)
            errors = sum(w.progress.get("errors", 0) for w in self.workers)
            closed = sum(w.progress.get("closed", 0) for w in self.workers)
            dt_ = now - last_t
            rss = self.server_rss()
            sample = {
                "t": round(now - t0, 2),
                "sends_per_s": round((sent - last_sent) / dt_),
                "deliveries_per_s": round((recv - last_recv) / dt_),
                "server_cpu_pct": round(100 * (cpu - last_cpu) / dt_),
                "generator_cpu_pct": round(100 * (wcpu - last_wcpu) / dt_),
                "server_rss_kib": rss,
                "tcp_mem_kib": tcp_mem_kib(),
                "load1": round(os.getloadavg()[0], 2),
            }
            self.samples.append(sample)
            if not self.args.quiet:
                say(
                    f"  [{sample['t']:6.1f}s] sends/s {sample['sends_per_s']:>7} "
                    f"deliveries/s {sample['deliveries_per_s']:>8} "
                    f"server cpu {sample['server_cpu_pct']:>4}% gen cpu "
                    f"{sample['generator_cpu_pct']:>4}% rss "
                    f"{'+'.join(str(r // 1024) for r in rss)} MiB"
                    + (f" errors {errors}" if errors else "")
                    + (f" closed {closed}" if closed else "")
                )
            last_cpu, last_wcpu, last_recv, last_sent, last_t = cpu, wcpu, recv, sent, now

    async def poll(self) -> tuple[int, int, int, int]:
        # Each worker answers with a progress line, which its reader keeps.
        for w in self.workers:
            await w.send({"cmd": "poll"})
        await asyncio.sleep(0.05)
        recv = sum(w.progress.get("recv", 0) for w in self.workers)
        sent = sum(w.progress.get("sent", 0) for w in self.workers)
        acks = sum(w.progress.get("acks", 0) for w in self.workers)
        errors = sum(w.progress.get("errors", 0) for w in self.workers)
        return recv, sent, acks, errors

    async def step_counts(self, step: int) -> dict[str, list[int]]:
        total: dict[str, list[int]] = {}
        for w in self.workers:
            await w.send({"cmd": "counts", "step": step})
        for w in self.workers:
            ev = await w.expect("counts")
            for room, (sent, err, ack) in ev["rooms"].items():
                t = total.setdefault(room, [0, 0, 0])
                t[0] += sent
                t[1] += err
                t[2] += ack
        return total

    async def run_step(self, step: int, rate: float, seconds: float) -> dict[str, Any]:
        n = len(self.workers)
        per = rate / n
        t0 = time.monotonic_ns() + 300_000_000
        interval = 1e9 / rate if rate else 0
        for i, w in enumerate(self.workers):
            await w.send(
                {
                    "cmd": "step",
                    "step": step,
                    "rate": per,
                    "seconds": seconds,
                    "t0": t0 + int(i * interval),
                }
            )
        await asyncio.sleep(max(0, (t0 - time.monotonic_ns()) / 1e9))
        cpu0, wcpu0, rcpu0 = (
            self.server_cpu(),
            self.worker_cpu(),
            await redis_cpu(self.cluster.urls if self.cluster else None),
        )
        busy0, _ = machine_busy()
        pg_pids = await postgres_pids() if self.is_chat else []
        pg0 = {pid: proc_cpu_seconds(pid) for pid in pg_pids}
        commits0 = await postgres_commits() if self.is_chat else 0
        for w in self.workers:
            await w.expect("step_done", timeout=seconds + 60)
        step_end = t0 + int(seconds * 1e9)
        cpu1, wcpu1, rcpu1 = (
            self.server_cpu(),
            self.worker_cpu(),
            await redis_cpu(self.cluster.urls if self.cluster else None),
        )
        busy1, _ = machine_busy()
        pg_cpu = sum(max(0.0, proc_cpu_seconds(pid) - c) for pid, c in pg0.items())
        commits1 = await postgres_commits() if self.is_chat else 0
        rss = self.server_rss()
        # Drain: wait for the acks and the deliveries of this step (bounded).
        drain_start = time.monotonic()
        deadline = drain_start + self.args.drain
        while True:
            counts = await self.step_counts(step)
            expected = {room: c[0] - c[1] for room, c in counts.items()}
            want = sum(v * self.members.get(int(room), 0) for room, v in expected.items())
            await self.poll()
            delivered = await self.delivered_in_step(step, expected)
            acked_all = PROTOCOL[self.target] != "chat" or all(
                c[1] + c[2] >= c[0] for c in counts.values()
            )
            if (delivered >= want and acked_all) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        drain = time.monotonic() - drain_start
        # Collect the histograms; what is still missing counts as "at least this late".
        lat = new_hist()
        ack = new_hist()
        outstanding = delivered_n = unacked = 0
        extra: dict[str, int] = {}
        for w in self.workers:
            await w.send(
                {"cmd": "collect", "step": step, "expected": expected, "step_end": step_end}
            )
        for w in self.workers:
            ev = await w.expect("collected")
            lat.add(decode_hist(ev["lat"]))
            if ev["ack"]:
                ack.add(decode_hist(ev["ack"]))
            outstanding += ev["outstanding"]
            delivered_n += ev["delivered"]
            for kind, n in ev.get("extra", {}).items():
                extra[kind] = extra.get(kind, 0) + n
            unacked += ev["unacked"]
        sends = sum(c[0] for c in counts.values())
        refused = sum(c[1] for c in counts.values())
        members = statistics.mean(self.members.values()) if self.members else 0
        result = {
            "step": step,
            "rate": rate,
            "seconds": seconds,
            "sends": sends,
            "refused": refused,
            "offered_deliveries_per_s": round(rate * members),
            "deliveries": delivered_n,
            "deliveries_expected": want,
            "outstanding_after_drain": outstanding,
            "unacked_after_drain": unacked,
            "drain_seconds": round(drain, 2),
            "latency": hist_summary(lat),
            "ack_latency": hist_summary(ack),
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / seconds, 1),
            "generator_cpu_s": round(wcpu1 - wcpu0, 3),
            "generator_cpu_pct": round(100 * (wcpu1 - wcpu0) / seconds, 1),
            "redis_cpu_s": round(rcpu1 - rcpu0, 3),
            # The PostgreSQL backends of the bench database (our server only).
            "postgres_cpu_s": round(pg_cpu, 3),
            "postgres_cpu_pct": round(100 * pg_cpu / seconds, 1),
            # Transactions committed during the step (the bench's own queries add ~2; the
            # statistics are flushed by PostgreSQL with a short delay, so this is approximate).
            "postgres_commits": commits1 - commits0,
            # Everything the machine ran meanwhile (2 cores = 200%), ours and other people's.
            "machine_busy_pct": round(100 * (busy1 - busy0) / seconds, 1),
            "others_cpu_pct": round(
                100
                * ((busy1 - busy0) - (cpu1 - cpu0) - (wcpu1 - wcpu0) - (rcpu1 - rcpu0) - pg_cpu)
                / seconds,
                1,
            ),
            "server_rss_kib": rss,
            "loadavg": round(os.getloadavg()[0], 2),
            "t0_ns": t0,
            "end_ns": step_end,
        }
        if extra:
            # Conversations modes: `reactions` frames (react) and `notify` frames (atroom).
            result["extra_frames"] = extra
            if result["server_cpu_s"] > 0:
                frames = (0 if self.args.mode == "react" else want) + sum(extra.values())
                result["frames_per_cpu_s"] = round(frames / result["server_cpu_s"])
        if result["postgres_commits"] > 0:
            result["messages_per_commit"] = round(sends / result["postgres_commits"], 2)
        # Deliveries per server CPU-second: every delivery of this step's messages.
        if result["server_cpu_s"] > 0:
            result["deliveries_per_cpu_s"] = round(want / result["server_cpu_s"])
        lat_s = result["latency"]
        ack_s = result["ack_latency"]
        say(
            f"  step {step}: {rate:g} msg/s x {members:g} members -> "
            f"{delivered_n} deliveries, p50 {lat_s.get('p50_ms', '-')} p99 "
            f"{lat_s.get('p99_ms', '-')} p99.9 {lat_s.get('p99_9_ms', '-')} ms"
            + (f"; ack p99 {ack_s.get('p99_ms')} ms" if ack_s.get("count") else "")
            + f"; server cpu {result['server_cpu_pct']}%, gen cpu {result['generator_cpu_pct']}%"
            + (f", postgres {result['postgres_cpu_pct']}%" if pg_cpu else "")
            + (
                f", {result['messages_per_commit']} msg/commit"
                if result.get("messages_per_commit")
                else ""
            )
            + f", machine {result['machine_busy_pct']}% (others {result['others_cpu_pct']}%)"
            + (f"; OUTSTANDING {outstanding}" if outstanding else "")
        )
        return result

    async def delivered_in_step(self, step: int, expected: dict[str, int]) -> int:
        # Progress counters are cumulative; the per-step count is checked at collect.
        # Here: compare the cumulative count with everything expected so far.
        recv = sum(w.progress.get("recv", 0) for w in self.workers)
        return recv - self._recv_before_step.get(step, 0)

    # -- scenarios -------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        sc = {**SCENARIOS[self.scenario]}
        a = self.args
        rooms = a.rooms or sc["rooms"]
        members = a.members or sc["members"]
        rates = [float(x) for x in (a.rates or sc.get("rates", "")).split(",") if x]
        seconds = a.step_seconds or sc.get("step_seconds", 5)
        slow = a.slow_fraction if a.slow_fraction is not None else sc.get("slow_fraction", 0)
        self.result = {
            "scenario": self.scenario,
            "target": self.target,
            "repeat": self.repeat,
            "started": now_iso(),
            "machine": machine(),
            "server_version": server_version(),
            "config": {
                "rooms": rooms,
                "members": members,
                "rates": rates,
                "step_seconds": seconds,
                "slow_fraction": slow,
                "slow_rcvbuf": a.slow_rcvbuf,
                "workers": a.workers,
                "client": a.client,
                "body_size": a.body_size,
                "server_cpus": a.server_cpus,
                "worker_cpus": a.worker_cpus,
                "server_env": a.server_env,
            },
        }
        say(f"== {self.scenario} on {self.target} (run {self.repeat}) ==")
        try:
            await self.start_servers()
            self.result["server_pids"] = [s.pid for s in self.servers]
            if self.scenario == "S0":
                await self.idle(sc, members)
            else:
                specs = await self.make_specs(rooms, members, slow)
                target = 0
                if self.args.mode == "react":
                    # The one message every sender toggles a reaction on, stored before the
                    # connections join (so no member replays it).
                    from chat.client import HttpApi

                    async with HttpApi(self.servers[0].http, specs[0][1], timeout=60) as api:
                        await api.join_room(specs[0][2])
                        target = (await api.post(specs[0][2], "react to this")).id
                self.result["connect"] = await self.open_connections(specs)
                if target:
                    for w in self.workers:
                        await w.send({"cmd": "target", "id": target})
                        await w.expect("targeted")
                await self.stepped(rates, seconds, sc, slow)
        finally:
            if self.monitor_task:
                self.monitor_task.cancel()
            await stop_workers(self.workers)
            for s in self.servers:
                await s.stop()
            if self.cluster is not None:
                self.result["redis_cluster"] = {"masters": len(self.cluster.ports)}
                self.cluster.stop()
        self.result["samples"] = self.samples
        self.result["finished"] = now_iso()
        return self.result

    async def idle(self, sc: dict[str, Any], per_room: int) -> None:
        """S0: RSS of the server processes before and after N joined, idle connections."""
        levels = [int(x) for x in (self.args.levels or sc["levels"]).split(",")]
        # Every account and room first (sign-ups churn the servers' memory), then the baseline.
        rooms = max(1, math.ceil(max(levels) / per_room))
        all_specs = await self.make_specs(rooms, per_room, 0)
        await asyncio.sleep(self.args.settle)
        base = self.server_rss()
        say(f"  baseline RSS {[r // 1024 for r in base]} MiB")
        points: list[dict[str, Any]] = [
            {"connections": 0, "server_rss_kib": base, "total_kib": sum(base)}
        ]
        have = 0
        for level in levels:
            specs = all_specs[have:level]
            info = await self.open_connections(specs, gid_offset=len(points) * 1_000_000)
            have += info["ok"]
            await asyncio.sleep(self.args.settle)
            rss = self.server_rss()
            point = {
                "connections": have,
                "server_rss_kib": rss,
                "total_kib": sum(rss),
                "connect": info,
                "server_cpu_s": round(self.server_cpu(), 2),
            }
            points.append(point)
            per = (sum(rss) - sum(base)) / have if have else 0
            say(
                f"  {have} idle connections: RSS {[r // 1024 for r in rss]} MiB, "
                f"{per:.1f} KiB per connection over the baseline"
            )
        # The slope between the first and the last level excludes fixed start-up costs.
        first, last = points[1], points[-1]
        slope = (
            (last["total_kib"] - first["total_kib"]) / (last["connections"] - first["connections"])
            if last["connections"] > first["connections"]
            else None
        )
        self.result["memory"] = {
            "points": points,
            "kib_per_connection_over_baseline": round(
                (last["total_kib"] - points[0]["total_kib"]) / max(1, last["connections"]), 2
            ),
            "kib_per_connection_slope": round(slope, 2) if slope is not None else None,
            "generator_rss_kib": sum(proc_rss_kib(w.pid) for w in self.workers),
        }

    async def stepped(
        self, rates: list[float], seconds: float, sc: dict[str, Any], slow: float
    ) -> None:
        a = self.args
        stop_p99 = a.stop_p99_ms if a.stop_p99_ms is not None else sc.get("stop_p99_ms")
        stop_ack = a.stop_ack_p99_ms if a.stop_ack_p99_ms is not None else sc.get("stop_ack_p99_ms")
        epoch = time.monotonic_ns()
        for w in self.workers:
            await w.send({"cmd": "epoch", "t": epoch})
        self.monitor_task = asyncio.create_task(self.monitor())
        rss_before = self.server_rss()
        tcp_before = tcp_mem_kib()
        if slow:
            for w in self.workers:
                await w.send({"cmd": "slow"})
            for w in self.workers:
                await w.expect("slowed")
        profiler = None
        steps = []
        self._recv_before_step: dict[int, int] = {}
        for k, rate in enumerate(rates):
            await self.poll()
            self._recv_before_step[k] = sum(w.progress.get("recv", 0) for w in self.workers)
            if a.profile_step == k:
                profiler = self.start_profiler(seconds)
            step = await self.run_step(k, rate, seconds)
            steps.append(step)
            if profiler is not None:
                await self.finish_profiler(profiler)
                profiler = None
            p99 = step["latency"].get("p99_ms", 0)
            ack_p99 = step["ack_latency"].get("p99_ms", 0)
            if stop_p99 and p99 > stop_p99:
                say(f"  p99 {p99} ms > {stop_p99} ms: stopping")
                break
            if stop_ack and ack_p99 > stop_ack:
                say(f"  ack p99 {ack_p99} ms > {stop_ack} ms: stopping")
                break
            if step["outstanding_after_drain"] > 0.5 * max(1, step["deliveries_expected"]):
                say("  the server fell far behind: stopping")
                break
        self.result["steps"] = steps
        rss_peak = [
            max(s["server_rss_kib"][i] for s in self.samples) if self.samples else 0
            for i in range(len(self.servers))
        ]
        tcp = [x.get("tcp_mem_kib", 0) for x in self.samples]
        self.result["memory"] = {
            "tcp_mem_kib_before": tcp_before,
            "tcp_mem_kib_peak": max(tcp, default=0),
            "server_rss_before_kib": rss_before,
            "server_rss_peak_kib": rss_peak,
            "server_rss_end_kib": self.server_rss(),
        }
        await self.integrity(slow)
        self.result["best"] = self.best(steps, stop_p99, stop_ack)

    def best(
        self, steps: list[dict[str, Any]], stop_p99: float | None, stop_ack: float | None
    ) -> dict[str, Any] | None:
        good = [
            s
            for s in steps
            if (not stop_p99 or s["latency"].get("p99_ms", 1e9) <= stop_p99)
            and (not stop_ack or s["ack_latency"].get("p99_ms", 1e9) <= stop_ack)
            and s["outstanding_after_drain"] == 0
        ]
        if not good:
            return None
        top = max(good, key=lambda s: s["deliveries"])
        return {
            "step": top["step"],
            "rate": top["rate"],
            "messages_per_s": round(top["sends"] / top["seconds"]),
            "deliveries_per_s": round(top["deliveries"] / top["seconds"]),
            "p99_ms": top["latency"].get("p99_ms"),
            "ack_p99_ms": top["ack_latency"].get("p99_ms"),
            "deliveries_per_cpu_s": top.get("deliveries_per_cpu_s"),
        }

    async def integrity(self, slow: float) -> None:
        """Lost, repeated and out-of-order deliveries; PostgreSQL for our server."""
        # Late deliveries: wait until nothing more arrives for 2 s (at most --final-wait s).
        t = time.monotonic()
        last, still = -1, 0
        while time.monotonic() - t < self.args.final_wait:
            await self.poll()
            recv = sum(w.progress.get("recv", 0) for w in self.workers)
            still = still + 1 if recv == last else 0
            if still >= 10:
                break
            last = recv
            await asyncio.sleep(0.2)
        self.result["final_wait_s"] = round(time.monotonic() - t, 1)
        if slow:
            for w in self.workers:
                await w.send({"cmd": "resume"})
            await asyncio.sleep(self.args.settle)
        for w in self.workers:
            await w.send({"cmd": "final"})
        finals = [await w.expect("final", timeout=120) for w in self.workers]
        sent_by_room: dict[int, int] = {}
        for f in finals:
            for room, n in f["sent_by_room"].items():
                sent_by_room[int(room)] = sent_by_room.get(int(room), 0) + n
        errors: dict[str, int] = {}
        for f in finals:
            for k, v in f["errors"].items():
                errors[k] = errors.get(k, 0) + v
        info: dict[str, Any] = {
            "sent": sum(f["sent"] for f in finals),
            "acked": sum(f["acks"] for f in finals),
            "unacked": sum(f["unacked"] for f in finals),
            "errors": errors,
        }
        last_seq: dict[int, int] = {}
        if self.is_chat:
            # acked per room = sent - refused - unacked; the database must hold exactly those.
            acked_by_room = {room: n for room, n in sent_by_room.items()}
            refused = sum(errors.values())
            db = await verify_database(self.rooms, acked_by_room)
            last_seq = db.pop("last_seq")
            db["note"] = (
                "per room: stored == rooms.last_seq == max(seq) == distinct seqs == sends"
                + (f" ({refused} sends refused)" if refused else "")
            )
            info["database"] = db
        lost = repeated = ooo = closed = slow_closed = 0
        close_codes: dict[str, int] = {}
        slow_codes: dict[str, int] = {}
        checked = 0
        for f in finals:
            for room, join_seq, _last, recv, reps, oo, _missing, was_closed, code, is_slow, _c in f[
                "conns"
            ]:
                if is_slow:
                    if was_closed:
                        slow_closed += 1
                        slow_codes[str(code)] = slow_codes.get(str(code), 0) + 1
                    continue
                if was_closed:
                    closed += 1
                    close_codes[str(code)] = close_codes.get(str(code), 0) + 1
                    continue
                checked += 1
                if self.is_chat:
                    expected = last_seq.get(room, 0) - join_seq
                else:
                    expected = sent_by_room.get(room, 0)
                unique = recv - reps
                lost += max(0, expected - unique)
                repeated += reps
                ooo += oo
        info.update(
            {
                "connections_checked": checked,
                "lost": lost,
                "repeated": repeated,
                "out_of_order": ooo,
                "closed_unexpectedly": closed,
                "close_codes": close_codes,
                "slow_consumers": sum(1 for f in finals for c in f["conns"] if c[9]),
                "slow_consumers_closed": slow_closed,
                "slow_close_codes": slow_codes,
            }
        )
        info["ok"] = (
            lost == 0
            and repeated == 0
            and ooo == 0
            and closed == 0
            and (not self.is_chat or info["database"]["ok"])
        )
        self.result["integrity"] = info
        say(
            f"  integrity: {checked} connections checked, lost {lost}, repeated {repeated}, "
            f"out of order {ooo}, closed {closed} {close_codes or ''}"
            + (
                f", database ok={info['database']['ok']} "
                f"({info['database']['messages_stored']} stored)"
                if "database" in info
                else ""
            )
            + (
                f", slow consumers closed {slow_closed}/{info['slow_consumers']} {slow_codes}"
                if slow
                else ""
            )
        )
        # Achieved deliveries per second inside each step's window, from arrival buckets.
        arrivals: list[int] = []
        for f in finals:
            arr = f["arrivals"]
            if len(arr) > len(arrivals):
                arrivals += [0] * (len(arr) - len(arrivals))
            for i, v in enumerate(arr):
                arrivals[i] += v
        epoch = finals[0]["epoch"] if finals else 0
        for step in self.result.get("steps", []):
            lo = max(0, (step["t0_ns"] - epoch) // 100_000_000)
            hi = max(lo, (step["end_ns"] - epoch) // 100_000_000)
            window = arrivals[lo:hi]
            step["delivered_per_s_in_window"] = round(sum(window) / max(0.1, len(window) / 10))

    # -- profiling ---------------------------------------------------------------

    def start_profiler(self, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
        out = RESULTS / f"profile-{self.scenario}-{self.target}-{self.run_id}.txt"
        pyspy = Path(sys.executable).with_name("py-spy")
        proc = subprocess.Popen(
            [str(pyspy), "record", "--pid", str(self.servers[0].pid), "--duration",
             str(max(1, int(seconds))), "--rate", "200", "--format", "raw",
             "--full-filenames", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        say(f"  py-spy recording {self.servers[0].name} (pid {self.servers[0].pid}) to {out.name}")
        return proc, out

    async def finish_profiler(self, profiler: tuple[subprocess.Popen[bytes], Path]) -> None:
        proc, out = profiler
        for _ in range(100):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            proc.terminate()
        if out.exists():
            from bench.profile import summarize

            self.result["profile"] = {"file": str(out.relative_to(ROOT)), **summarize(out)}


# -- several runs, medians ---------------------------------------------------------


def save(result: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def median_of(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile()
    scenario = args.scenario.upper()
    targets = list(TARGETS) if args.target == "all" else args.target.split(",")
    if scenario == "PEERS":
        scenario = "S2"
        if args.target == "chat":
            targets = list(TARGETS)
    if scenario == "CLUSTER":
        # The hot room on one Redis and on a 3-master Redis Cluster, in one run.
        scenario = "S2"
        targets = ["chat", "chat-cluster"]
    if scenario not in ("S0", "S2") and not set(targets) <= {"chat", "chat-cluster"}:
        raise SystemExit("the peers run the idle (S0) and hot-room (S2) scenarios only")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    summary: dict[str, Any] = {
        "scenario": scenario,
        "targets": targets,
        "repeats": args.repeat,
        "started": now_iso(),
        "machine": machine(),
        "runs": {},
    }
    ok = True
    for repeat in range(1, args.repeat + 1):
        for target in targets:
            run = Run(scenario, target, args, repeat)
            result = await run.run()
            name = f"{scenario}-{target}-{stamp}-r{repeat}"
            path = save(result, name)
            say(f"  -> {path.relative_to(ROOT)}")
            summary["runs"].setdefault(target, []).append(str(path.relative_to(ROOT)))
            integrity = result.get("integrity")
            if integrity is not None and not integrity.get("ok", True):
                ok = False
            if result.get("best"):
                say(f"  best: {result['best']}")
    if len(targets) > 1 or args.repeat > 1:
        from bench.report import compare

        summary["comparison"] = compare(summary["runs"])
        if len(targets) > 1 and not args.no_plot:
            from bench.report import plot_compare

            say(f"plot -> {plot_compare(summary['runs']).relative_to(ROOT)}")
        path = save(summary, f"{scenario}-summary-{stamp}")
        say(f"summary -> {path.relative_to(ROOT)}")
        say(json.dumps(summary["comparison"], indent=1))
    if not args.no_plot:
        from bench.report import plot_run

        for paths in summary["runs"].values():
            for p in paths[-1:]:
                img = plot_run(ROOT / p)
                if img:
                    say(f"plot -> {img.relative_to(ROOT)}")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenario",
        help="S0, S1, S2, S3, S4, peers (S2 on every target), or cluster "
        "(S2 on chat and chat-cluster)",
    )
    p.add_argument(
        "--target",
        default="chat",
        help="chat, chat-cluster, pysio, node, raw, a comma-separated list, or all",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each target (medians)")
    p.add_argument("--rooms", type=int, help="rooms (scenario default otherwise)")
    p.add_argument("--members", type=int, help="connections per room")
    p.add_argument("--levels", help="S0: connection counts to measure at, e.g. 1000,5000")
    p.add_argument("--rates", help="messages/s per step, comma-separated")
    p.add_argument("--step-seconds", type=float, help="seconds per step")
    p.add_argument("--slow-fraction", type=float, help="share of clients that stop reading")
    p.add_argument(
        "--slow-rcvbuf",
        type=int,
        help="SO_RCVBUF (bytes) of the slow clients' sockets, set before connecting",
    )
    p.add_argument("--stop-p99-ms", type=float, help="stop stepping once delivery p99 exceeds it")
    p.add_argument("--stop-ack-p99-ms", type=float, help="stop once send-ack p99 exceeds it")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    p.add_argument("--client", choices=("picows", "websockets"), default="picows")
    p.add_argument(
        "--accounts",
        choices=("signup", "bots"),
        help="how accounts are made (default: sign-ups up to 2,500, bots above)",
    )
    p.add_argument("--body-size", type=int, default=100, help="message body characters (>= 40)")
    p.add_argument(
        "--mode",
        choices=("message", "react", "atroom"),
        default="message",
        help="what senders do: send messages; toggle a reaction on one message (react); "
        "send messages that say @room (atroom)",
    )
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait after a step")
    p.add_argument(
        "--final-wait", type=float, default=30.0, help="max seconds for late deliveries at the end"
    )
    p.add_argument("--settle", type=float, default=3.0, help="seconds before measuring memory")
    p.add_argument("--server-cpus", help="taskset CPU list for the server processes")
    p.add_argument("--worker-cpus", help="taskset CPU list for the generator workers")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting (repeatable), e.g. OUTBOUND_QUEUE_FRAMES=500",
    )
    p.add_argument("--profile-step", type=int, help="py-spy the first server during this step")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    args = p.parse_args(argv)
    if args.body_size < 40:
        p.error("--body-size must be at least 40")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        code = uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover
        code = asyncio.run(main_async(args))
    sys.exit(code)


if __name__ == "__main__":
    main()
