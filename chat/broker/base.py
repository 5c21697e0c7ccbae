"""The interfaces behind the broker package: pub/sub, presence and counters.

`Broker` is five pub/sub methods (plus `ping`, for readiness). It carries
opaque bytes per channel; delivery is at most once and may drop frames while
a link is down: `on_reconnect` tells the node so that it can re-sync its rooms
from PostgreSQL.

`Counters` count failures and hits (wrong log-ins, sign-ups) for every process
at once, so that spreading attempts over processes gains nothing.

`Presence` keeps who is online where: entries are (room, user) pairs held by
a process; they expire unless refreshed, so the users of a process that died
leave on their own. It lives beside the broker, not inside it (centrifuge
splits `Broker` and `PresenceManager` the same way), and shares its backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..protocol import User

# (channel, payload) from any process, this one included.
OnMessage = Callable[[str, bytes], None]
# Called after the broker link came back: frames may have been lost meanwhile.
OnReconnect = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One user being in one room on this process."""

    room: int
    user: User
    # msgspec encoding of `user`, kept so that every call uses the same bytes.
    user_json: str


class Broker(ABC):
    """Moves frames between processes."""

    # True while the link to the broker is up (always, in memory).
    connected: bool = True

    @abstractmethod
    async def connect(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None: ...

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving `channel`; returns once the broker has confirmed it."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the broker answers now."""


class Presence(ABC):
    """Who has a connection joined to each room, on any process."""

    @abstractmethod
    async def add(self, entry: PresenceEntry, ttl: float) -> tuple[bool, list[User]]:
        """Add or refresh an entry. Returns (the user just came online in the room,
        users whose entries had all expired and were swept out)."""

    @abstractmethod
    async def remove(self, entry: PresenceEntry) -> bool:
        """Remove an entry; True when it was the user's last one in the room."""

    @abstractmethod
    async def online(self, room: int) -> list[User]:
        """Users with a live entry in the room, on any process, by id."""


class Counters(ABC):
    """Counts shared by every process, with Redis's (or this process's) clock."""

    @abstractmethod
    async def failure(self, key: str, free: int, delay: float, delay_max: float) -> float:
        """Count a failure against `key`; the seconds it is now locked for.

        No lock below `free` failures, then `delay` doubling with each one, at most
        `delay_max` (`limits.lock_seconds`). The count is forgotten `delay_max`
        after the lock ends.
        """

    @abstractmethod
    async def locked(self, key: str) -> float:
        """Seconds `key` stays locked; 0 if it is not."""

    @abstractmethod
    async def forget(self, key: str) -> None:
        """Drop `key`'s failures and lock."""

    @abstractmethod
    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count one against `key` in a window of `window` seconds from its first hit:
        the count so far and the seconds until the window ends."""
