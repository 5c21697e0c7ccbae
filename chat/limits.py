"""Rate limits: token buckets per connection and per client address, and who is exempt.

Each process counts on its own; the limits are per process, which is what
protects it. Buckets are cheap (four floats) and the address table is bounded.
(Log-in and sign-up counters are shared by all processes: see `throttle.py`.)
`exempt` is the one rule for which client addresses skip the per-address limits.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

from .config import Settings


def exempt(address: str, production: bool) -> bool:
    """Whether per-address limits skip this client: loopback, outside production only.

    A development server exempts loopback so that a local load test needs no
    tuning; in production every address counts, since a proxy or a tunnel on the
    same host makes anyone's traffic arrive from loopback.
    """
    if production:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # not an IP address (a Unix socket, a test client): no exemption
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def lock_seconds(failures: int, free: int, delay: float, delay_max: float) -> float:
    """How long `failures` wrong log-ins lock out: none below `free`, then doubling, capped."""
    if failures < free:
        return 0.0
    return min(delay * 2.0 ** min(failures - free, 62), delay_max)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; spent one or many at a time."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def grant(self, wanted: int) -> int:
        """Spend up to `wanted` tokens; how many were spent."""
        self._refill()
        granted = max(0, min(wanted, int(self.tokens)))
        self.tokens -= granted
        return granted

    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


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

    def __init__(
        self, rate: float, burst: int, production: bool, max_addresses: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = burst
        # Whether loopback counts too (see `exempt`).
        self.production = production
        self.max_addresses = max_addresses
        # Address -> bucket, least recently seen first.
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: str) -> bool:
        if exempt(address, self.production):
            return True
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst)
            if len(self.buckets) > self.max_addresses:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(address)
        return bucket.take()
