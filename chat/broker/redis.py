"""The Redis broker: one pub/sub connection per process, presence in sorted sets.

Only this module knows Redis. The pub/sub link is owned by one task that
reconnects with jittered backoff and, on every reconnect after the first, calls
`on_reconnect` once its channels are subscribed again: Redis drops whatever
was published while a subscriber was away, so the node re-syncs from
PostgreSQL. redis-py's own silent resubscription is turned off (no retries on
the pub/sub client) so that no drop goes unnoticed.

Presence: per room a sorted set of `origin|user id|user json` members scored by
expiry (ms, Redis's own clock) and a hash counting each user's live entries.
Lua scripts keep the two consistent and report who came or went; the keys of a
room share a hash tag, so the scripts run on Redis Cluster too.

Counters: a hash per key (`n` failures, `until` the lock's end in ms) or a plain
counter with an expiry; each script touches one key, and time is Redis's own,
so every process sees the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from ..protocol import User
from .base import Broker, OnMessage, OnReconnect, PresenceEntry

log = logging.getLogger("chat.broker")

_SWEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m)
  local uid, json = string.match(m, '^[^|]*|([^|]*)|(.*)$')
  if redis.call('HINCRBY', KEYS[2], uid, -1) <= 0 then
    redis.call('HDEL', KEYS[2], uid)
    table.insert(left, json)
  end
end
"""

# KEYS: zset, counts. ARGV: member, user id, ttl ms. Returns {joined, {left json...}}.
_ADD = (
    _SWEEP
    + """
local joined = 0
if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then joined = 1 end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
return {joined, left}
"""
)

_SWEEP_ONLY = _SWEEP + "\nreturn left\n"

# KEYS: zset, counts. ARGV: member, user id. Returns 1 when that was the user's last entry.
_REMOVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    return 1
  end
end
return 0
"""

_LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: counter. ARGV: free failures, delay ms, longest delay ms. Returns the lock in ms
# (the same rule as limits.lock_seconds).
_FAILURE = (
    _NOW
    + """
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[1])
local wait = 0
if n >= free then
  wait = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - free, 62), tonumber(ARGV[3]))
  wait = math.floor(wait)
  redis.call('HSET', KEYS[1], 'until', string.format('%d', now + wait))
end
redis.call('PEXPIRE', KEYS[1], wait + math.floor(tonumber(ARGV[3])))
return wait
"""
)

# KEYS: counter. Returns the ms its lock has left.
_LOCKED = (
    """
local u = redis.call('HGET', KEYS[1], 'until')
if not u then return 0 end
"""
    + _NOW
    + """
return math.max(0, tonumber(u) - now)
"""
)

# KEYS: counter. ARGV: window ms. Returns {count, ms left in the window}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""

_user_decoder = msgspec.json.Decoder(User)

# Connections of the command pool. Beyond it a command waits for a free one (up to
# POOL_WAIT seconds) instead of opening another: an unbounded pool grows to every
# burst of concurrent joins and publishes and never shrinks.
POOL_SIZE = 16
POOL_WAIT = 5.0
# Publications sent together in one pipeline, at most.
PUBLISH_BATCH = 500
# Publications held while Redis is slow or away; beyond it the oldest are dropped
# (the other processes read those messages from PostgreSQL).
OUTBOX_LIMIT = 100_000


class RedisBroker(Broker):
    """Pub/sub and presence through one Redis server (or cluster)."""

    def __init__(self, url: str, origin: str, prefix: str = "chat", cluster: bool = False) -> None:
        # The REDIS_URL; never logged, it may hold a password.
        self.url = url
        # Redis Cluster: commands go through the cluster client (presence keys of a
        # room share a hash tag, so each script runs on one node) and the pub/sub
        # link is a plain connection to one node, since a PUBLISH on any node of a
        # cluster reaches the subscribers of every node.
        self.cluster: RedisCluster | None = None
        # Where the pub/sub link goes: the URL's node, or in a cluster any known node.
        self.pubsub_urls = [url]
        # This process's id: part of presence members and of its own channel.
        self.origin = origin
        # Start of every key and channel name.
        self.prefix = prefix
        # Commands (publish, scripts) on a small bounded pool that retries briefly.
        self.redis: Any
        if cluster:
            self.cluster = self.redis = RedisCluster.from_url(
                url,
                max_connections=POOL_SIZE,
                socket_connect_timeout=2,
                socket_timeout=5,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            )
        else:
            self.redis = aioredis.Redis.from_pool(
                aioredis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=POOL_SIZE,
                    timeout=POOL_WAIT,
                    socket_connect_timeout=2,
                    socket_timeout=5,
                    retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                )
            )
        # Every channel this process wants, whether or not the link is up now.
        self.channels: set[str] = {f"{prefix}:process:{origin}"}
        # Channel -> futures of subscribe() calls waiting for Redis to confirm.
        self.waiting: dict[str, list[asyncio.Future[None]]] = {}
        self.connected = False
        self.on_message: OnMessage | None = None
        self.on_reconnect: OnReconnect | None = None
        # The current pub/sub object, while the link is up.
        self.pubsub: Any = None
        # The task that owns the pub/sub link.
        self.task: asyncio.Task[None] | None = None
        # Reconnects after the first connection, for metrics and tests.
        self.reconnects = 0
        # The node's re-sync after the latest reconnect.
        self.resync: asyncio.Future[None] | None = None
        # Publications waiting for the flusher, oldest first, and the flusher task.
        self.outbox: deque[tuple[str, bytes]] = deque()
        self.flusher: asyncio.Future[None] | None = None
        # Publications that never reached Redis (link down, or the outbox full).
        self.publish_failures = 0
        # Set once the first subscription round is confirmed.
        self.first_connect = asyncio.Event()
        self._add = self.redis.register_script(_ADD)
        self._sweep = self.redis.register_script(_SWEEP_ONLY)
        self._remove = self.redis.register_script(_REMOVE)
        self._list = self.redis.register_script(_LIST)
        self._failure = self.redis.register_script(_FAILURE)
        self._locked = self.redis.register_script(_LOCKED)
        self._hit = self.redis.register_script(_HIT)

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self.task = asyncio.create_task(self._run(), name="redis-pubsub")
        try:
            await asyncio.wait_for(self.first_connect.wait(), 5)
        except TimeoutError:
            log.warning("redis not reachable yet; serving and retrying in the background")

    async def disconnect(self) -> None:
        if self.flusher is not None and not self.flusher.done():
            # What was published before the shutdown still goes out, if Redis answers.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.flusher), 2)
            self.flusher.cancel()
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
        attempt = 0
        while True:
            attempt += 1
            if self.cluster is not None:
                await self._learn_nodes()
            client = aioredis.Redis.from_url(
                self.pubsub_urls[attempt % len(self.pubsub_urls)],
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
                    self.reconnects += 1
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

    async def _learn_nodes(self) -> None:
        """The cluster's nodes, for the pub/sub link to move to when its node is away."""
        assert self.cluster is not None
        try:
            await self.cluster.initialize()
        except (RedisError, OSError):
            return  # keep the ones known; the URL's node is among them
        parts = urlsplit(self.url)
        urls = []
        for node in self.cluster.get_nodes():
            netloc = f"{node.host}:{node.port}"
            if parts.username or parts.password:
                netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
            scheme = "rediss" if parts.scheme == "rediss" else "redis"
            urls.append(urlunsplit((scheme, netloc, "", "", "")))
        if urls:
            self.pubsub_urls = urls

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "message":
            if self.on_message is not None:
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
        """Queue a publication; one task sends what has queued up as one pipeline.

        A PUBLISH per frame costs a write and a read per frame; under load the
        outbox batches them into one round trip, in call order. Nothing waits for
        Redis here: a publication lost with the link is read from PostgreSQL by
        the other processes (reconcile, or re-sync after their reconnect).
        """
        if len(self.outbox) >= OUTBOX_LIMIT:
            self.outbox.popleft()
            self.publish_failures += 1
        self.outbox.append((channel, payload))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush_outbox())

    async def _flush_outbox(self) -> None:
        while self.outbox:
            batch = [self.outbox.popleft() for _ in range(min(len(self.outbox), PUBLISH_BATCH))]
            try:
                if len(batch) == 1:
                    await self.redis.publish(*batch[0])
                    continue
                pipe = self.redis.pipeline(transaction=False)
                for channel, payload in batch:
                    pipe.publish(channel, payload)
                await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                self.publish_failures += len(batch)
                log.warning(
                    "publish failed", extra={"frames": len(batch), "error": type(exc).__name__}
                )

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), 2)) and self.connected
        except (RedisError, OSError, TimeoutError):
            return False

    # -- presence -------------------------------------------------------------

    def _keys(self, room: int) -> list[str]:
        tag = f"{self.prefix}:presence:{{{room}}}"
        return [tag, tag + ":n"]

    def _member(self, entry: PresenceEntry) -> str:
        return f"{self.origin}|{entry.user.id}|{entry.user_json}"

    async def presence_add(self, entry: PresenceEntry, ttl: float) -> tuple[bool, list[User]]:
        joined, left = await self._add(
            keys=self._keys(entry.room),
            args=[self._member(entry), entry.user.id, int(ttl * 1000)],
        )
        return bool(joined), [_user_decoder.decode(j) for j in left]

    async def presence_remove(self, entry: PresenceEntry) -> bool:
        return bool(
            await self._remove(
                keys=self._keys(entry.room), args=[self._member(entry), entry.user.id]
            )
        )

    async def presence_sweep(self, room: int) -> list[User]:
        left = await self._sweep(keys=self._keys(room), args=[])
        return [_user_decoder.decode(j) for j in left]

    async def presence_list(self, room: int) -> list[User]:
        members = await self._list(keys=self._keys(room)[:1], args=[])
        users: dict[int, User] = {}
        for member in members:
            _, _, json = _text(member).split("|", 2)
            user = _user_decoder.decode(json)
            users[user.id] = user
        return [users[uid] for uid in sorted(users)]

    # -- counters -------------------------------------------------------------

    def _counter(self, key: str) -> str:
        return f"{self.prefix}:counter:{key}"

    async def failure(self, key: str, free: int, delay: float, delay_max: float) -> float:
        ms = await self._failure(
            keys=[self._counter(key)],
            args=[free, round(delay * 1000), round(delay_max * 1000)],
        )
        return int(ms) / 1000

    async def locked(self, key: str) -> float:
        return int(await self._locked(keys=[self._counter(key)], args=[])) / 1000

    async def forget(self, key: str) -> None:
        await self.redis.delete(self._counter(key))

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        count, ms = await self._hit(keys=[self._counter(key)], args=[round(window * 1000)])
        return int(count), max(0, int(ms)) / 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
