"""The broker: publish/subscribe between the server's processes, and shared presence.

Two small interfaces (`base.Broker`, `base.Presence`) with two backends picked
by URL: `memory` for a single process (no `REDIS_URL`) and Redis for many
processes, where presence shares the broker's command client.
"""

from __future__ import annotations

from .base import Broker, OnMessage, OnReconnect, Presence, PresenceEntry
from .memory import MemoryBroker, MemoryPresence


def create_backends(
    url: str | None, origin: str, prefix: str = "chat", cluster: bool = False
) -> tuple[Broker, Presence]:
    """Redis pub/sub and presence for a `redis://` URL, the in-process pair for none."""
    if not url:
        return MemoryBroker(), MemoryPresence(origin)
    from .redis import RedisBroker
    from .redis_presence import RedisPresence

    broker = RedisBroker(url, cluster)
    return broker, RedisPresence(broker.redis, origin, prefix)


__all__ = [
    "Broker",
    "MemoryBroker",
    "MemoryPresence",
    "OnMessage",
    "OnReconnect",
    "Presence",
    "PresenceEntry",
    "create_backends",
]
