"""Who is online in each room: this process's entries, and the diffs it announces.

Each (room, user) with a local connection joined has an entry in the shared
`Presence` backend (Redis, or memory for one process), refreshed well before
it expires so that the users of a process that dies leave on their own. When
a user's first connection joins a room or their last one leaves, or an
expired entry is swept out, the room's connections on every process get a
`presence_diff`. A change in a quiet room goes out at once; the changes of the
next `PRESENCE_COALESCE` seconds gather into one diff of the net joins and
leaves (a join and a leave of the same user cancel out), so a user joining and
leaving in a loop cannot flood a room.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from . import metrics
from .broker import Presence, PresenceEntry
from .config import Settings
from .fanout import Fanout, Spawn
from .protocol import Kind, PresenceDiffFrame, User, encode, encode_text


@dataclass
class PresenceBatch:
    """A room's presence changes gathered for one presence_diff, net of each other."""

    # Users who came, and users who went, by id: a change undoes its opposite.
    joins: dict[int, User] = field(default_factory=dict)
    leaves: dict[int, User] = field(default_factory=dict)


class PresenceTracker:
    """This process's presence entries and their announcements."""

    def __init__(self, settings: Settings, backend: Presence, fanout: Fanout, spawn: Spawn) -> None:
        # Seconds an entry lives unless refreshed.
        self.ttl = settings.presence_ttl
        # Seconds a room's changes gather into one diff (0: each goes out alone).
        self.coalesce = settings.presence_coalesce
        # Starts a background task the node owns (the window of a busy room).
        self.spawn = spawn
        # Presence changes per room waiting for their coalesced presence_diff.
        self.batches: dict[int, PresenceBatch] = {}
        # Where entries are kept, for every process.
        self.backend = backend
        # Diffs go to the room's connections here and on every process.
        self.fanout = fanout
        # The entries this process holds, refreshed before they expire.
        self.entries: dict[tuple[int, int], PresenceEntry] = {}

    async def join(self, room: int, user: User) -> None:
        """A user's first local connection joined `room`."""
        entry = PresenceEntry(room, user, encode(user).decode())
        self.entries[(room, user.id)] = entry
        await self._add(entry)

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

    async def _add(self, entry: PresenceEntry) -> bool:
        """Add or refresh an entry and announce who came or went; False if the backend failed."""
        try:
            joined, left = await self.backend.add(entry, self.ttl)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            return False  # the refresh loop adds it once the backend is back
        if joined or left:
            await self._announce(entry.room, [entry.user] if joined else [], left)
        return True

    async def _announce(self, room: int, joins: list[User], leaves: list[User]) -> None:
        """Announce presence changes: the first at once, then one net diff a window."""
        change = PresenceBatch({u.id: u for u in joins}, {u.id: u for u in leaves})
        if self.coalesce <= 0:
            await self._send(room, change)
            return
        batch = self.batches.get(room)
        if batch is None:
            # A quiet room: announce now, and gather what follows for a window.
            self.batches[room] = PresenceBatch()
            self.spawn(self._flush(room), "presence-diff")
            await self._send(room, change)
            return
        for user in joins:
            if batch.leaves.pop(user.id, None) is None:
                batch.joins[user.id] = user
        for user in leaves:
            if batch.joins.pop(user.id, None) is None:
                batch.leaves[user.id] = user

    async def _flush(self, room: int) -> None:
        """Every window, send what gathered; stop (the room is quiet) when nothing did."""
        while True:
            await asyncio.sleep(self.coalesce)  # the window, not a synchronisation
            batch = self.batches.get(room)
            if batch is None:
                return
            if not batch.joins and not batch.leaves:
                del self.batches[room]
                return
            self.batches[room] = PresenceBatch()
            await self._send(room, batch)

    async def _send(self, room: int, batch: PresenceBatch) -> None:
        if not batch.joins and not batch.leaves:
            return
        leaves = list(batch.leaves.values())
        joins = list(batch.joins.values())
        text = encode_text(PresenceDiffFrame(room=room, joins=joins, leaves=leaves))
        hub = self.fanout.hub
        state = hub.rooms.get(room)
        if state is not None:
            # No connection here is told of its own user's coming or going: not the one
            # whose join caused it (the contract), nor one that joined again while its
            # leave waited in the window (it would read that it left). Such a user has
            # no other connection here in the room: the change was its first or last.
            changed = batch.joins.keys() | batch.leaves.keys()
            variants: dict[int, str | None] = {}
            for conn in list(state.conns.values()):
                uid = conn.user.id
                if uid not in changed:
                    hub.broadcast_to(state, conn, text, ephemeral=True)
                    continue
                if uid not in variants:
                    others = PresenceDiffFrame(
                        room=room,
                        joins=[u for u in joins if u.id != uid],
                        leaves=[u for u in leaves if u.id != uid],
                    )
                    variants[uid] = encode_text(others) if others.joins or others.leaves else None
                variant = variants[uid]
                if variant is not None:
                    hub.broadcast_to(state, conn, variant, ephemeral=True)
        await self.fanout.publish(self.fanout.channel(room), Kind.EPHEMERAL, text)
