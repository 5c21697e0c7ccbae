"""Who is online in each room: this process's entries, and the diffs it announces.

Each (room, user) with a local connection joined has an entry in the shared
`Presence` backend (Redis, or memory for one process), refreshed well before
it expires so that the users of a process that dies leave on their own. When
a user's first connection joins a room or their last one leaves, or an
expired entry is swept out, the room's connections on every process get a
`presence_diff`.
"""

from __future__ import annotations

import asyncio

from . import metrics
from .broker import Presence, PresenceEntry
from .config import Settings
from .fanout import Fanout
from .protocol import Kind, PresenceDiffFrame, User, encode, encode_text


class PresenceTracker:
    """This process's presence entries and their announcements."""

    def __init__(self, settings: Settings, backend: Presence, fanout: Fanout) -> None:
        # Seconds an entry lives unless refreshed.
        self.ttl = settings.presence_ttl
        # Where entries are kept, for every process.
        self.backend = backend
        # Diffs go to the room's connections here and on every process.
        self.fanout = fanout
        # The entries this process holds, refreshed before they expire.
        self.entries: dict[tuple[int, int], PresenceEntry] = {}

    async def join(self, room: int, user: User, *, exclude: int) -> None:
        """A user's first local connection joined `room` (`exclude` is that connection)."""
        entry = PresenceEntry(room, user, encode(user).decode())
        self.entries[(room, user.id)] = entry
        await self._add(entry, exclude=exclude)

    async def leave(self, room: int, user: User) -> None:
        """A user's last local connection left `room`."""
        entry = self.entries.pop((room, user.id), None)
        if entry is None:
            return
        try:
            gone = await self.backend.remove(entry)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            return
        if gone:
            await self._announce(room, [], [user])

    async def online(self, room: int) -> list[User]:
        """Who is online in the room, on any process; this process's view if the backend fails."""
        try:
            return await self.backend.online(room)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            state = self.fanout.hub.rooms.get(room)
            users = {c.user.id: c.user for c in state.conns.values()} if state else {}
            return [users[uid] for uid in sorted(users)]

    async def refresh(self) -> None:
        """Add or refresh every entry this process holds; report who came or went.

        Also run after a broker reconnect: a restarted Redis lost the entries.
        """
        for key, entry in list(self.entries.items()):
            if self.entries.get(key) is not entry:
                continue  # left meanwhile
            if not await self._add(entry):
                return

    async def run(self) -> None:
        """Refresh the entries well before they expire, for as long as the process serves."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.refresh()

    async def clear(self) -> None:
        """At shutdown: take this process's users out of presence now rather than by expiry."""
        for entry in list(self.entries.values()):
            try:
                await asyncio.wait_for(self.backend.remove(entry), 1)
            except Exception:
                break

    async def _add(self, entry: PresenceEntry, *, exclude: int = 0) -> bool:
        """Add or refresh an entry and announce who came or went; False if the backend failed."""
        try:
            joined, left = await self.backend.add(entry, self.ttl)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            return False  # the refresh loop adds it once the backend is back
        if joined or left:
            await self._announce(entry.room, [entry.user] if joined else [], left, exclude=exclude)
        return True

    async def _announce(
        self, room: int, joins: list[User], leaves: list[User], *, exclude: int = 0
    ) -> None:
        text = encode_text(PresenceDiffFrame(room=room, joins=joins, leaves=leaves))
        await self.fanout.broadcast(room, Kind.EPHEMERAL, text, exclude=exclude)
