"""Rate limits: token buckets per connection and per client address.

Each process counts on its own; the limits are per process, which is what
protects it. Buckets are cheap (four floats) and the address table is bounded.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from .config import Settings


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Limits:
    """What is counted per connection: refusals (4008) and typing.

    The send, join and replay budgets are per user (`budgets.py`).
    """

    __slots__ = ("last_typing", "refusals")

    def __init__(self, settings: Settings) -> None:
        self.refusals = 0
        self.last_typing = 0.0


class AddressLimiter:
    """WebSocket handshakes per second per client address, over a bounded table."""

    def __init__(self, rate: float, burst: int, max_addresses: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        # Address -> bucket, least recently seen first.
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: str) -> bool:
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst)
            if len(self.buckets) > self.max_addresses:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(address)
        return bucket.take()
