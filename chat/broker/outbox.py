"""Publications on their way to Redis: queued without waiting, sent in pipelines, in order.

A PUBLISH per frame costs a write and a read per frame; under load the outbox
batches what has queued up into one round trip, in call order. Nothing waits
for Redis here: a publication lost with the link is read from PostgreSQL by
the other processes (reconcile, or the re-sync after their reconnect). Both
Redis brokers use it: `PUBLISH` on one node, `SPUBLISH` on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from .. import metrics

log = logging.getLogger("chat.broker")

# Publications sent together in one pipeline, at most.
PUBLISH_BATCH = 500
# Publications held while Redis is slow or away; beyond it the oldest are dropped
# (the other processes read those messages from PostgreSQL).
OUTBOX_LIMIT = 100_000


class Outbox:
    """One flusher task sends what callers queued, `command` by `command`."""

    def __init__(self, client: Any, command: str, errors: tuple[type[BaseException], ...]) -> None:
        # The redis-py client (one node or a cluster) the publications go through.
        self.client = client
        # "publish", or "spublish" for sharded pub/sub.
        self.command = command
        # What counts as Redis failing (the batch is then lost, and counted).
        self.errors = errors
        # Publications waiting for the flusher, oldest first, and the flusher task.
        self.queue: deque[tuple[str, bytes]] = deque()
        self.flusher: asyncio.Future[None] | None = None

    def put(self, channel: str, payload: bytes) -> None:
        if len(self.queue) >= OUTBOX_LIMIT:
            self.queue.popleft()
            metrics.PUBLISH_FAILURES.inc()
        self.queue.append((channel, payload))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush())

    async def close(self, timeout: float = 2) -> None:
        """What was published before a shutdown still goes out, if Redis answers in time."""
        if self.flusher is not None and not self.flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.flusher), timeout)
            self.flusher.cancel()

    async def _flush(self) -> None:
        while self.queue:
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), PUBLISH_BATCH))]
            try:
                if len(batch) == 1:
                    await getattr(self.client, self.command)(*batch[0])
                    continue
                pipe = self.client.pipeline(transaction=False)
                for channel, payload in batch:
                    getattr(pipe, self.command)(channel, payload)
                await pipe.execute()
            except self.errors as exc:
                metrics.PUBLISH_FAILURES.inc(len(batch))
                log.warning(
                    "publish failed", extra={"frames": len(batch), "error": type(exc).__name__}
                )
