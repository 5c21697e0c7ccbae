"""The canary: a publication a process sends to a channel of its own and must get back.

A `PING` proves the socket to Redis answers; it does not prove that the
subscription still delivers (a link can be connected and subscribed on a node
that no longer owns the channel's slot, or a server can accept publications
and drop them: centrifugal/centrifugo#1189). So readiness publishes a token on
each of the process's canary channels, through the same path as a message,
and waits for it to come back on the process's own subscription.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from .. import metrics

# Seconds a canary may take to come back before the link counts as not delivering.
CANARY_TIMEOUT = 2.0


class Canary:
    """Tokens in flight on the canary channels, and the check that sends them."""

    def __init__(self) -> None:
        # Token -> the future its arrival resolves.
        self.waiting: dict[bytes, asyncio.Future[None]] = {}

    def arrived(self, payload: bytes) -> None:
        """A publication on a canary channel came back (another's token is ignored)."""
        future = self.waiting.pop(payload, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def check(
        self, channels: Sequence[str], publish: Callable[[str, bytes], Awaitable[object]]
    ) -> bool:
        """Publish a token on every channel; True once all came back within the bound."""
        if not channels:
            return False
        loop = asyncio.get_running_loop()
        tokens = [b"canary:" + secrets.token_bytes(8).hex().encode() for _ in channels]
        futures = [loop.create_future() for _ in channels]
        for token, future in zip(tokens, futures, strict=True):
            self.waiting[token] = future
        start = time.monotonic()
        try:
            async with asyncio.timeout(CANARY_TIMEOUT):
                for channel, token in zip(channels, tokens, strict=True):
                    await publish(channel, token)
                await asyncio.gather(*futures)
        except Exception:
            # Timeout, or a publish refused: either way the path does not deliver now.
            metrics.BROKER_CANARY_FAILURES.inc()
            metrics.BROKER_CANARY_OK.set(0)
            return False
        finally:
            for token in tokens:
                self.waiting.pop(token, None)
        metrics.BROKER_CANARY_SECONDS.set(time.monotonic() - start)
        metrics.BROKER_CANARY_OK.set(1)
        return True
