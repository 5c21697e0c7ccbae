"""Rooms people find and run: the directory, settings, roles, mutes, bans, the audit log.

Who may do what is `access.py`'s table; this module reads the access, asks it,
and hands the act to the store, which writes the act and its audit row in one
transaction. Live effects go everywhere: `room_updated` to joined connections,
and a ban's `removed` to the banned member's sockets on every process.
"""

from __future__ import annotations

from typing import Any

from . import access
from .access import Action
from .errors import ChatError, invalid, not_found
from .fanout import Fanout
from .protocol import (
    AuditEntry,
    Ban,
    DirectoryRoom,
    FrameError,
    Kind,
    Member,
    Room,
    RoomPatch,
    RoomUpdatedFrame,
    User,
    check_body,
    encode_text,
)
from .rooms import Removed, Rooms
from .store import Store


def like_pattern(q: str) -> str:
    """`%q%` for ILIKE, with q's own wildcards and escape character taken literally."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Moderation:
    """The use cases of running a room, and finding one."""

    def __init__(self, store: Store, fanout: Fanout, rooms: Rooms, removed: Removed) -> None:
        self.store = store
        self.fanout = fanout
        # For the room as a caller sees it, and usernames.
        self.rooms = rooms
        # Kicks a user's sockets from a room on every process.
        self.removed = removed

    async def directory(self, q: str, limit: int) -> list[DirectoryRoom]:
        """Public rooms whose name or topic contains `q` (any case), most members first."""
        return await self.store.directory(like_pattern(q) if q else None, limit)

    async def update(self, user: User, room: int, patch: RoomPatch) -> Room:
        await access.require(self.store, room, user.id, Action.UPDATE)
        detail: dict[str, Any] = {}
        name = patch.name
        if name is not None:
            try:
                name = check_body(name.strip(), "name")
            except FrameError as exc:
                raise invalid(str(exc)) from None
            detail["name"] = name
        if patch.topic is not None:
            detail["topic"] = patch.topic
        if patch.slow_mode is not None:
            detail["slow_mode"] = patch.slow_mode
        if not detail:
            raise invalid("give at least one of `name`, `topic`, `slow_mode`")
        if not await self.store.update_room(
            room, user.id, name, patch.topic, patch.slow_mode, detail
        ):
            raise not_found("no such room")
        updated = await self.rooms.get(room, user.id)
        text = encode_text(RoomUpdatedFrame(room=updated))
        await self.fanout.broadcast(room, Kind.FRAME, text)
        return updated

    async def members(self, user: User, room: int, after: int, limit: int) -> list[Member]:
        await access.require(self.store, room, user.id, Action.READ)
        return await self.store.members(room, after, limit)

    async def set_role(self, user: User, room: int, username: str, role: str) -> Member:
        found = await access.require(self.store, room, user.id, Action.SET_ROLE)
        target, target_role = await self._member(room, username)
        access.check_target(Action.SET_ROLE, access.role_of(found), target_role)
        if not await self.store.set_role(room, user.id, target.id, role):
            raise not_found(f"{target.username} is not a member of this room")
        return Member(user=target, role=role)

    async def mute(self, user: User, room: int, username: str, seconds: int) -> None:
        found = await access.require(self.store, room, user.id, Action.MUTE)
        target, target_role = await self._member(room, username)
        access.check_target(Action.MUTE, access.role_of(found), target_role)
        if not await self.store.mute(room, user.id, target.id, seconds):
            # Made a moderator, or gone, since it was read.
            raise ChatError("conflict", f"{target.username} changed meanwhile: try again")

    async def unmute(self, user: User, room: int, username: str) -> None:
        await access.require(self.store, room, user.id, Action.MUTE)
        target, _ = await self._member(room, username)
        if not await self.store.unmute(room, user.id, target.id):
            raise not_found(f"{target.username} is not a member of this room")

    async def ban(self, user: User, room: int, username: str, reason: str) -> None:
        found = await access.require(self.store, room, user.id, Action.BAN)
        target = await self.rooms.user(username)
        target_role = await self.store.member_role(room, target.id) or access.OUTSIDER
        access.check_target(Action.BAN, access.role_of(found), target_role)
        was_member = await self.store.ban(room, user.id, target.id, reason)
        if was_member is None:
            raise ChatError("conflict", f"{target.username} changed meanwhile: try again")
        # Kicked everywhere even if the membership was already gone: a join racing the
        # ban may have registered a socket that the store then refused.
        await self.removed(room, target.id)

    async def unban(self, user: User, room: int, username: str) -> None:
        await access.require(self.store, room, user.id, Action.BAN)
        target = await self.rooms.user(username)
        if not await self.store.unban(room, user.id, target.id):
            raise not_found(f"{target.username} is not banned from this room")

    async def bans(self, user: User, room: int, limit: int) -> list[Ban]:
        await access.require(self.store, room, user.id, Action.VIEW_BANS)
        return await self.store.bans(room, limit)

    async def audit(self, user: User, room: int, limit: int) -> list[AuditEntry]:
        await access.require(self.store, room, user.id, Action.VIEW_AUDIT)
        return await self.store.audit(room, limit)

    async def _member(self, room: int, username: str) -> tuple[User, str]:
        """A target user and their role; `not_found` for an unknown user or a non-member."""
        target = await self.rooms.user(username)
        role = await self.store.member_role(room, target.id)
        if role is None:
            raise not_found(f"{target.username} is not a member of this room")
        return target, role
