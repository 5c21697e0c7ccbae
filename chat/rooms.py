"""Rooms: creating them, joining over HTTP, members, direct messages and presence lists.

Membership lives in PostgreSQL; a removal also takes effect at once on the
live side (`removed`, given by the node), here and on every process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from . import access
from .blocks import Blocks
from .config import Settings
from .errors import ChatError, invalid, not_found
from .notify import Personal
from .presence import PresenceTracker
from .protocol import Room, RoomSummary, User
from .store import Store

log = logging.getLogger("chat.rooms")

# Applies a removal to live connections everywhere: (room, user id).
Removed = Callable[[int, int], Awaitable[None]]
# The window of the cap on how often others may make one user a member (seconds).
MEMBER_ADD_WINDOW = 3600.0


class Rooms:
    """The room use cases."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        presence: PresenceTracker,
        blocks: Blocks,
        removed: Removed,
        personal: Personal,
    ) -> None:
        self.store = store
        # `room_added` goes to every socket of whoever becomes a member, on any process.
        self.personal = personal
        self.presence = presence
        self.blocks = blocks
        self.removed = removed
        # How often others may make one user a member, per MEMBER_ADD_WINDOW.
        self.adds_per_window = settings.member_adds_per_hour

    async def create(self, user: User, name: str, private: bool) -> Room:
        room = await self.store.create_room(name, private, user.id)
        await self.personal.room_added({user.id: room})
        return room

    async def of_user(self, user: User) -> list[RoomSummary]:
        rooms = await self.store.rooms_of_user(user.id)
        counts = await self.store.mention_counts(user.id)
        for room in rooms:
            room.mentions = counts.get(room.id, 0)
        return rooms

    async def join(self, user: User, room: int) -> Room:
        joined = access.check_join(await access.room_access(self.store, room, user.id))
        if joined:
            await self.store.add_member(room, user.id)
        found = await self.get(room, user.id)
        if joined:
            await self.personal.room_added({user.id: found})
        return found

    async def added(self, room: int, users: list[int]) -> None:
        """Tell `users`, who just became members of `room`, on every socket they have.

        Live only, like every personal frame: the membership is stored already, so a
        failure to read the room (PostgreSQL away) loses the frame, never the request.
        """
        if not users:
            return
        try:
            rooms = {u: await self.get(room, u) for u in users}
        except ChatError as exc:
            log.warning("room_added skipped", extra={"room": room, "error": exc.code})
            return
        await self.personal.room_added(rooms)

    async def add_member(self, user: User, room: int, username: str) -> Room:
        await access.require(self.store, room, user.id, access.Action.ADD)
        target = await self.user(username)
        if target.id != user.id:
            access.check_added(await access.room_access(self.store, room, target.id))
            await self.blocks.check(user, target)
            if await self.store.add_member_by(
                room, target.id, user.id, MEMBER_ADD_WINDOW, self.adds_per_window
            ):
                await self.added(room, [target.id])
        return await self.get(room, user.id)

    async def remove_member(self, user: User, room: int, username: str) -> None:
        found = await access.require(self.store, room, user.id, access.Action.LEAVE)
        target = await self.user(username)
        if target.id != user.id:
            # Not theirs to remove: 403 before saying whether the target is a member.
            access.check(found, access.Action.REMOVE)
        target_role = await self.store.member_role(room, target.id)
        if target_role is None:
            raise not_found(f"{target.username} is not a member of this room")
        if access.check_remove(found, user.id, target.id, target_role):
            gone = await self.store.remove_member_by(room, user.id, target.id)
        else:
            gone = await self.store.remove_member(room, target.id)
        if not gone:
            raise not_found(f"{target.username} is not a member of this room")
        await self.removed(room, target.id)

    async def dm(self, user: User, username: str) -> Room:
        other = await self.user(username)
        if other.id == user.id:
            raise invalid("a direct message needs someone else")
        await self.blocks.check(user, other)
        room, added = await self.store.dm_room(user, other, MEMBER_ADD_WINDOW, self.adds_per_window)
        await self.added(room, added)
        return await self.get(room, user.id)

    async def online(self, user: User, room: int) -> list[User]:
        await access.require_member(self.store, room, user.id)
        return await self.presence.online(room)

    async def get(self, room: int, caller: int) -> Room:
        """The room as `caller` sees it (its `dm` is the other person of their DM)."""
        found = await self.store.room(room, caller)
        if found is None:
            raise not_found("no such room")
        return found

    async def user(self, username: str) -> User:
        """A user by name; `not_found` for an unknown one."""
        target = await self.store.user_by_username(username)
        if target is None:
            raise not_found(f"no user named {username!r}")
        return target
