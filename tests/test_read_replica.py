"""A read replica: a private primary and a streaming replica (`pg_basebackup -R`) started
here. History pages come from the replica while it keeps up; with its replay paused or the
replica stopped, every read is still correct (from the primary) and nothing waits on it."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import deque
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat.store import replay_lag

from .support import HANG, Api, PrivatePostgres, PrivateReplica, ServerProcess

# The replica tests start a private primary and replica; the server uses the shared Redis.
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs the shared Redis of the test run"
)


@pytest.fixture
async def replicated(
    server_env: dict[str, str],
) -> AsyncIterator[tuple[ServerProcess, PrivateReplica]]:
    primary = PrivatePostgres()
    replica = PrivateReplica(primary)
    server: ServerProcess | None = None
    try:
        await primary.start()
        await replica.start()
        env = {
            **server_env,
            "DATABASE_URL": primary.url,
            "DATABASE_READ_URL": replica.url,
            # Short, so that a paused replay is bypassed within a test's patience.
            "READ_MAX_LAG": "1",
        }
        server = await ServerProcess(env, "replica").start()
        yield server, replica
    finally:
        if server is not None:
            await server.stop()
        await replica.remove()
        await primary.remove()


def test_replay_lag_from_wal_marks() -> None:
    """Lag is the age of the oldest primary position not replayed; an idle primary is no lag."""
    marks: deque[tuple[float, int]] = deque([(10.0, 100), (11.0, 200), (12.0, 300)])
    assert replay_lag(marks, 300, 12.5) == 0.0  # caught up with every sample
    assert not marks
    marks.extend([(20.0, 300), (21.0, 300), (22.0, 300)])
    assert replay_lag(marks, 300, 22.0) == 0.0  # nothing written: no lag however old
    marks.extend([(30.0, 400), (31.0, 500), (32.0, 600)])
    assert replay_lag(marks, 450, 32.5) == 1.5  # 500, sampled at 31.0, not replayed yet
    assert [m[1] for m in marks] == [500, 600]
    assert replay_lag(marks, None, 40.0) == 0.0  # not a standby
    assert not marks


async def metric(api: Api, name: str) -> float:
    """A sample of the server's /metrics (0 if it has none yet)."""
    text = (await api.raw("GET", "/metrics")).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def until(api: Api, name: str, want: float) -> None:
    """Poll a metric until it has the wanted value (the server has no event to await)."""
    async with asyncio.timeout(HANG):
        while await metric(api, name) != want:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


REPLICA_READS = 'chat_db_reads_total{target="replica"}'
PRIMARY_READS = 'chat_db_reads_total{target="primary"}'
USABLE = "chat_db_replica_usable"


async def bodies(api: Api, room: int) -> list[str]:
    return [m["body"] for m in await api.history(room)]


@pytest.mark.faults
@needs_redis
@pytest.mark.timeout(120)
async def test_history_from_replica_and_replay_paused(
    replicated: tuple[ServerProcess, PrivateReplica],
) -> None:
    """History is served by the replica while it keeps up; with its replay paused, pages
    stay complete at once (from the primary), and the replica is bypassed once behind."""
    server, replica = replicated
    alice = await Api.new_user(server.url, "rep")
    conn = await asyncpg.connect(replica.url)
    try:
        room = (await alice.create_room("replica"))["id"]
        for n in range(5):
            await alice.post(room, f"m{n}")
        await until(alice, USABLE, 1)
        # A page the replica has replayed comes from the replica.
        async with asyncio.timeout(HANG):
            while await metric(alice, REPLICA_READS) == 0:
                assert await bodies(alice, room) == [f"m{n}" for n in range(5)]
        assert await metric(alice, "chat_db_replica_lag_seconds") <= 1

        await conn.execute("SELECT pg_wal_replay_pause()")
        for n in range(5, 10):
            await alice.post(room, f"m{n}")
        # Still usable (lag under a second), yet the page has every acknowledged message.
        assert await bodies(alice, room) == [f"m{n}" for n in range(10)]
        # Writes keep coming while replay stays paused: past READ_MAX_LAG it is bypassed.
        async with asyncio.timeout(HANG):
            while await metric(alice, USABLE) != 0:
                await alice.post(room, "more")
                await asyncio.sleep(0.2)  # a steady trickle of writes, not synchronisation
        before = await metric(alice, PRIMARY_READS)
        history = await bodies(alice, room)
        assert history[:10] == [f"m{n}" for n in range(10)]
        assert set(history[10:]) == {"more"}
        assert await metric(alice, PRIMARY_READS) == before + 1
        assert await metric(alice, "chat_db_replica_lag_seconds") > 1

        await conn.execute("SELECT pg_wal_replay_resume()")
        await until(alice, USABLE, 1)
        assert await bodies(alice, room) == history
    finally:
        await conn.close()
        await alice.close()


@pytest.mark.faults
@needs_redis
@pytest.mark.timeout(120)
async def test_replica_stopped(replicated: tuple[ServerProcess, PrivateReplica]) -> None:
    """The replica stops: reads go to the primary at once, correct; /readyz stays ready;
    the replica is used again once it is back."""
    server, replica = replicated
    alice = await Api.new_user(server.url, "rep")
    try:
        room = (await alice.create_room("replica-down"))["id"]
        for n in range(5):
            await alice.post(room, f"m{n}")
        await until(alice, USABLE, 1)
        await replica.stop()
        for n in range(5, 8):
            await alice.post(room, f"m{n}")
        # The first read after the stop fails over to the primary within itself.
        assert await bodies(alice, room) == [f"m{n}" for n in range(8)]
        await until(alice, USABLE, 0)
        assert await bodies(alice, room) == [f"m{n}" for n in range(8)]
        assert await alice.request("GET", "/readyz", 200) == {"status": "ready"}
        assert await metric(alice, "chat_db_replica_lag_seconds") == float("inf")

        await replica.restart()
        await until(alice, USABLE, 1)
        served = await metric(alice, REPLICA_READS)
        assert await bodies(alice, room) == [f"m{n}" for n in range(8)]
        assert await metric(alice, REPLICA_READS) == served + 1
    finally:
        await alice.close()


@pytest.mark.faults
@needs_redis
@pytest.mark.timeout(120)
async def test_search_directory_and_threads_read_the_replica(
    replicated: tuple[ServerProcess, PrivateReplica],
) -> None:
    """Search matches, the directory and the followed threads come from the replica;
    search's rooms (membership as of now) from the primary, so a member removed a moment
    ago finds nothing."""
    server, _ = replicated
    alice = await Api.new_user(server.url, "srep")
    bob = await Api.new_user(server.url, "srep")
    try:
        room = (await alice.create_room("replicated kingfisher"))["id"]
        await bob.join(room)
        await alice.post(room, "the kingfisher dives")
        await until(alice, USABLE, 1)
        before = await metric(alice, REPLICA_READS)
        async with asyncio.timeout(HANG):  # until the replica has replayed the message
            query = {"q": "kingfisher"}
            while not (await bob.request("GET", "/api/search", 200, params=query))["messages"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling: the replica's replay has no event
        hits = await bob.request("GET", "/api/search", 200, params={"q": "kingfisher"})
        assert [m["body"] for m in hits["messages"]] == ["the kingfisher dives"]
        found = await bob.request("GET", "/api/rooms/directory", 200, params={"q": "kingfisher"})
        assert [r["id"] for r in found["rooms"]] == [room]
        # A reply makes both follow the thread; the followed list is a replica read too.
        root = hits["messages"][0]["id"]
        await bob.request(
            "POST", f"/api/rooms/{room}/messages", 201, json={"body": "so it does", "thread": root}
        )
        async with asyncio.timeout(HANG):  # until the replica has replayed the reply
            while not (await alice.request("GET", "/api/threads", 200))["threads"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling: the replica's replay has no event
        threads = (await alice.request("GET", "/api/threads", 200))["threads"]
        assert [(t["room"], t["root"]["id"], t["unread"]) for t in threads] == [(room, root, 1)]
        assert await metric(alice, REPLICA_READS) >= before + 5
        await bob.request("DELETE", f"/api/rooms/{room}/members/{bob.username}", 204)
        hits = await bob.request("GET", "/api/search", 200, params={"q": "kingfisher"})
        assert hits["messages"] == []
    finally:
        await alice.close()
        await bob.close()
