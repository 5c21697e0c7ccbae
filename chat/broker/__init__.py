"""The broker: publish/subscribe between the server's processes, and shared presence.

One small interface (`base.Broker`) with two implementations picked by URL:
`memory` for a single process (no `REDIS_URL`) and `redis` for many processes.
"""

from __future__ import annotations

from .base import Broker, OnMessage, OnReconnect, PresenceEntry
from .memory import MemoryBroker


def create_broker(
    url: str | None, origin: str, prefix: str = "chat", cluster: bool = False
) -> Broker:
    """The Redis broker for a `redis://` URL, the in-process one for none."""
    if not url:
        return MemoryBroker(origin)
    from .redis import RedisBroker

    return RedisBroker(url, origin, prefix, cluster)


__all__ = ["Broker", "MemoryBroker", "OnMessage", "OnReconnect", "PresenceEntry", "create_broker"]
