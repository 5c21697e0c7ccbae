"""The directory, room settings, roles, mutes, bans and the audit log.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

import json
from typing import Any

from ..protocol import (
    AuditEntry,
    Ban,
    DirectoryRoom,
    Member,
    iso,
)
from ..sql import QUERIES
from .base import StoreBase, _user

Q_LOCK_ROOMS = QUERIES["lock_rooms"]
Q_DIRECTORY = QUERIES["directory"]
Q_DIRECTORY_SEARCH = QUERIES["directory_search"]
Q_UPDATE_ROOM = QUERIES["update_room"]
Q_MEMBER_ROLE = QUERIES["member_role"]
Q_MEMBERS_PAGE = QUERIES["members_page"]
Q_SET_ROLE = QUERIES["set_role"]
Q_MUTE = QUERIES["mute"]
Q_UNMUTE = QUERIES["unmute"]
Q_BAN = QUERIES["ban"]
Q_UNBAN = QUERIES["unban"]
Q_BANS = QUERIES["bans"]
Q_REMOVE_MEMBER_BY = QUERIES["remove_member_by"]
Q_DELETE_MESSAGE_BY = QUERIES["delete_message_by"]
Q_AUDIT = QUERIES["audit"]
Q_CUSTOM_PLANS = QUERIES["custom_plans"]


class ModerationQueries(StoreBase):
    """The directory, room settings, roles, mutes, bans and the audit log."""

    # -- moderation (issue 13) ------------------------------------------------
    # Each act runs after the room's row lock, the order sends take locks in, and
    # writes its audit row in the same statement.

    async def _act(self, query: str, *args: Any) -> Any:
        """Run one moderation statement under the room's lock ($1 is the room)."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q_LOCK_ROOMS, [args[0]])
            return await conn.fetchrow(query, *args)

    async def directory(self, pattern: str | None, limit: int) -> list[DirectoryRoom]:
        """Public rooms, most members first; `pattern` an ILIKE pattern, or None for all.

        From the read replica while it is usable: the directory may lag by READ_MAX_LAG.
        """

        async def page(conn: Any) -> list[Any]:
            if pattern is None:
                found: list[Any] = await conn.fetch(Q_DIRECTORY, limit)
                return found
            # A custom plan per pattern: the cached generic plan cannot see how rare
            # the pattern is and walks rooms_directory_idx for every q, 300 ms on
            # 100,000 rooms for a q that matches nothing (bench/directory.py).
            async with conn.transaction():
                await conn.execute(Q_CUSTOM_PLANS)
                found = await conn.fetch(Q_DIRECTORY_SEARCH, pattern, limit)
            return found

        rows = await self.read(page)
        return [
            DirectoryRoom(
                id=r["id"],
                name=r["name"],
                private=r["private"],
                created_by=_user(r, "creator_"),
                topic=r["topic"],
                slow_mode=r["slow_mode"],
                member_count=r["member_count"],
            )
            for r in rows
        ]

    async def update_room(
        self,
        room: int,
        actor: int,
        name: str | None,
        topic: str | None,
        slow_mode: int | None,
        detail: dict[str, Any],
    ) -> bool:
        row = await self._act(
            Q_UPDATE_ROOM, room, actor, name, topic, slow_mode, json.dumps(detail)
        )
        return row is not None

    async def member_role(self, room: int, user: int) -> str | None:
        """`user`'s role in `room`; None if they are no member."""
        async with self._conn() as conn:
            role = await conn.fetchval(Q_MEMBER_ROLE, room, user)
        return None if role is None else str(role)

    async def members(self, room: int, after: int, limit: int) -> list[Member]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MEMBERS_PAGE, room, after, limit)
        return [Member(user=_user(r), role=r["role"]) for r in rows]

    async def set_role(self, room: int, actor: int, target: int, role: str) -> bool:
        return await self._act(Q_SET_ROLE, room, actor, target, role) is not None

    async def mute(self, room: int, actor: int, target: int, seconds: int) -> bool:
        return await self._act(Q_MUTE, room, actor, target, seconds) is not None

    async def unmute(self, room: int, actor: int, target: int) -> bool:
        return await self._act(Q_UNMUTE, room, actor, target) is not None

    async def ban(self, room: int, actor: int, target: int, reason: str) -> bool | None:
        """Ban `target`: whether they were a member (and are no longer); None if refused
        (an owner or moderator cannot be banned)."""
        row = await self._act(Q_BAN, room, actor, target, reason)
        return None if row is None else bool(row["was_member"])

    async def unban(self, room: int, actor: int, target: int) -> bool:
        return await self._act(Q_UNBAN, room, actor, target) is not None

    async def bans(self, room: int, limit: int) -> list[Ban]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_BANS, room, limit)
        return [
            Ban(user=_user(r), by=_user(r, "by_"), reason=r["reason"], ts=iso(r["created_at"]))
            for r in rows
        ]

    async def remove_member_by(self, room: int, actor: int, target: int) -> bool:
        return await self._act(Q_REMOVE_MEMBER_BY, room, actor, target) is not None

    async def delete_message_by(self, room: int, actor: int, message: int) -> int | None:
        """A moderator tombstones someone else's message; its seq, or None if not found."""
        row = await self._act(Q_DELETE_MESSAGE_BY, room, actor, message)
        return None if row is None else int(row["seq"])

    async def audit(self, room: int, limit: int) -> list[AuditEntry]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_AUDIT, room, limit)
        return [
            AuditEntry(
                id=r["id"],
                ts=iso(r["created_at"]),
                actor=_user(r, "actor_"),
                action=r["action"],
                target=None if r["target_id"] is None else _user(r, "target_"),
                detail=json.loads(r["detail"]),
            )
            for r in rows
        ]
