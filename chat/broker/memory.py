"""The in-process broker, presence and counters: one process only, when there is no `REDIS_URL`."""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict

from ..limits import lock_seconds
from ..protocol import User
from .base import Broker, Counters, OnMessage, OnReconnect, Presence, PresenceEntry


class MemoryBroker(Broker):
    """Pub/sub inside one process; the same semantics as Redis."""

    def __init__(self) -> None:
        # Channels subscribed by this process.
        self.channels: set[str] = set()
        # The node's callback, set by connect().
        self.on_message: OnMessage | None = None

    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        self.on_message = on_message

    async def disconnect(self) -> None:
        self.on_message = None

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)

    async def publish(self, channel: str, payload: bytes) -> None:
        if self.on_message is not None and channel in self.channels:
            self.on_message(channel, payload)

    async def ping(self) -> bool:
        return True


class MemoryPresence(Presence):
    """Presence inside one process; entries expire as they do in Redis."""

    def __init__(self, origin: str) -> None:
        # This process's id, part of every entry.
        self.origin = origin
        # room -> {(origin, user id): (expiry, user)}
        self.presence: dict[int, dict[tuple[str, int], tuple[float, User]]] = defaultdict(dict)

    def _users(self, room: int) -> set[int]:
        return {uid for (_, uid) in self.presence[room]}

    async def add(self, entry: PresenceEntry, ttl: float) -> tuple[bool, list[User]]:
        left = self._sweep(entry.room)
        entries = self.presence[entry.room]
        online = entry.user.id in self._users(entry.room)
        entries[(self.origin, entry.user.id)] = (time.monotonic() + ttl, entry.user)
        return not online, left

    async def remove(self, entry: PresenceEntry) -> bool:
        entries = self.presence[entry.room]
        if entries.pop((self.origin, entry.user.id), None) is None:
            return False
        return entry.user.id not in self._users(entry.room)

    def _sweep(self, room: int) -> list[User]:
        """Drop expired entries; the users who left the room by that."""
        now = time.monotonic()
        entries = self.presence[room]
        expired = [key for key, (expiry, _) in entries.items() if expiry <= now]
        gone = {key[1]: entries.pop(key)[1] for key in expired}
        remaining = self._users(room)
        return [user for uid, user in gone.items() if uid not in remaining]

    async def online(self, room: int) -> list[User]:
        now = time.monotonic()
        users = {u.id: u for expiry, u in self.presence[room].values() if expiry > now}
        return [users[uid] for uid in sorted(users)]


# Counters kept at most; the least recently used go first.
MAX_COUNTERS = 100_000


class MemoryCounters(Counters):
    """Counters inside one process."""

    def __init__(self) -> None:
        # key -> [count, locked until, forgotten at] (monotonic seconds), least recent
        # first; bounded, so that counting unknown usernames cannot fill the memory.
        self.counters: OrderedDict[str, list[float]] = OrderedDict()

    def _counter(self, key: str, now: float) -> list[float]:
        counter = self.counters.get(key)
        if counter is None or counter[2] <= now:
            counter = self.counters[key] = [0, 0.0, now]
            if len(self.counters) > MAX_COUNTERS:
                self.counters.popitem(last=False)
        self.counters.move_to_end(key)
        return counter

    async def failure(self, key: str, free: int, delay: float, delay_max: float) -> float:
        now = time.monotonic()
        counter = self._counter(key, now)
        counter[0] += 1
        wait = lock_seconds(int(counter[0]), free, delay, delay_max)
        if wait:
            counter[1] = now + wait
        counter[2] = now + wait + delay_max
        return wait

    async def locked(self, key: str) -> float:
        counter = self.counters.get(key)
        return max(0.0, counter[1] - time.monotonic()) if counter else 0.0

    async def forget(self, key: str) -> None:
        self.counters.pop(key, None)

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        counter = self._counter(key, now)
        if counter[0] == 0:
            counter[2] = now + window
        counter[0] += 1
        # min: (now + window) - now can come out a rounding error above window.
        return int(counter[0]), min(window, counter[2] - now)
