"""Redis Cluster: two processes on a private 3-master, 3-replica cluster fan out through
sharded pub/sub, keep presence, prove their links with a canary, and lose nothing
when a master is killed mid-traffic and its replica takes over."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .support import Api, RedisCluster, ServerProcess, Ws

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli",
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path, masters=3, replicas=1)
    try:
        c.create()
        yield c
    finally:
        c.stop()


@pytest.fixture
async def pair(
    cluster: RedisCluster, server_env: dict[str, str]
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    await cluster.wait_ok()
    env = {**server_env, "REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
    a = ServerProcess(env, "cluster-a")
    b = ServerProcess(env, "cluster-b")
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.timeout(120)
async def test_sharded_fan_out_presence_and_canary(
    cluster: RedisCluster, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    """Messages and presence cross processes in order; room channels are sharded channels
    on the owning master only, none is on classic pub/sub; /readyz passes its canary."""
    a, b = pair
    alice = await Api.new_user(a.url, "clu")
    bob = await Api.new_user(b.url, "clu")
    room = (await alice.create_room("cluster"))["id"]
    await bob.join(room)
    ws_a = await Ws.connect(a.ws_url, alice.token)
    ws_b = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_a.join(room)
        await ws_b.join(room)
        online = await bob.request("GET", f"/api/rooms/{room}/presence", 200)
        assert {u["id"] for u in online["online"]} == {alice.user["id"], bob.user["id"]}
        for n in range(20):
            await (alice if n % 2 else bob).post(room, f"m{n}")
        got = await ws_b.messages(room, 20)
        assert [m["seq"] for m in got] == list(range(1, 21))
        got = await ws_a.messages(room, 20)
        assert [m["body"] for m in got] == [f"m{n}" for n in range(20)]

        prefix = a.env["REDIS_PREFIX"]
        channel = f"{prefix}:room:{{{room}}}"
        owner = cluster.owner(channel)
        # The presence keys of the room hash to the same master.
        assert cluster.owner(f"{prefix}:presence:{{{room}}}") == owner
        for port in cluster.alive():
            sharded = cluster.channels(port, sharded=True)
            assert (channel in sharded) == (port == owner), (port, owner, sharded)
            classic = cluster.channels(port, sharded=False)
            assert not [c for c in classic if c.startswith(f"{prefix}:")], classic
        # Each process holds one link per master (canaries included), not one per channel.
        for port in cluster.master_ports():
            clients = cluster.cli(port, "CLIENT", "LIST", "TYPE", "pubsub").splitlines()
            assert len(clients) == 2, clients

        for server in pair:
            there = alice.on(server.url)
            try:
                assert await there.request("GET", "/readyz", 200) == {"status": "ready"}
            finally:
                await there.close()
        text = (await alice.raw("GET", "/metrics")).text
        assert "chat_broker_canary_ok 1.0" in text
    finally:
        for ws in (ws_a, ws_b):
            await ws.close()
        await alice.close()
        await bob.close()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_master_failover_mid_traffic(
    cluster: RedisCluster, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    """The master of a room's slot is killed while messages flow; its replica takes over,
    the subscriptions move to it, and every acknowledged message arrives in order."""
    a, b = pair
    alice = await Api.new_user(a.url, "fo")
    bob = await Api.new_user(b.url, "fo")
    room = (await alice.create_room("cluster-failover"))["id"]
    await bob.join(room)
    ws_b = await Ws.connect(b.ws_url, bob.token)
    stop = asyncio.Event()
    acked: list[int] = []

    async def traffic() -> None:
        n = 0
        while not stop.is_set():
            acked.append((await alice.post(room, f"m{n}"))["seq"])
            n += 1
            await asyncio.sleep(0.02)  # a steady rate, not synchronisation

    sender = asyncio.create_task(traffic())
    try:
        await ws_b.join(room)
        prefix = a.env["REDIS_PREFIX"]
        channel = f"{prefix}:room:{{{room}}}"
        victim = cluster.owner(channel)
        got = await ws_b.messages(room, 10)
        killed = time.monotonic()
        cluster.kill(victim)
        promoted = asyncio.create_task(cluster.promoted(victim))
        # Both processes had a link on the dead master (one per master): both move.
        await asyncio.gather(
            *(p.wait_for_line("redis pub/sub reconnected", timeout=60) for p in pair)
        )
        moved = time.monotonic() - killed
        took = await promoted - killed
        new_owner = cluster.owner(channel)
        assert new_owner != victim
        # Traffic goes on past the move, then stops.
        seen = len(acked)
        async with asyncio.timeout(30):
            while len(acked) < seen + 10:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling the sender's progress: it has no event
        stop.set()
        await sender
        got += await ws_b.messages(room, len(acked) - len(got), timeout=30)
        assert [m["seq"] for m in got] == list(range(1, len(acked) + 1))
        assert acked == list(range(1, len(acked) + 1))
        # The room's channel now lives on the promoted replica.
        assert channel in cluster.channels(new_owner, sharded=True)
        print(
            f"failover: replica promoted {took:.2f} s after the kill; "
            f"both processes re-subscribed {moved:.2f} s after the kill; "
            f"{len(acked)} messages acknowledged, all delivered in order"
        )
        for server in pair:
            there = alice.on(server.url)
            try:
                await there.request("GET", "/readyz", 200)
            finally:
                await there.close()
    finally:
        stop.set()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await ws_b.close()
        await alice.close()
        await bob.close()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_manual_failover_moves_subscriptions(
    cluster: RedisCluster, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    """A graceful failover (`CLUSTER FAILOVER` on the replica): the old master keeps its
    connections but drops the slot's sharded subscriptions (sunsubscribe); the processes
    move them to the new master and re-sync; messages keep arriving in order."""
    a, b = pair
    alice = await Api.new_user(a.url, "mf")
    bob = await Api.new_user(b.url, "mf")
    room = (await alice.create_room("cluster-manual-failover"))["id"]
    await bob.join(room)
    ws_b = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_b.join(room)
        for n in range(5):
            await alice.post(room, f"before {n}")
        got = await ws_b.messages(room, 5)
        channel = f"{a.env['REDIS_PREFIX']}:room:{{{room}}}"
        old = cluster.owner(channel)
        new = cluster.replica_of(old)
        assert "OK" in cluster.cli(new, "CLUSTER", "FAILOVER")
        # The old master pushed sunsubscribe over a connection that stayed up.
        await b.wait_for_line("redis shard channel moved", timeout=30)
        await b.wait_for_line("redis pub/sub reconnected", timeout=30)
        assert cluster.owner(channel) == new
        assert channel in cluster.channels(new, sharded=True)
        assert channel not in cluster.channels(old, sharded=True)
        for n in range(5):
            await alice.post(room, f"after {n}")
        got += await ws_b.messages(room, 5)
        assert [m["seq"] for m in got] == list(range(1, 11))
    finally:
        await ws_b.close()
        await alice.close()
        await bob.close()
