"""Faults: Redis restarted, a server process killed or stopped, a publish that never happened.

Each scenario runs its own redis-server on a free port and two server processes
on it (with the run's database), so killing them disturbs no other test. The
check is always the same: what every client received equals the room's log in
PostgreSQL, with no gap and no repeat, and every acknowledged send is stored.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import websockets

from .support import Api, Follower, RedisServer, ServerProcess, Ws, assert_log

Pair = tuple[ServerProcess, ServerProcess]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
async def cluster(
    server_env: dict[str, str], redis_server: RedisServer
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two processes of one service on the private Redis and the run's database."""
    env = {
        **server_env,
        "REDIS_URL": redis_server.url,
        "GRACEFUL_SHUTDOWN": "5",
        # A dead process's users leave presence within this many seconds.
        "PRESENCE_TTL": "3",
    }
    a, b = ServerProcess(env, "fa"), ServerProcess(env, "fb")
    try:
        await asyncio.gather(a.start(), b.start())
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def crowd(owner: Api, room: int, count: int) -> list[Api]:
    """`count` new members of `room`."""
    users = []
    for _ in range(count):
        user = await Api.new_user(owner.base_url, "m")
        await user.join(room)
        users.append(user)
    return users


async def reply_or_close(ws: Ws, ref: str, timeout: float = 10) -> dict[str, Any] | None:
    """The reply to `ref`, or None once the connection closed without one."""
    deadline = time.monotonic() + timeout
    while True:
        get = asyncio.ensure_future(ws.frames.get())
        closed = asyncio.ensure_future(ws.closed.wait())
        try:
            await asyncio.wait(
                {get, closed},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in (get, closed):
                if not waiter.done():
                    waiter.cancel()
        if get.done() and not get.cancelled():
            frame = get.result()
            if frame.get("ref") == ref and frame["type"] in ("ok", "error"):
                return frame
        elif closed.done():
            return None
        else:
            raise TimeoutError(f"no reply to {ref}")


async def sender(
    urls: list[str], token: str, room: int, name: str, stop: asyncio.Event, pace: float
) -> list[dict[str, Any]]:
    """Send until `stop`, one at a time; after a drop, resend the unacknowledged one elsewhere.

    Returns the acknowledged messages. The resend carries the same client_id, so
    a send that was stored but not acknowledged is not stored twice.
    """
    acked: list[dict[str, Any]] = []
    n = 0
    attempt = 0
    while not stop.is_set():
        url = urls[attempt % len(urls)]
        attempt += 1
        try:
            ws = await Ws.connect(url, token)
        except (OSError, TimeoutError, websockets.WebSocketException):
            await asyncio.sleep(0.1)  # reconnect backoff
            continue
        try:
            while not stop.is_set():
                ref = f"{name}-{n}"
                try:
                    await ws.send(
                        {"type": "send", "ref": ref, "room": room, "body": ref, "client_id": ref}
                    )
                except websockets.ConnectionClosed:
                    break
                reply = await reply_or_close(ws, ref)
                if reply is None:
                    break  # resend this one on the next connection
                assert reply["type"] == "ok", reply
                acked.append(reply["message"])
                n += 1
                await asyncio.sleep(pace)  # pacing, below the rate limit
        finally:
            await ws.close()
    return acked


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_redis_restart_mid_traffic(cluster: Pair, redis_server: RedisServer) -> None:
    """Redis killed and restarted mid-traffic: every client's log equals PostgreSQL's."""
    a, b = cluster
    owner = await Api.new_user(a.url, "owner")
    owner_b = owner.on(b.url)
    room = (await owner.create_room("redis-restart"))["id"]
    users = await crowd(owner, room, 3)
    followers = [
        Follower([a.ws_url, b.ws_url], owner.token, room),
        Follower([b.ws_url, a.ws_url], users[0].token, room),
        Follower([a.ws_url, b.ws_url], users[1].token, room),
        Follower([b.ws_url, a.ws_url], users[2].token, room),
    ]
    stop = asyncio.Event()

    async def post(api: Api, name: str) -> int:
        count = 0
        while not stop.is_set():
            await api.post(room, f"{name}{count}")
            count += 1
            await asyncio.sleep(0.02)  # pacing
        return count

    try:
        for follower in followers:
            await follower.joined()
        posters = [asyncio.create_task(post(owner, "a")), asyncio.create_task(post(owner_b, "b"))]
        await asyncio.sleep(1.0)  # traffic before the fault
        await redis_server.kill()
        await asyncio.sleep(1.5)  # Redis stays down this long
        await redis_server.start()
        await asyncio.sleep(2.0)  # traffic after it is back
        stop.set()
        posted = sum(await asyncio.gather(*posters))
        history = await owner.all_messages(room)
        assert len(history) == posted
        for follower in followers:
            await follower.wait_for(posted, timeout=20)
            assert_log(follower.log, history)
        # Presence lived in the Redis that was lost: it is back, on both processes.
        everyone = sorted(u.user["id"] for u in (owner, *users))
        for api in (owner, owner_b):
            online = await api.request("GET", f"/api/rooms/{room}/presence", 200)
            assert sorted(u["id"] for u in online["online"]) == everyone
        assert any("redis pub/sub reconnected" in line for line in a.lines + b.lines)
        # Live traffic flows through Redis again, both ways.
        ws = await Ws.connect(b.ws_url, users[0].token)
        try:
            await ws.join(room)
            await owner.post(room, "after the restart")
            (got,) = await ws.messages(room, 1, timeout=5)
            assert got["seq"] == posted + 1
        finally:
            await ws.close()
    finally:
        stop.set()
        for follower in followers:
            await follower.close()
        for api in (owner, owner_b, *users):
            await api.close()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_server_killed_clients_resume_on_the_other(cluster: Pair) -> None:
    """SIGKILL to one process under load: its clients resume on the other; nothing acked is lost."""
    a, b = cluster
    owner = await Api.new_user(a.url, "owner")
    owner_b = owner.on(b.url)
    room = (await owner.create_room("kill"))["id"]
    users = await crowd(owner, room, 4)
    followers = [
        Follower([a.ws_url, b.ws_url], owner.token, room),
        Follower([a.ws_url, b.ws_url], users[0].token, room),
        Follower([b.ws_url, a.ws_url], users[1].token, room),
        Follower([b.ws_url, a.ws_url], users[2].token, room),
    ]
    # Connected to a only and never back: the process's death takes it out of presence.
    lurker = await Ws.connect(a.ws_url, users[3].token)
    watcher = await Ws.connect(b.ws_url, owner.token)
    stop = asyncio.Event()
    try:
        for follower in followers:
            await follower.joined()
        await lurker.join(room)
        await watcher.join(room)
        senders = [
            asyncio.create_task(
                sender([a.ws_url, b.ws_url], users[0].token, room, "s0", stop, 0.06)
            ),
            asyncio.create_task(
                sender([a.ws_url, b.ws_url], users[1].token, room, "s1", stop, 0.06)
            ),
            asyncio.create_task(
                sender([b.ws_url, a.ws_url], users[2].token, room, "s2", stop, 0.06)
            ),
        ]
        await asyncio.sleep(1.5)  # traffic before the fault
        await a.kill()
        await asyncio.sleep(2.0)  # traffic after it, on b alone
        stop.set()
        acked = [m for task in senders for m in await task]
        history = await owner_b.all_messages(room)
        stored = {m["id"] for m in history}
        assert all(m["id"] in stored for m in acked), "an acknowledged send was lost"
        client_ids = [m["client_id"] for m in history]
        assert len(client_ids) == len(set(client_ids)), "a resend was stored twice"
        for follower in followers:
            await follower.wait_for(len(history), timeout=20)
            assert_log(follower.log, history)
        assert all(f.url == b.ws_url for f in followers[:2])
        # The dead process's users leave presence on their own (PRESENCE_TTL is 3 s here).
        while True:
            diff = await watcher.expect("presence_diff", timeout=10, skip=("message",))
            if diff["leaves"] == [users[3].user]:
                break
        online = await owner_b.request("GET", f"/api/rooms/{room}/presence", 200)
        assert users[3].user not in online["online"]
        assert {u["id"] for u in online["online"]} == {
            owner.user["id"],
            *(u.user["id"] for u in users[:3]),
        }
    finally:
        stop.set()
        await lurker.close()
        await watcher.close()
        for follower in followers:
            await follower.close()
        for api in (owner, owner_b, *users):
            await api.close()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_sigterm_closes_1012_and_keeps_acked(cluster: Pair) -> None:
    """SIGTERM: the process's clients get 1012 and every send acknowledged before is stored."""
    a, b = cluster
    owner = await Api.new_user(a.url, "owner")
    owner_b = owner.on(b.url)
    room = (await owner.create_room("sigterm"))["id"]
    users = await crowd(owner, room, 2)
    listeners = [await Ws.connect(a.ws_url, u.token) for u in users]
    sending = await Ws.connect(a.ws_url, owner.token)
    survivor = await Ws.connect(b.ws_url, users[0].token)
    try:
        for ws in (*listeners, sending, survivor):
            await ws.join(room)
        oks: list[dict[str, Any]] = []

        async def send_until_closed() -> None:
            n = 0
            try:
                while True:  # pipelined: replies are collected as they come
                    ref = f"t{n}"
                    frame = {
                        "type": "send",
                        "ref": ref,
                        "room": room,
                        "body": ref,
                        "client_id": ref,
                    }
                    await sending.send(frame)
                    n += 1
                    await asyncio.sleep(0.05)  # pacing, below the rate limit
            except websockets.ConnectionClosed:
                return

        async def collect() -> None:
            while True:
                frame = await sending.frames.get()
                if frame["type"] == "ok" and "message" in frame:
                    oks.append(frame["message"])

        pump = asyncio.create_task(send_until_closed())
        collector = asyncio.create_task(collect())
        await survivor.messages(room, 5)  # traffic is flowing
        await a.signal(signal.SIGTERM)
        for ws in (*listeners, sending):
            assert await ws.close_code(timeout=15) == 1012
        await pump
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        while not sending.frames.empty():
            frame = sending.frames.get_nowait()
            if frame["type"] == "ok" and "message" in frame:
                oks.append(frame["message"])
        # uvicorn re-raises the SIGTERM once it has shut down cleanly.
        assert await a.wait_exit(20) in (0, -signal.SIGTERM)
        assert any("Application shutdown complete" in line for line in a.lines), a.lines[-20:]
        failures = [
            ln for ln in a.lines if ln.startswith(("error", "critical")) or "Traceback" in ln
        ]
        assert not failures, failures
        assert oks
        history = await owner_b.all_messages(room)
        stored = {m["id"] for m in history}
        assert all(m["id"] in stored for m in oks), "an acknowledged send was lost"
        # The survivor on b saw them all, in order.
        seen = await survivor.messages(room, len(history) - 5, timeout=15)
        assert [m["seq"] for m in seen] == list(range(6, len(history) + 1))
    finally:
        for ws in (*listeners, sending, survivor):
            await ws.close()
        for api in (owner, owner_b, *users):
            await api.close()


async def insert_silently(database_url: str, room: int, sender: int, body: str) -> int:
    """Store a message the way the server does, and publish nothing: a process that died."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            seq = await conn.fetchval(
                "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", room
            )
            await conn.execute(
                "INSERT INTO messages (room_id, seq, sender_id, body) VALUES ($1, $2, $3, $4)",
                room,
                seq,
                sender,
                body,
            )
    finally:
        await conn.close()
    return int(seq)


@pytest.mark.faults
@pytest.mark.timeout(60)
async def test_unpublished_message_arrives_within_10s(
    servers: Pair, database_url: str, alice: Api, bob: Api
) -> None:
    """A message committed but never published reaches every joined connection within 10 s."""
    a, b = servers
    room = (await alice.create_room("silent"))["id"]
    await bob.join(room)
    clients = [
        await Ws.connect(a.ws_url, alice.token),
        await Ws.connect(b.ws_url, bob.token),
        await Ws.connect(b.ws_url, alice.token),
    ]
    try:
        for ws in clients:
            await ws.join(room)
        await alice.post(room, "published")
        for ws in clients:
            await ws.messages(room, 1)
        started = time.monotonic()
        seq = await insert_silently(database_url, room, alice.user["id"], "never published")
        assert seq == 2
        for ws in clients:
            (got,) = await ws.messages(room, 1, timeout=10)
            assert got["seq"] == 2 and got["body"] == "never published"
        assert time.monotonic() - started < 10
        # A silent one followed at once by a published one: the gap is filled, in order.
        await insert_silently(database_url, room, bob.user["id"], "silent again")
        await bob.post(room, "right behind it")
        for ws in clients:
            got = await ws.messages(room, 2, timeout=10)
            assert [(m["seq"], m["body"]) for m in got] == [
                (3, "silent again"),
                (4, "right behind it"),
            ]
        history = await alice.all_messages(room)
        assert [m["seq"] for m in history] == [1, 2, 3, 4]
    finally:
        for ws in clients:
            await ws.close()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_logout_and_removal_during_redis_outage(
    cluster: Pair, redis_server: RedisServer
) -> None:
    """A log-out or a removal while Redis is down still reaches the other process."""
    a, b = cluster
    owner = await Api.new_user(a.url, "owner")
    member = await Api.new_user(a.url, "member")
    leaver = await Api.new_user(a.url, "leaver")
    room = (await owner.create_room("outage", private=True))["id"]
    await owner.add(room, member.username)
    await owner.add(room, leaver.username)
    on_b = await Ws.connect(b.ws_url, leaver.token)  # its token is revoked during the outage
    removed = await Ws.connect(b.ws_url, member.token)  # removed from the room meanwhile
    witness = await Ws.connect(b.ws_url, owner.token)
    try:
        for ws in (on_b, removed, witness):
            await ws.join(room)
        await redis_server.kill()
        await leaver.request("DELETE", "/api/sessions/current", 204)
        await owner.request("DELETE", f"/api/rooms/{room}/members/{member.username}", 204)
        await owner.post(room, "during the outage")
        # The witness on b gets it from PostgreSQL; the removed member must not.
        (got,) = await witness.messages(room, 1, timeout=15)
        assert got["body"] == "during the outage"
        await redis_server.start()
        assert await on_b.close_code(timeout=15) == 4001
        await owner.post(room, "after the outage")
        (got,) = await witness.messages(room, 1, timeout=15)
        assert got["body"] == "after the outage"
        frames = []
        while not removed.frames.empty():
            frames.append(removed.frames.get_nowait())
        assert not [f for f in frames if f["type"] == "message"], frames
        refused = await removed.call({"type": "join", "room": room})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
    finally:
        for ws in (on_b, removed, witness):
            await ws.close()
        for api in (owner, member, leaver):
            await api.close()
