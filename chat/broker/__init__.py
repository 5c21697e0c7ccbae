"""The broker: publish/subscribe between the server's processes, and shared presence.

Small interfaces (`base.Broker`, `base.Presence`, `base.Counters`) with two backends picked
by URL: `memory` for a single process (no `REDIS_URL`) and Redis for many
processes (classic pub/sub on one Redis, sharded pub/sub on a Redis Cluster),
where presence and counters share the broker's command client.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Broker, Counters, OnMessage, OnReconnect, Presence, PresenceEntry
from .memory import MemoryBroker, MemoryCounters, MemoryPresence


@dataclass(frozen=True, slots=True)
class Backends:
    """Pub/sub, presence and counters, on one backend."""

    broker: Broker
    presence: Presence
    counters: Counters


def create_backends(
    url: str | None, origin: str, prefix: str = "chat", cluster: bool = False
) -> Backends:
    """Redis for a `redis://` URL (one command client shared), in-process for none.

    On a Redis Cluster the broker uses sharded pub/sub (`redis_sharded.py`);
    a single Redis keeps classic pub/sub (`redis.py`).
    """
    if not url:
        return Backends(MemoryBroker(), MemoryPresence(origin), MemoryCounters())
    from .redis import RedisBroker
    from .redis_counters import RedisCounters
    from .redis_presence import RedisPresence
    from .redis_sharded import ShardedRedisBroker

    broker: RedisBroker | ShardedRedisBroker
    if cluster:
        broker = ShardedRedisBroker(url, prefix=prefix, origin=origin)
    else:
        broker = RedisBroker(url, prefix=prefix, origin=origin)
    return Backends(
        broker, RedisPresence(broker.redis, origin, prefix), RedisCounters(broker.redis, prefix)
    )


__all__ = [
    "Backends",
    "Broker",
    "Counters",
    "MemoryBroker",
    "MemoryCounters",
    "MemoryPresence",
    "OnMessage",
    "OnReconnect",
    "Presence",
    "PresenceEntry",
    "create_backends",
]
