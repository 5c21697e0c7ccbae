"""Counters in Redis, shared by every process: failures that lock a key, hits in a window.

A hash per key (`n` failures, `until` the lock's end in ms) or a plain counter
with an expiry; each script touches one key, and time is Redis's own, so every
process sees the same lock. The command client is the broker's (`redis.py`).
"""

from __future__ import annotations

from typing import Any

from .base import Counters

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


class RedisCounters(Counters):
    """Counters under `PREFIX:counter:KEY`, through the broker's command client."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        # Start of every key name.
        self.prefix = prefix
        self._failure = redis.register_script(_FAILURE)
        self._locked = redis.register_script(_LOCKED)
        self._hit = redis.register_script(_HIT)

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
