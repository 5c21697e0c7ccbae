"""The Redis broker: one pub/sub connection per process, publications pipelined.

Only this module knows Redis. The pub/sub link is owned by one task that
reconnects with jittered backoff and, on every reconnect after the first, calls
`on_reconnect` once its channels are subscribed again: Redis drops whatever
was published while a subscriber was away, so the node re-syncs from
PostgreSQL. redis-py's own silent resubscription is turned off (no retries on
the pub/sub client) so that no drop goes unnoticed.

Presence (`redis_presence.py`) shares this broker's command client. `ping`
sends a canary through the pub/sub path (`canary.py`). A Redis Cluster is served
by `redis_sharded.py` instead, with sharded pub/sub.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from .. import metrics
from .base import Broker, OnMessage, OnReconnect
from .canary import Canary
from .outbox import Outbox

log = logging.getLogger("chat.broker")

# Connections of the command pool. Beyond it a command waits for a free one (up to
# POOL_WAIT seconds) instead of opening another: an unbounded pool grows to every
# burst of concurrent joins and publishes and never shrinks.
POOL_SIZE = 16
POOL_WAIT = 5.0


class RedisBroker(Broker):
    """Pub/sub through one Redis server (a cluster uses `redis_sharded.py`)."""

    def __init__(self, url: str, *, prefix: str = "chat", origin: str = "") -> None:
        # The REDIS_URL; never logged, it may hold a password.
        self.url = url
        # Commands (publish, scripts) on a small bounded pool that retries briefly.
        self.redis: Any = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_SIZE,
                timeout=POOL_WAIT,
                socket_connect_timeout=2,
                socket_timeout=5,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            )
        )
        # This process's own channel for the readiness canary (`ping`); its
        # publications never reach the node.
        self.canary_channel = f"{prefix}:canary:{origin or secrets.token_hex(6)}"
        self.canary = Canary()
        # Every channel this process wants, whether or not the link is up now.
        self.channels: set[str] = {self.canary_channel}
        # Channel -> futures of subscribe() calls waiting for Redis to confirm.
        self.waiting: dict[str, list[asyncio.Future[None]]] = {}
        self.connected = False
        self.on_message: OnMessage | None = None
        self.on_reconnect: OnReconnect | None = None
        # The current pub/sub object, while the link is up.
        self.pubsub: Any = None
        # The task that owns the pub/sub link.
        self.task: asyncio.Task[None] | None = None
        # The node's re-sync after the latest reconnect.
        self.resync: asyncio.Future[None] | None = None
        # Publications on their way, sent in pipelines by one task.
        self.outbox = Outbox(self.redis, "publish", (RedisError, OSError, TimeoutError))
        # Set once the first subscription round is confirmed.
        self.first_connect = asyncio.Event()

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self.task = asyncio.create_task(self._run(), name="redis-pubsub")
        try:
            await asyncio.wait_for(self.first_connect.wait(), 5)
        except TimeoutError:
            log.warning("redis not reachable yet; serving and retrying in the background")

    async def disconnect(self) -> None:
        await self.outbox.close()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        await self.redis.aclose()

    async def _run(self) -> None:
        delay = 0.05
        ever = False
        while True:
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=2,
                health_check_interval=5,
                retry=Retry(NoBackoff(), 0),
            )
            pubsub = client.pubsub()
            try:
                wanted = set(self.channels)
                await pubsub.subscribe(*sorted(wanted))
                pending = set(wanted)
                # Wait for every confirmation before saying the link is up.
                while pending:
                    msg = await pubsub.get_message(timeout=5)
                    if msg is None:
                        raise TimeoutError("redis did not confirm the subscriptions")
                    self._handle(msg)
                    if msg["type"] == "subscribe":
                        pending.discard(_text(msg["channel"]))
                    # subscribe() while the link is down only records the channel: those
                    # recorded during this round join it (no await from here to `self.pubsub`).
                    more = self.channels - wanted if not pending else set()
                    if more:
                        wanted |= more
                        pending |= more
                        await pubsub.subscribe(*sorted(more))
                self.pubsub = pubsub
                self.connected = True
                # And those unsubscribed during the round leave it.
                gone = wanted - self.channels
                if gone:
                    await pubsub.unsubscribe(*sorted(gone))
                self.first_connect.set()
                for channel in list(self.waiting):
                    if channel in self.channels:
                        self._confirm(channel)
                delay = 0.05
                if ever:
                    log.warning("redis pub/sub reconnected; re-syncing rooms from postgresql")
                    if self.on_reconnect is not None:
                        self.resync = asyncio.ensure_future(self.on_reconnect())
                ever = True
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._handle(msg)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning("redis pub/sub link lost", extra={"error": type(exc).__name__})
                self.connected = False
                self.pubsub = None
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
            finally:
                self.connected = False
                self.pubsub = None
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
                except (RedisError, OSError):
                    pass

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "message":
            if msg["channel"] in (self.canary_channel, self.canary_channel.encode()):
                self.canary.arrived(msg["data"])
            elif self.on_message is not None:
                try:
                    self.on_message(_text(msg["channel"]), msg["data"])
                except Exception:
                    # A bad frame from another process must not take the link down.
                    log.exception("broker frame not handled")
        elif kind == "subscribe":
            self._confirm(_text(msg["channel"]))

    def _confirm(self, channel: str) -> None:
        for future in self.waiting.pop(channel, []):
            if not future.done():
                future.set_result(None)

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        pubsub = self.pubsub
        if pubsub is None:
            return  # the reconnect loop subscribes it; the node re-syncs after that
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(channel, []).append(future)
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(future), 2)
        except (RedisError, OSError, TimeoutError):
            log.warning("redis subscribe not confirmed", extra={"channel": channel})

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.waiting.pop(channel, None)
        pubsub = self.pubsub
        if pubsub is not None:
            try:
                await pubsub.unsubscribe(channel)
            except (RedisError, OSError):
                pass  # the link is down; the reconnect subscribes only what is wanted

    async def publish(self, channel: str, payload: bytes) -> None:
        """Queue a publication (`outbox.py`): nothing waits for Redis here."""
        self.outbox.put(channel, payload)

    async def ping(self) -> bool:
        """Redis answers, and a canary published now comes back on this process's link."""
        if not self.connected:
            metrics.BROKER_CANARY_OK.set(0)
            return False
        try:
            if not await asyncio.wait_for(self.redis.ping(), 2):
                return False
        except (RedisError, OSError, TimeoutError):
            return False
        return await self.canary.check([self.canary_channel], self.redis.publish)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
