"""`python -m bench.pubsub_cost`: what a publication costs Redis, on one Redis and on a cluster.

The per-shard half of the capacity model (docs/benchmarks.md). It starts private
Redis servers (one plain, and a 3-master cluster), subscribes P "processes" (the
server's own broker classes, one per simulated process) to R room channels
each, publishes M messages spread over the rooms through one more broker, and
reads each node's `INFO cpu` before and after. Three layouts:

- single:  one Redis, classic SUBSCRIBE/PUBLISH (`RedisBroker`);
- classic: the cluster, classic PUBLISH on one node and SUBSCRIBE on another
  (what REDIS_CLUSTER did before sharded pub/sub): every node handles every message;
- sharded: the cluster with SSUBSCRIBE/SPUBLISH (`ShardedRedisBroker`): each
  message is handled by the master owning its room's slot only.

Results (Redis CPU microseconds per message, in total and on the busiest node)
are printed and written to bench/out/pubsub-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

import redis.asyncio as aioredis

from bench.servers import BENCH, BenchCluster, free_port
from chat.broker.base import Broker
from chat.broker.redis import RedisBroker
from chat.broker.redis_sharded import ShardedRedisBroker

OUT = BENCH / "out"


async def node_cpu(urls: list[str]) -> list[float]:
    """CPU seconds (user + sys) each Redis server has used so far."""
    out = []
    for url in urls:
        r = aioredis.Redis.from_url(url)
        try:
            info = await r.info("cpu")
            out.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
        finally:
            await r.aclose()
    return out


async def measure(
    layout: str, urls: list[str], make: Any, subscribers: int, rooms: int, messages: int
) -> dict[str, Any]:
    """Publish `messages` over `rooms` channels to `subscribers` brokers; Redis CPU per message."""
    received = 0
    done = asyncio.Event()

    def on_message(channel: str, payload: bytes) -> None:
        nonlocal received
        received += 1
        if received >= messages * subscribers:
            done.set()

    async def nothing() -> None:
        return None

    channels = [
        f"bench:room:{{{n}}}" if layout == "sharded" else f"bench:room:{n}" for n in range(rooms)
    ]
    subs: list[Broker] = []
    for i in range(subscribers):
        broker = make(i + 1)
        for channel in channels:
            await broker.subscribe(channel)
        await broker.connect(on_message, nothing)
        subs.append(broker)
    publisher = make(0)
    await publisher.subscribe("bench:control")
    await publisher.connect(lambda c, p: None, nothing)
    payload = b"x" * 300  # about a message frame with its envelope
    try:
        await asyncio.sleep(0.5)  # the links' first canaries and settling, not measured
        cpu0 = await node_cpu(urls)
        start = time.monotonic()
        for n in range(messages):
            await publisher.publish(channels[n % rooms], payload)
            if n % 500 == 499:
                await asyncio.sleep(0)  # let the outbox flush in batches as under load
        await asyncio.wait_for(done.wait(), 120)
        wall = time.monotonic() - start
        cpu1 = await node_cpu(urls)
    finally:
        for broker in [*subs, publisher]:
            await broker.disconnect()
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "layout": layout,
        "nodes": len(urls),
        "subscribers": subscribers,
        "rooms": rooms,
        "messages": messages,
        "received": received,
        "wall_s": round(wall, 3),
        "redis_cpu_s_per_node": [round(u, 3) for u in used],
        "us_per_message_total": round(sum(used) / messages * 1e6, 2),
        "us_per_message_busiest_node": round(max(used) / messages * 1e6, 2),
    }


async def main_async(args: argparse.Namespace) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    single_port = free_port()
    single = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(single_port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    cluster = BenchCluster(masters=3)
    try:
        await cluster.start()
        single_url = f"redis://127.0.0.1:{single_port}/0"
        for _ in range(100):
            try:
                r = aioredis.Redis.from_url(single_url)
                await r.ping()
                await r.aclose()
                break
            except OSError:
                await asyncio.sleep(0.05)

        def classic(i: int) -> Broker:
            return RedisBroker(cluster.urls[i % len(cluster.urls)], origin=f"p{i}")

        shape = (args.subscribers, args.rooms, args.messages)
        for _ in range(args.repeat):
            results.append(
                await measure(
                    "single",
                    [single_url],
                    lambda i: RedisBroker(single_url, origin=f"p{i}"),
                    *shape,
                )
            )
            # Classic pub/sub on the cluster: the publisher on one node, subscribers on others.
            results.append(await measure("classic", cluster.urls, classic, *shape))
            results.append(
                await measure(
                    "sharded",
                    cluster.urls,
                    lambda i: ShardedRedisBroker(cluster.url, prefix="bench", origin=f"p{i}"),
                    *shape,
                )
            )
            for r in results[-3:]:
                print(json.dumps(r), flush=True)
    finally:
        cluster.stop()
        single.kill()
        await single.wait()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = OUT / f"pubsub-cost-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"-> {path}")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pubsub_cost", description=__doc__)
    p.add_argument("--subscribers", type=int, default=4, help="simulated server processes")
    p.add_argument("--rooms", type=int, default=300, help="room channels each subscribes")
    p.add_argument("--messages", type=int, default=20000, help="publications per layout")
    p.add_argument("--repeat", type=int, default=1)
    sys.exit(asyncio.run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
