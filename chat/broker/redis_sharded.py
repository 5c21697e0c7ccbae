"""The Redis Cluster broker: sharded pub/sub (`SSUBSCRIBE` / `SPUBLISH`), one link per shard.

Classic `PUBLISH` on a cluster is copied to every node, so pub/sub traffic grows
with the cluster instead of being split by it. Sharded pub/sub keeps a channel's
messages on the shard that owns its slot; channel names carry a hash tag
(`chat:room:{42}`) so that a room's channel and its presence keys
(`chat:presence:{42}`) share a slot.

A process keeps one pub/sub connection per master ("link"), not one per
channel. One supervisor task owns every link: it compares the channels wanted
with where each is subscribed, and settles the difference (opening links,
`SSUBSCRIBE`, `SUNSUBSCRIBE`). A link that fails, an `SSUBSCRIBE` answered with
`MOVED`, or a `sunsubscribe` the server pushes because the slot left the node
(a failover, a resharding) marks the placement stale: the supervisor re-learns
the topology, subscribes the channels on their new owners, and then calls
`on_reconnect`, the same re-sync from PostgreSQL as any reconnect, since
whatever was published meanwhile is gone. Links to healthy shards keep
delivering throughout.

redis-py's asyncio `ClusterPubSub` supports sharded channels too, but it
resubscribes by itself after a move; a drop it hides is a gap the node never
fills, so links here are plain connections with retries off, as in `redis.py`.

The control channel (log-outs) is sharded like the rooms: it is low-volume,
and one mechanism means one set of failure paths; its slot's shard carries it.
Each process also subscribes one canary channel per master, so that every
link is proven to deliver (`ping`), and every master has a link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from .. import metrics
from .base import Broker, OnMessage, OnReconnect
from .canary import Canary
from .outbox import Outbox
from .redis import POOL_SIZE

log = logging.getLogger("chat.broker")

# What a cluster that is away, failing over or half-configured raises. redis-py's
# RedisClusterException (a slot not covered, no node reachable at all) is not a
# RedisError, hence the tuple.
ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

# Seconds between canaries sent in the background (besides those of /readyz), so
# the canary metrics stay current.
CANARY_INTERVAL = 5.0
# Seconds a round of SSUBSCRIBE confirmations may take before its link is given up.
CONFIRM_TIMEOUT = 5.0
# Longest pause between two attempts to settle. Lower than the single-Redis
# broker's 2 s: during a failover each attempt is one slot-map read, and the
# sooner a promoted replica is seen, the shorter the rooms on that shard wait.
RETRY_MAX = 0.5


class _Link:
    """One pub/sub connection to one master, and the channels subscribed through it."""

    def __init__(self, name: str, client: aioredis.Redis) -> None:
        # The master's "host:port", as the cluster client names its nodes.
        self.name = name
        self.client = client
        self.pubsub: Any = client.pubsub()
        # Channels asked for on this link (confirmed or not yet).
        self.channels: set[str] = set()
        # SUNSUBSCRIBEs this process sent and whose reply has not come: any other
        # sunsubscribe is the server's, because the slot left the node.
        self.leaving: Counter[str] = Counter()
        # False once the connection failed: the supervisor replaces the link.
        self.alive = True
        # The task reading this connection.
        self.reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        with contextlib.suppress(*ERRORS):
            await self.pubsub.aclose()
            await self.client.aclose()


class ShardedRedisBroker(Broker):
    """Sharded pub/sub through a Redis Cluster: a link per master, moved with the slots."""

    def __init__(self, url: str, *, prefix: str = "chat", origin: str = "") -> None:
        # The REDIS_URL of one node; never logged, it may hold a password.
        self.url = url
        # Commands (SPUBLISH, presence scripts, counters) and the slot map.
        self.cluster = RedisCluster.from_url(
            url,
            max_connections=POOL_SIZE,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        )
        # The name presence and counters look for: the command client.
        self.redis: Any = self.cluster
        # Canary channel names start with this, and this process's origin.
        self.canary_base = f"{prefix}:canary:{{{origin or 'x'}"
        # Every channel the node wants, whether or not it is subscribed now.
        self.channels: set[str] = set()
        # Canary channel per master name (one whose slot that master owns).
        self.canaries: dict[str, str] = {}
        self.canary = Canary()
        # Master name -> its link; channel -> the link it is subscribed through.
        self.links: dict[str, _Link] = {}
        self.placed: dict[str, _Link] = {}
        # Channels whose SSUBSCRIBE the server confirmed on their current link.
        self.confirmed: set[str] = set()
        # Channel -> futures of subscribe() calls waiting for the confirmation.
        self.waiting: dict[str, list[asyncio.Future[None]]] = {}
        # Channel -> the node that dropped it (pushed sunsubscribe): until the slot map
        # names another owner, the map is older than the move.
        self.dropped: dict[str, str] = {}
        # Set when the wanted channels and the placement may differ.
        self.dirty = asyncio.Event()
        # The slot map must be read again before placing channels.
        self.stale = True
        # Something may have been published and not received: re-sync once settled.
        self.missed = False
        self.connected = False
        self.on_message: OnMessage | None = None
        self.on_reconnect: OnReconnect | None = None
        # The supervisor task, the background canary, the latest re-sync.
        self.task: asyncio.Task[None] | None = None
        self.canary_task: asyncio.Task[None] | None = None
        self.resync: asyncio.Future[None] | None = None
        # Publications on their way, sent in pipelines by one task.
        self.outbox = Outbox(self.cluster, "spublish", ERRORS)
        # Set once every wanted channel was first confirmed.
        self.first_connect = asyncio.Event()

    # -- life cycle -----------------------------------------------------------

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self.dirty.set()
        self.task = asyncio.create_task(self._run(), name="redis-sharded-pubsub")
        self.canary_task = asyncio.create_task(self._canary_loop(), name="redis-canary")
        try:
            await asyncio.wait_for(self.first_connect.wait(), 5)
        except TimeoutError:
            log.warning("redis cluster not reachable yet; serving and retrying in the background")

    async def disconnect(self) -> None:
        await self.outbox.close()
        for task in (self.canary_task, self.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.task = self.canary_task = None
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        self.placed.clear()
        self.connected = False
        await self.cluster.aclose()

    # -- the supervisor ---------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        ever = False
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                settled = await self._settle()
            except ERRORS as exc:
                if self.connected:
                    log.warning("redis pub/sub link lost", extra={"error": type(exc).__name__})
                else:
                    log.info("redis pub/sub not settled", extra={"error": repr(exc)[:200]})
                settled = False
            except Exception:
                # Whatever went wrong, this task must keep managing the links.
                log.exception("redis pub/sub settling failed")
                settled = False
            if not settled:
                self.connected = False
                self.stale = self.missed = True
                self.dirty.set()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 0.05
            if self.dirty.is_set():
                continue  # more changed while settling: settle that first
            self.connected = True
            self.first_connect.set()
            if self.missed and ever:
                log.warning("redis pub/sub reconnected; re-syncing rooms from postgresql")
                if self.on_reconnect is not None:
                    self.resync = asyncio.ensure_future(self.on_reconnect())
            self.missed = False
            ever = True

    async def _settle(self) -> bool:
        """Make the subscriptions match the channels wanted; False if some could not be."""
        if self.stale:
            await self._learn_topology()
        for name, link in list(self.links.items()):
            if not link.alive:
                self.connected = False
                del self.links[name]
                await link.close()
        wanted = self.channels | set(self.canaries.values())
        owners = {channel: self._owner(channel) for channel in wanted}
        for channel, gone_from in list(self.dropped.items()):
            owner = owners.get(channel)
            if owner is None:
                del self.dropped[channel]
            elif owner.name == gone_from:
                # A node this map still trusts said the slot left it (read from a
                # node that has not heard of the failover yet): read the map again.
                return False
        for channel, link in list(self.placed.items()):
            owner = owners.get(channel)
            if self.links.get(link.name) is not link:
                self._unplace(channel)
            elif owner is None or owner.name != link.name:
                # No longer wanted, or its slot moved: leave the old node.
                self._unplace(channel)
                link.leaving[channel] += 1
                with contextlib.suppress(*ERRORS):
                    await link.pubsub.sunsubscribe(channel)
        groups: dict[str, tuple[ClusterNode, list[str]]] = {}
        for channel, owner in owners.items():
            if channel not in self.placed:
                groups.setdefault(owner.name, (owner, []))[1].append(channel)
        loop = asyncio.get_running_loop()
        futures: list[tuple[_Link, asyncio.Future[None]]] = []
        ok = True
        for name, (node, channels) in groups.items():
            mine: list[tuple[_Link, asyncio.Future[None]]] = []
            try:
                link = self.links.get(name) or await self._open(node)
                for channel in channels:
                    future: asyncio.Future[None] = loop.create_future()
                    self.waiting.setdefault(channel, []).append(future)
                    mine.append((link, future))
                    self.placed[channel] = link
                    link.channels.add(channel)
                # One SSUBSCRIBE per slot: Redis refuses one that spans slots (CROSSSLOT).
                by_slot: dict[int, list[str]] = {}
                for channel in channels:
                    by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
                for same in by_slot.values():
                    await link.pubsub.ssubscribe(*same)
                if link.reader is None:
                    link.reader = asyncio.create_task(self._read(link), name=f"redis-link {name}")
                futures += mine
            except ERRORS as exc:
                # Its confirmations will not come: not waited for (the link is replaced).
                log.warning(
                    "redis shard link not opened", extra={"node": name, "error": type(exc).__name__}
                )
                if name in self.links:
                    self.links[name].alive = False
                ok = False
        if futures:
            done, _ = await asyncio.wait([f for _, f in futures], timeout=CONFIRM_TIMEOUT)
            for link, future in futures:
                if future not in done:
                    link.alive = False  # not confirming: replaced at the next round
                    ok = False
        # Those already placed and confirmed answer their waiters now (a channel
        # unsubscribed and wanted again before this round never left its link).
        for channel in list(self.waiting):
            if channel in self.confirmed:
                self._confirm(channel)
        ok = ok and all(link.alive for link in self.links.values())
        if ok:
            self.dropped.clear()
        return ok

    async def _learn_topology(self) -> None:
        """Read the slot map again, and pick a canary channel for each master."""
        await self.cluster.initialize()
        await self.cluster.nodes_manager.initialize()
        self.stale = False
        canaries: dict[str, str] = {}
        for node in self.cluster.get_primaries():
            for n in range(100_000):
                channel = f"{self.canary_base}.{n}}}"
                if self._owner(channel).name == node.name:
                    canaries[node.name] = channel
                    break
        self.canaries = canaries

    def _owner(self, channel: str) -> ClusterNode:
        node: ClusterNode = self.cluster.nodes_manager.get_node_from_slot(
            key_slot(channel.encode())
        )
        return node

    async def _open(self, node: ClusterNode) -> _Link:
        parts = urlsplit(self.url)
        netloc = f"{node.host}:{node.port}"
        if parts.username or parts.password:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        scheme = "rediss" if parts.scheme == "rediss" else "redis"
        client = aioredis.Redis.from_url(
            urlunsplit((scheme, netloc, "", "", "")),
            socket_connect_timeout=2,
            health_check_interval=5,
            # No silent reconnect: a dropped link must be seen, so the node re-syncs.
            retry=Retry(NoBackoff(), 0),
        )
        link = _Link(node.name, client)
        self.links[node.name] = link
        return link

    def _unplace(self, channel: str) -> None:
        link = self.placed.pop(channel, None)
        if link is not None:
            link.channels.discard(channel)
        self.confirmed.discard(channel)

    async def _read(self, link: _Link) -> None:
        try:
            while True:
                msg = await link.pubsub.get_message(timeout=1.0)
                if msg is not None:
                    self._handle(link, msg)
        except ERRORS as exc:
            # MOVED for an SSUBSCRIBE lands here too, as a ResponseError.
            if link.alive:
                log.warning(
                    "redis pub/sub link lost",
                    extra={"node": link.name, "error": type(exc).__name__},
                )
            link.alive = False
            self.connected = False
            self.stale = self.missed = True
            self.dirty.set()

    def _handle(self, link: _Link, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        channel = _text(msg["channel"]) if msg.get("channel") is not None else ""
        if kind == "smessage":
            if channel in self.canaries.values():
                self.canary.arrived(msg["data"])
            elif self.on_message is not None:
                try:
                    self.on_message(channel, msg["data"])
                except Exception:
                    # A bad frame from another process must not take the link down.
                    log.exception("broker frame not handled")
        elif kind == "ssubscribe":
            if self.placed.get(channel) is link:
                self.confirmed.add(channel)
                self._confirm(channel)
        elif kind == "sunsubscribe":
            if link.leaving[channel] > 0:
                link.leaving[channel] -= 1
                if not link.leaving[channel]:
                    del link.leaving[channel]
            elif self.placed.get(channel) is link:
                # The server dropped the subscription: the slot left this node.
                log.warning("redis shard channel moved", extra={"node": link.name})
                self.dropped[channel] = link.name
                self._unplace(channel)
                self.connected = False
                self.stale = self.missed = True
                self.dirty.set()

    def _confirm(self, channel: str) -> None:
        for future in self.waiting.pop(channel, []):
            if not future.done():
                future.set_result(None)

    # -- the Broker interface ---------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        if channel in self.confirmed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(channel, []).append(future)
        self.dirty.set()
        if not self.connected:
            return  # placed once the links are back; the node re-syncs after that
        try:
            await asyncio.wait_for(asyncio.shield(future), 2)
        except TimeoutError:
            log.warning("redis subscribe not confirmed", extra={"channel": channel})

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.waiting.pop(channel, None)
        self.dirty.set()

    async def publish(self, channel: str, payload: bytes) -> None:
        """Queue a publication (`outbox.py`): nothing waits for Redis here."""
        self.outbox.put(channel, payload)

    async def ping(self) -> bool:
        """The commands answer, and a canary came back on every link (one per master)."""
        if not self.connected:
            metrics.BROKER_CANARY_OK.set(0)
            return False
        try:
            await asyncio.wait_for(self.cluster.ping(), 2)
        except ERRORS:
            return False
        return await self.canary.check(list(self.canaries.values()), self.cluster.spublish)

    async def _canary_loop(self) -> None:
        while True:
            await asyncio.sleep(CANARY_INTERVAL)
            await self.ping()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
