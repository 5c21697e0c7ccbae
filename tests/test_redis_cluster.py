"""Redis Cluster: two processes on a three-node cluster fan out, keep presence and survive
the loss of the node their pub/sub link was on."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from .support import Api, ServerProcess, Ws, free_port


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli",
)


class Cluster:
    """Three master nodes of a private Redis Cluster on free loopback ports."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [cluster_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000",
                "--save", "", "--appendonly", "no",
                "--dir", str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        deadline = time.monotonic() + 10
        for port in self.ports:
            # Polling a starting server until it answers, with a deadline.
            while (
                b"PONG"
                not in subprocess.run(
                    ["redis-cli", "-p", str(port), "PING"], capture_output=True, check=False
                ).stdout
            ):
                assert time.monotonic() < deadline, f"redis node {port} did not start"
                time.sleep(0.05)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.create()
        yield c
    finally:
        c.stop()


async def wait_cluster_ok(port: int) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        async with asyncio.timeout(20):
            while (await client.cluster("INFO")).get("cluster_state") != "ok":  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # polling the cluster's own state: it has no event
    finally:
        await client.aclose()


@pytest.fixture
async def pair(
    cluster: Cluster, server_env: dict[str, str]
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    await wait_cluster_ok(cluster.ports[0])
    env = {
        **server_env,
        "REDIS_URL": f"redis://127.0.0.1:{cluster.ports[0]}/0",
        "REDIS_CLUSTER": "true",
    }
    a = await ServerProcess(env, "cluster-a").start()
    b = await ServerProcess(env, "cluster-b").start()
    yield a, b
    await a.stop()
    await b.stop()


@pytest.mark.timeout(120)
async def test_fan_out_and_presence_on_a_cluster(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """Messages and presence cross processes through a Redis Cluster, in order."""
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
    finally:
        for ws in (ws_a, ws_b):
            await ws.close()
        await alice.close()
        await bob.close()


@pytest.mark.timeout(120)
async def pubsub_node(cluster: Cluster) -> int:
    """The port of a node holding a pub/sub connection of the servers."""
    for port in cluster.ports:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            if await client.client_list(_type="pubsub"):
                return port
        finally:
            await client.aclose()
    raise AssertionError("no node has a pub/sub client")


async def test_pubsub_moves_when_its_node_dies(
    cluster: Cluster, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    """Killing the node that holds the pub/sub link: the link moves, nothing is lost."""
    a, b = pair
    alice = await Api.new_user(a.url, "clu")
    bob = await Api.new_user(b.url, "clu")
    room = (await alice.create_room("cluster-failover"))["id"]
    await bob.join(room)
    ws_b = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_b.join(room)
        await alice.post(room, "before")
        victim = await pubsub_node(cluster)
        cluster.procs[victim].kill()
        cluster.procs[victim].wait()
        # Stored while the link moves: delivered live or filled from PostgreSQL.
        for n in range(5):
            await alice.post(room, f"after {n}")
        got = await ws_b.messages(room, 6, timeout=30)
        assert [m["body"] for m in got] == ["before"] + [f"after {n}" for n in range(5)]
        assert [m["seq"] for m in got] == list(range(1, 7))
        # A process whose link was on the dead node noticed, and moved to a survivor.
        lost = [asyncio.create_task(p.wait_for_line("redis pub/sub link lost")) for p in pair]
        done, pending = await asyncio.wait(lost, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert done, "no process noticed its pub/sub node die"
        moved = pair[lost.index(done.pop())]
        await moved.wait_for_line("redis pub/sub reconnected", timeout=30)
    finally:
        await ws_b.close()
        await alice.close()
        await bob.close()
