"""Faults under traffic: Redis pub/sub links killed, PostgreSQL stopped mid-send, SIGTERM
with 500 connections, connection churn, and clients dropping and resuming at random.

Services that a test stops or disturbs are private to it (a `redis-server` subprocess,
an embedded PostgreSQL); the shared ones are never touched. Each test checks what
the contract promises: every client's log of `message` frames, recorded exactly as
it arrived, equals the room's log in PostgreSQL, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from redis.exceptions import RedisError

from chat.broker.redis import POOL_SIZE, RedisBroker

from .support import Api, PrivatePostgres, RedisServer, ServerProcess, Ws, processes, rss_kib

# -- private services -----------------------------------------------------------


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll an outside system until `check` holds; the seconds it took (fails after `timeout`)."""
    started = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)  # pacing the polls


@dataclass
class PrivateRedis:
    """A redis-server of the test's own (see test_ws_faults), so that it may kill its clients."""

    server: RedisServer
    client: aioredis.Redis

    @property
    def url(self) -> str:
        return self.server.url

    async def kill_pubsub(self) -> int:
        """Drop every pub/sub connection, as a failover or a network cut would."""
        return int(await self.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))

    async def subscribers(self, *channels: str) -> dict[str, int]:
        counts = await self.client.pubsub_numsub(*channels)
        return {_text(name): int(n) for name, n in counts}

    async def channels(self) -> set[str]:
        return {_text(c) for c in await self.client.pubsub_channels()}

    async def client_count(self) -> int:
        return len(await self.client.client_list())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    """A Redis with no persistence on a free port, stopped after the test."""
    server = RedisServer()
    await server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield PrivateRedis(server, client)
    finally:
        await client.aclose()
        await server.kill()


# -- clients that record what arrives -------------------------------------------


class Log:
    """Every `message` a client received, by room, in arrival order, across its connections."""

    def __init__(self) -> None:
        self.rooms: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        # Set on each arrival, for waiting until a room's log reaches a seq.
        self.grew = asyncio.Event()

    def add(self, frame: dict[str, Any]) -> None:
        self.rooms[frame["room"]].append(frame["message"])
        self.grew.set()

    def last(self, room: int) -> int:
        rows = self.rooms.get(room)
        return int(rows[-1]["seq"]) if rows else 0

    async def reach(self, targets: dict[int, int], deadline: float) -> None:
        """Wait until each room's newest received seq is at least its target."""
        while any(self.last(room) < seq for room, seq in targets.items()):
            self.grew.clear()
            await asyncio.wait_for(self.grew.wait(), max(0.01, deadline - time.monotonic()))


class Recorder(Ws):
    """A `Ws` that files each `message` frame in its `Log`; other frames queue as usual."""

    def __init__(self, ws: Any) -> None:
        # Set before the pump starts (in Ws.__init__); replaced by `open` to share a log.
        self.log = Log()
        super().__init__(ws)

    async def _pump(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.log.add(frame)
                else:
                    await self.frames.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    @classmethod
    async def open(cls, url: str, token: str | None, log: Log | None = None) -> Recorder:
        client = cast(Recorder, await cls.connect(url, token))
        if log is not None:
            client.log = log  # nothing is joined yet, so no message has arrived
        return client

    async def join_since(self, room: int, since: int) -> dict[str, Any]:
        """Join with `since`; the `ok` (presence frames stay queued, in whatever order)."""
        ok = await self.call({"type": "join", "room": room, "since": since})
        assert ok["type"] == "ok", ok
        assert ok["truncated"] is False, ok
        return ok

    def abort(self) -> None:
        """Drop the TCP connection with no closing handshake, as a lost network would."""
        self.ws.transport.abort()


async def replies(ws: Ws, refs: set[Any], timeout: float) -> dict[Any, dict[str, Any]]:
    """The `ok`/`error` replies to `refs`, until all came or the connection closed."""
    got: dict[Any, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    closed = asyncio.ensure_future(ws.closed.wait())
    try:
        while not refs <= got.keys():
            if ws.closed.is_set() and ws.frames.empty():
                break
            getter = asyncio.ensure_future(ws.frames.get())
            done, _ = await asyncio.wait(
                {getter, closed},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in done:
                frame = getter.result()
                if frame.get("ref") in refs and frame["type"] in ("ok", "error"):
                    got[frame["ref"]] = frame
                    frame["at"] = time.monotonic()  # when it was taken, for the report
                continue
            getter.cancel()
            if not done:
                raise AssertionError(f"{len(refs - got.keys())} replies missing after {timeout} s")
    finally:
        closed.cancel()
    return got


def assert_same_log(got: list[dict[str, Any]], truth: list[dict[str, Any]], who: str) -> None:
    """A client's log equals PostgreSQL's: same messages, in seq order, no gap, no repeat."""
    seqs = [m["seq"] for m in got]
    if seqs != [m["seq"] for m in truth]:
        repeats = len(seqs) - len(set(seqs))
        missing = sorted({m["seq"] for m in truth} - set(seqs))
        out_of_order = sum(1 for x, y in itertools.pairwise(seqs) if y <= x)
        raise AssertionError(
            f"{who}: {len(seqs)} messages for {len(truth)} stored; repeats {repeats}, "
            f"missing {missing[:20]}, out of order {out_of_order}"
        )
    assert [(m["id"], m["body"]) for m in got] == [(m["id"], m["body"]) for m in truth], who


async def metric(proc: ServerProcess, name: str) -> float:
    """A sample of the process's /metrics (unlabelled series), polled over HTTP."""
    api = Api(proc.url)
    try:
        text = (await api.raw("GET", "/metrics")).text
    finally:
        await api.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def post_paced(
    apis: list[Api], rooms: list[int], rate: float, stop: asyncio.Event, label: str
) -> int:
    """POST messages at `rate` a second, round robin over processes and rooms, until `stop`."""
    sent = 0
    started = time.monotonic()
    pending: set[asyncio.Task[Any]] = set()
    while not stop.is_set():
        api = apis[sent % len(apis)]
        room = rooms[sent % len(rooms)]
        pending.add(asyncio.create_task(api.post(room, f"{label} {sent}", f"{label}-{sent}")))
        sent += 1
        for task in [t for t in pending if t.done()]:
            task.result()  # a failed POST fails the test here
            pending.discard(task)
        # Pacing the traffic, not synchronising: the next send is due at sent / rate.
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    await asyncio.gather(*pending)
    return sent


async def truth_of(api: Api, rooms: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    return {room: await api.all_messages(room) for room in rooms}


# -- 1. Redis pub/sub links killed during traffic ---------------------------------


async def _pubsub_faults(
    private_redis: PrivateRedis, server_env: dict[str, str], kills: int
) -> dict[str, Any]:
    """Two processes on a private Redis, clients on both, traffic, then `kills` pub/sub kills."""
    env = {**server_env, "REDIS_URL": private_redis.url}
    prefix = env["REDIS_PREFIX"]
    stats: dict[str, Any] = {}
    async with processes(env, "a", "b") as (a, b):
        api = await Api.new_user(a.url, "pubsub")
        rooms = [(await api.create_room(f"pubsub {i}"))["id"] for i in range(2)]
        clients = []
        for i in range(8):
            client = await Recorder.open((a, b)[i % 2].ws_url, api.token)
            for room in rooms:
                await client.join_since(room, 0)
            clients.append(client)
        channels = [f"{prefix}:control"] + [f"{prefix}:room:{room}" for room in rooms]

        async def subscribed() -> bool:
            return all(n == 2 for n in (await private_redis.subscribers(*channels)).values())

        await poll(subscribed, 5, "both processes subscribed")
        stop = asyncio.Event()
        api_b = api.on(b.url)
        traffic = asyncio.create_task(post_paced([api, api_b], rooms, 60, stop, f"k{kills}"))
        deadline = time.monotonic() + 10
        await clients[0].log.reach({rooms[0]: 20}, deadline)
        killed = 0
        for n in range(kills):
            if n:
                await asyncio.sleep(0.15)  # pacing the kills: a churn of reconnects
            killed += await private_redis.kill_pubsub()
        stats["killed"] = killed
        stats["resubscribed_s"] = await poll(subscribed, 5, "both processes subscribed again")
        # Traffic goes on over the new links for a while.
        await asyncio.sleep(1)
        stop.set()
        stats["sent"] = await traffic
        truth = await truth_of(api, rooms)
        deadline = time.monotonic() + 15
        for client in clients:
            await client.log.reach({room: len(truth[room]) for room in rooms}, deadline)
        for n, client in enumerate(clients):
            for room in rooms:
                assert_same_log(client.log.rooms[room], truth[room], f"client {n} room {room}")
        stats["reconnects"] = [await metric(p, "chat_broker_reconnects_total") for p in (a, b)]
        for client in clients:
            await client.close()
        await api.close()
        await api_b.close()
    return stats


@pytest.mark.faults
@pytest.mark.timeout(90)
async def test_pubsub_kill_resubscribes_and_loses_nothing(
    private_redis: PrivateRedis, server_env: dict[str, str]
) -> None:
    """Pub/sub links killed mid-traffic: both processes resubscribe within 5 s; no log differs."""
    stats = await _pubsub_faults(private_redis, server_env, kills=1)
    print("pubsub kill:", stats)
    assert stats["killed"] == 2
    assert all(n >= 1 for n in stats["reconnects"]), stats


@pytest.mark.faults
@pytest.mark.timeout(90)
async def test_pubsub_kill_churn_loses_nothing(
    private_redis: PrivateRedis, server_env: dict[str, str]
) -> None:
    """Twenty pub/sub kills in a row during traffic: resubscribed within 5 s; no log differs."""
    stats = await _pubsub_faults(private_redis, server_env, kills=20)
    print("pubsub churn:", stats)
    assert stats["killed"] >= 20


class HookedBroker(RedisBroker):
    """The Redis broker, running `hook` once when a resubscription round gets its first reply."""

    hook: Callable[[], None] | None = None

    def _handle(self, msg: dict[str, Any]) -> None:
        super()._handle(msg)
        if msg["type"] == "subscribe" and self.pubsub is None and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()


@pytest.mark.faults
@pytest.mark.timeout(30)
async def test_join_and_leave_during_resubscription(private_redis: PrivateRedis) -> None:
    """Channels taken or dropped while the pub/sub link comes back are right once it is up."""
    broker = HookedBroker(private_redis.url)
    arrived: list[str] = []
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    # Many rooms, so that a round's confirmations take more than one read.
    for room in range(1, 3001):
        await broker.subscribe(f"race:room:{room}")  # recorded: the link is not up yet
    await broker.connect(lambda channel, payload: arrived.append(channel), on_reconnect)
    try:
        side: list[asyncio.Future[None]] = []
        # A join and a leave land while the round waits for its other confirmations.
        broker.hook = lambda: side.extend(
            [
                asyncio.ensure_future(broker.subscribe("race:room:new")),
                asyncio.ensure_future(broker.unsubscribe("race:room:2")),
            ]
        )
        assert await private_redis.kill_pubsub() == 1
        await asyncio.wait_for(resynced.wait(), 5)
        await asyncio.gather(*side)
        # The broker's own readiness canary channel is subscribed too.
        want = {"race:room:new", broker.canary_channel} | {f"race:room:{n}" for n in range(1, 3001)}
        want.discard("race:room:2")

        async def settled() -> bool:
            return await private_redis.channels() == want

        await poll(settled, 5, "subscribed to room:new, not to room:2, and to the rest")
        await broker.publish("race:room:new", b"x")
        await broker.publish("race:room:2", b"x")
        await broker.publish("race:room:1", b"x")

        async def delivered() -> bool:
            return "race:room:1" in arrived

        await poll(delivered, 5, "a message on room 1 arrives")
        assert arrived == ["race:room:new", "race:room:1"]
    finally:
        await broker.disconnect()


# -- 2. PostgreSQL stopped (immediate) during 2,000 sends ----------------------------

PG_SENDS = 2000
PG_CONNECTIONS = 4


async def _first_post(api: Api, room: int, label: str, deadline: float) -> float:
    """Seconds until a POST to the process succeeds again (503s meanwhile)."""
    started = time.monotonic()
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        r = await api.raw(
            "POST",
            f"/api/rooms/{room}/messages",
            json={"body": "probe", "client_id": f"{label}-{attempt}"},
        )
        if r.status_code == 201:
            return time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        await asyncio.sleep(0.01)  # pacing the probes
    raise AssertionError(f"{label}: no successful POST by the deadline")


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_postgres_crash_during_sends(
    private_postgres: PrivatePostgres, server_env: dict[str, str]
) -> None:
    """PostgreSQL killed mid-traffic: acked sends stored once, the rest `unavailable`, no dupes."""
    env = {
        **server_env,
        "DATABASE_URL": private_postgres.url,
        # Room ids of this database must not meet the shared database's on the channels.
        "REDIS_PREFIX": server_env["REDIS_PREFIX"] + "pg",
        "DB_COMMAND_TIMEOUT": "2",
        "SEND_RATE": "100000",
        "SEND_BURST": "100000",
    }
    async with processes(env, "a", "b") as (a, b):
        pids = [p.proc.pid for p in (a, b) if p.proc is not None]
        users = [await Api.new_user(a.url, "pg") for _ in range(2)]
        room = (await users[0].create_room("pg crash"))["id"]
        probe_room = (await users[0].create_room("pg probes"))["id"]
        await users[1].join(room)
        # Connection k: user k % 2 on process k // 2 % 2.
        conns = [
            await Ws.connect((a, b)[k // 2 % 2].ws_url, users[k % 2].token)
            for k in range(PG_CONNECTIONS)
        ]
        per_conn = PG_SENDS // PG_CONNECTIONS
        cids = [[f"c{k}-{i}" for i in range(per_conn)] for k in range(PG_CONNECTIONS)]
        collectors = [
            asyncio.create_task(replies(ws, set(cids[k]), 60)) for k, ws in enumerate(conns)
        ]
        sent: list[set[str]] = [set() for _ in conns]

        async def send_all(k: int) -> None:
            started = time.monotonic()
            for i, cid in enumerate(cids[k]):
                frame = {"type": "send", "ref": cid, "room": room, "body": f"pg {cid}"}
                try:
                    await conns[k].send({**frame, "client_id": cid})
                except websockets.ConnectionClosed:
                    return
                sent[k].add(cid)
                # Pacing: 500 sends over about 8 s per connection.
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.016 - time.monotonic()))

        senders = [asyncio.create_task(send_all(k)) for k in range(PG_CONNECTIONS)]
        await asyncio.sleep(1.2)  # traffic flows, then PostgreSQL dies
        await private_postgres.stop("immediate")
        crashed = time.monotonic()
        await asyncio.sleep(1.5)  # held down while sends keep coming
        await private_postgres.restart()
        ready = time.monotonic()
        on_b = users[0].on(b.url)
        recovery = await asyncio.gather(
            _first_post(users[0], probe_room, "probe-a", ready + 10),
            _first_post(on_b, probe_room, "probe-b", ready + 10),
        )
        await on_b.close()
        await asyncio.gather(*senders)
        answered = await asyncio.gather(*collectors)

        acked: dict[str, dict[str, Any]] = {}
        unacked: list[tuple[int, str]] = []
        codes: defaultdict[str, int] = defaultdict(int)
        for k, got in enumerate(answered):
            for cid in cids[k]:
                reply = got.get(cid)
                if reply is not None and reply["type"] == "ok":
                    acked[cid] = reply["message"]
                    continue
                if reply is not None:
                    codes[reply["code"]] += 1
                else:
                    # No reply: only if the connection dropped (or the frame was never sent).
                    assert conns[k].closed.is_set() or cid not in sent[k], cid
                    codes["dropped"] += 1
                unacked.append((k, cid))
        assert set(codes) <= {"unavailable", "dropped"}, dict(codes)
        assert codes["unavailable"] > 0 and 0 < len(acked) < PG_SENDS, (len(acked), dict(codes))
        # Sends were acknowledged before the crash and again after PostgreSQL came back.
        acked_after = sum(
            1 for g in answered for r in g.values() if r["type"] == "ok" and r["at"] > ready
        )
        assert 0 < acked_after < len(acked), acked_after

        db = await asyncpg.connect(private_postgres.url)
        try:
            # Stored though not acknowledged: committed just before the crash cut the reply.
            before_retry = await db.fetchval(
                "SELECT count(*) FROM messages WHERE room_id = $1 AND client_id = ANY($2)",
                room,
                [cid for _, cid in unacked],
            )
            # Retry every send that was not acknowledged, with its client_id, on its process.
            retried: dict[str, dict[str, Any]] = {}

            async def retry(k: int) -> None:
                user = users[k % 2].on((a, b)[k // 2 % 2].url)
                for cid in [c for j, c in unacked if j == k]:
                    retried[cid] = await user.post(room, f"pg {cid}", cid)
                await user.close()

            await asyncio.gather(*(retry(k) for k in range(PG_CONNECTIONS)))
            rows = await db.fetch(
                "SELECT id, seq, client_id FROM messages WHERE room_id = $1 ORDER BY seq", room
            )
            dupes = await db.fetch(
                "SELECT sender_id, client_id, count(*) FROM messages WHERE room_id = $1"
                " GROUP BY sender_id, client_id HAVING count(*) > 1",
                room,
            )
        finally:
            await db.close()
        assert not dupes, dupes
        assert [r["seq"] for r in rows] == list(range(1, PG_SENDS + 1))
        stored = {r["client_id"]: r["id"] for r in rows}
        assert set(stored) == {cid for per in cids for cid in per}
        for cid, message in {**acked, **retried}.items():
            assert stored[cid] == message["id"], cid
        # Served again without a restart.
        assert [p.proc.pid for p in (a, b) if p.proc is not None] == pids
        assert all(p.proc is not None and p.proc.poll() is None for p in (a, b))
        print(
            f"pg crash: {len(acked)} acked ({acked_after} after PG was back), {dict(codes)} not, "
            f"PG down {ready - crashed:.2f} s, "
            f"{before_retry} of those stored before the retry, "
            f"first POST after PG ready: a {recovery[0]:.3f} s, b {recovery[1]:.3f} s"
        )
        assert max(recovery) < 2.0, recovery
        for ws in conns:
            await ws.close()
        for api in users:
            await api.close()


# -- 3. SIGTERM with 500 connections ------------------------------------------------

SIGTERM_CONNECTIONS = 500
GRACEFUL = 5


async def open_many(url: str, token: str, count: int, room: int, batch: int = 50) -> list[Recorder]:
    """`count` connections joined to `room`, opened in parallel batches."""
    out: list[Recorder] = []

    async def one() -> Recorder:
        client = await Recorder.open(url, token)
        await client.join_since(room, 0)
        return client

    for start in range(0, count, batch):
        out += await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return out


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_sigterm_with_500_connections(server_env: dict[str, str]) -> None:
    """SIGTERM with 500 connections: exit within GRACEFUL_SHUTDOWN, all 1012, no acked send lost."""
    env = {
        **server_env,
        "GRACEFUL_SHUTDOWN": str(GRACEFUL),
        "MAX_CONNECTIONS_PER_USER": "1000",
        "SEND_RATE": "100000",
        "SEND_BURST": "100000",
    }
    async with processes(env, "a", "b") as (a, b):
        api = await Api.new_user(a.url, "term")
        room = (await api.create_room("sigterm"))["id"]
        assert api.token is not None
        doomed = await open_many(a.ws_url, api.token, SIGTERM_CONNECTIONS, room)
        survivors = await open_many(b.ws_url, api.token, 10, room)
        # Senders on the process about to stop keep sends in flight through the SIGTERM.
        senders = doomed[:10]
        acked: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def send_loop(k: int, ws: Recorder) -> None:
            """Pipelined sends, paced, until the connection closes; the acks are kept."""
            refs = [f"t{k}-{i}" for i in range(2000)]
            collector = asyncio.create_task(replies(ws, set(refs), 60))
            started = time.monotonic()
            for i, ref in enumerate(refs):
                if stop.is_set():
                    break
                frame = {"type": "send", "ref": ref, "room": room, "body": ref, "client_id": ref}
                try:
                    await ws.send(frame)
                except websockets.ConnectionClosed:
                    break
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.01 - time.monotonic()))
            got = await collector
            acked.extend(r["message"] for r in got.values() if r["type"] == "ok")

        async def post_loop() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = await api.raw(
                        "POST",
                        f"/api/rooms/{room}/messages",
                        json={"body": f"http {i}", "client_id": f"http-{i}"},
                    )
                except httpx.TransportError:
                    break  # the listener is gone
                if r.status_code == 201:
                    acked.append(r.json()["message"])

        # A slow client: it keeps sending but reads nothing for a second after the
        # SIGTERM, so it answers the server's close frame late.
        slow = doomed[-1]

        async def ping_loop() -> None:
            while not stop.is_set():
                try:
                    await slow.send({"type": "ping", "ref": "p"})
                except websockets.ConnectionClosed:
                    return
                await asyncio.sleep(0.02)  # pacing

        loops = [asyncio.create_task(send_loop(k, ws)) for k, ws in enumerate(senders)]
        loops += [asyncio.create_task(post_loop()), asyncio.create_task(ping_loop())]
        await asyncio.sleep(1)  # sends flow, then the SIGTERM lands among them
        assert a.proc is not None
        slow.ws.transport.pause_reading()
        term = time.monotonic()
        await a.signal(signal.SIGTERM)
        exit_status = asyncio.create_task(a.wait_exit(GRACEFUL + 10))
        await asyncio.sleep(1)  # how slow the slow client is
        slow.ws.transport.resume_reading()
        await exit_status
        exited = time.monotonic() - term
        stop.set()
        await asyncio.gather(*loops)

        codes = await asyncio.gather(*(ws.close_code(10) for ws in doomed))
        assert [c for c in codes if c != 1012] == [], [
            (i, c) for i, c in enumerate(codes) if c != 1012
        ]
        # Every acknowledged send is stored, and reaches the other process's clients.
        on_b = api.on(b.url)
        truth = await on_b.all_messages(room)
        await on_b.close()
        stored = {m["id"] for m in truth}
        assert {m["id"] for m in acked} <= stored
        deadline = time.monotonic() + 15
        for n, ws in enumerate(survivors):
            await ws.log.reach({room: len(truth)}, deadline)
            assert_same_log(ws.log.rooms[room], truth, f"survivor {n}")
        print(
            f"sigterm: {SIGTERM_CONNECTIONS} connections closed 1012, exit after {exited:.2f} s, "
            f"{len(acked)} acked, {len(truth)} stored"
        )
        # uvicorn ran its shutdown (then re-raised the SIGTERM, hence the exit status).
        assert any("Application shutdown complete" in line for line in a.lines)
        assert a.proc.returncode in (0, -signal.SIGTERM), a.proc.returncode
        assert exited < GRACEFUL, exited
        for ws in doomed + survivors:
            await ws.close()
        await api.close()


# -- 4. Churn: 10,000 connect/hello/join/close cycles and 20 pub/sub reconnects -----

CHURN_CYCLES = 10_000
CHURN_BATCH = 200
CHURN_WARMUP = 1_000
CHURN_ROOMS = 10


async def churn_cycle(url: str, token: str, room: int, abort: bool) -> None:
    """Connect, hello, join, then close (or drop the TCP connection)."""
    ws = await websockets.connect(url, open_timeout=10)
    try:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "ref": 1, "room": room}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("ref") == 1:
                assert frame["type"] == "ok", frame
                break
    finally:
        if abort:
            ws.transport.abort()
        await ws.close()


async def churn(url: str, token: str, rooms: list[int], start: int, count: int) -> None:
    async def one(i: int) -> None:
        await asyncio.wait_for(churn_cycle(url, token, rooms[i % len(rooms)], i % 4 == 0), 30)

    for first in range(start, start + count, CHURN_BATCH):
        await asyncio.gather(*(one(i) for i in range(first, first + CHURN_BATCH)))


@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_churn_leaves_no_residue(
    private_redis: PrivateRedis, server_env: dict[str, str]
) -> None:
    """10,000 connect/join/close cycles and 20 pub/sub kills: RSS and Redis clients come back."""
    env = {**server_env, "REDIS_URL": private_redis.url, "MAX_CONNECTIONS_PER_USER": "1000"}
    prefix = env["REDIS_PREFIX"]
    async with processes(env, "churn") as (server,):
        assert server.proc is not None
        pid = server.proc.pid
        api = await Api.new_user(server.url, "churn")
        assert api.token is not None
        rooms = [(await api.create_room(f"churn {i}"))["id"] for i in range(CHURN_ROOMS)]

        async def quiet() -> bool:
            """No connection or room left on the server, and its control channel subscribed."""
            counts = await private_redis.subscribers(f"{prefix}:control")
            return (
                await metric(server, "chat_connections") == 0
                and await metric(server, "chat_rooms_local") == 0
                and counts[f"{prefix}:control"] == 1
            )

        started = time.monotonic()
        await churn(server.ws_url, api.token, rooms, 0, CHURN_WARMUP)
        await poll(quiet, 10, "connections and rooms gone after the warm-up")
        rss0 = rss_kib(pid)
        clients0 = await private_redis.client_count()
        channels0 = await private_redis.channels()

        async def kill_soon() -> None:
            await asyncio.sleep(0.05)  # pacing: the kill lands while a batch connects and joins
            await private_redis.kill_pubsub()

        done, kills = CHURN_WARMUP, 0
        while done < CHURN_CYCLES:
            kill = asyncio.create_task(kill_soon()) if kills < 20 else None
            await churn(server.ws_url, api.token, rooms, done, 2 * CHURN_BATCH)
            done += 2 * CHURN_BATCH
            if kill is not None:
                await kill
                kills += 1
        elapsed = time.monotonic() - started
        await poll(quiet, 10, "connections and rooms gone after the churn")
        reconnects = await metric(server, "chat_broker_reconnects_total")
        rss1, clients1 = rss_kib(pid), await private_redis.client_count()
        channels1 = await private_redis.channels()
        print(
            f"churn: {CHURN_CYCLES} cycles in {elapsed:.1f} s, "
            f"{reconnects:.0f} pub/sub reconnects; "
            f"RSS {rss0} -> {rss1} KiB, redis clients {clients0} -> {clients1}, "
            f"channels {sorted(channels0)} -> {sorted(channels1)}"
        )
        assert reconnects >= 15
        assert channels1 == channels0
        # The command pool opens connections as concurrency needs them, up to its
        # bound: growth within it is no leak (the pub/sub link and this client besides).
        assert clients1 <= max(clients0 * 1.1, POOL_SIZE + 2), (clients0, clients1)
        assert rss1 <= rss0 * 1.1, (rss0, rss1)
        await api.close()


# -- 5. Clients dropping at random and resuming on either process --------------------

DROP_CLIENTS = 200
DROP_USERS = 8
DROP_ROOMS = 4
DROP_SECONDS = 60
DROP_RATE = 20


@dataclass
class DropStats:
    """What the dropping clients went through."""

    drops: int = 0
    aborts: int = 0
    resumes: int = 0
    server_closes: int = 0


async def dropping_client(
    n: int,
    procs: list[ServerProcess],
    token: str,
    rooms: list[int],
    log: Log,
    stop: asyncio.Event,
    stats: DropStats,
) -> Recorder:
    """Connect, join with `since`, stay 1-5 s, drop for 1-5 s, again, until `stop`.

    Returns the connection it holds, joined, once `stop` is set.
    """
    rng = random.Random(n)
    while True:
        ws = await Recorder.open(rng.choice(procs).ws_url, token, log)
        for room in rooms:
            await ws.join_since(room, log.last(room))
        stats.resumes += 1
        if stop.is_set():
            return ws
        closed = asyncio.ensure_future(ws.closed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({closed, stopped}, timeout=rng.uniform(1, 5))
        closed.cancel()
        stopped.cancel()
        if stop.is_set() and not ws.closed.is_set():
            return ws
        if ws.closed.is_set():
            stats.server_closes += 1  # the server closed it: resume like after a drop
        elif rng.random() < 0.5:
            ws.abort()  # the network went away: no closing handshake
            stats.aborts += 1
        stats.drops += 1
        await ws.close()
        await asyncio.sleep(rng.uniform(1, 5))  # offline for a while


@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_random_drops_resume_without_gap_or_repeat(server_env: dict[str, str]) -> None:
    """200 clients drop for 1-5 s and resume anywhere under traffic: logs equal PostgreSQL's."""
    env = {**server_env, "MAX_CONNECTIONS_PER_USER": "1000"}
    async with processes(env, "a", "b") as procs:
        a, b = procs
        owner = await Api.new_user(a.url, "drops")
        owner_b = owner.on(b.url)
        rooms = [(await owner.create_room(f"drops {i}"))["id"] for i in range(DROP_ROOMS)]
        users = [await Api.new_user(a.url, "dropper") for _ in range(DROP_USERS)]
        for user in users:
            for room in rooms:
                await user.join(room)
        stop = asyncio.Event()
        stats = DropStats()
        logs = [Log() for _ in range(DROP_CLIENTS)]
        # Client n follows two of the rooms.
        mine = [[rooms[n % DROP_ROOMS], rooms[(n + 1) % DROP_ROOMS]] for n in range(DROP_CLIENTS)]
        clients = [
            asyncio.create_task(
                dropping_client(
                    n, procs, str(users[n % DROP_USERS].token), mine[n], logs[n], stop, stats
                )
            )
            for n in range(DROP_CLIENTS)
        ]
        ended = asyncio.Event()
        traffic = asyncio.create_task(post_paced([owner, owner_b], rooms, DROP_RATE, ended, "d"))
        await asyncio.sleep(DROP_SECONDS)  # the length of the run
        ended.set()
        sent = await traffic
        stop.set()
        held = await asyncio.gather(*clients)
        truth = await truth_of(owner, rooms)
        assert sum(len(t) for t in truth.values()) == sent
        deadline = time.monotonic() + 30
        for n, log in enumerate(logs):
            await log.reach({room: len(truth[room]) for room in mine[n]}, deadline)
        for n, log in enumerate(logs):
            for room in mine[n]:
                assert_same_log(log.rooms[room], truth[room], f"client {n} room {room}")
        print(
            f"drops: {DROP_CLIENTS} clients, {sent} messages in {DROP_SECONDS} s; "
            f"{stats.drops} drops ({stats.aborts} without a close), {stats.resumes} resumes, "
            f"{stats.server_closes} closed by the server; "
            f"{sum(len(r) for log in logs for r in log.rooms.values())} frames checked"
        )
        assert stats.drops >= DROP_CLIENTS * 2
        for ws in held:
            await ws.close()
        for api in (owner, owner_b, *users):
            await api.close()
