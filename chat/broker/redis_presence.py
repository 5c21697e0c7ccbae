"""Presence in Redis: who is online in each room, across every process.

Per room a sorted set of `origin|user id|user json` members scored by expiry
(ms, Redis's own clock) and a hash counting each user's live entries. Lua
scripts keep the two consistent and report who came or went; the keys of a
room share a hash tag, so the scripts run on Redis Cluster too. The command
client is the broker's (`redis.py`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..protocol import User
from .base import Presence, PresenceEntry

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

_user_decoder = msgspec.json.Decoder(User)


class RedisPresence(Presence):
    """Presence entries in Redis, through the broker's command client."""

    def __init__(self, redis: Any, origin: str, prefix: str) -> None:
        # This process's id: part of every member, so processes never touch each other's.
        self.origin = origin
        # Start of every key name.
        self.prefix = prefix
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)
        self._list = redis.register_script(_LIST)

    def _keys(self, room: int) -> list[str]:
        tag = f"{self.prefix}:presence:{{{room}}}"
        return [tag, tag + ":n"]

    def _member(self, entry: PresenceEntry) -> str:
        return f"{self.origin}|{entry.user.id}|{entry.user_json}"

    async def add(self, entry: PresenceEntry, ttl: float) -> tuple[bool, list[User]]:
        joined, left = await self._add(
            keys=self._keys(entry.room),
            args=[self._member(entry), entry.user.id, int(ttl * 1000)],
        )
        return bool(joined), [_user_decoder.decode(j) for j in left]

    async def remove(self, entry: PresenceEntry) -> bool:
        return bool(
            await self._remove(
                keys=self._keys(entry.room), args=[self._member(entry), entry.user.id]
            )
        )

    async def online(self, room: int) -> list[User]:
        members = await self._list(keys=self._keys(room)[:1], args=[])
        users: dict[int, User] = {}
        for member in members:
            _, _, json = _text(member).split("|", 2)
            user = _user_decoder.decode(json)
            users[user.id] = user
        return [users[uid] for uid in sorted(users)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
