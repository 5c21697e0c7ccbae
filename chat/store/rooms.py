"""Rooms, memberships, direct messages and read positions.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

from ..protocol import (
    Room,
    RoomSummary,
    User,
)
from ..sql import QUERIES
from .base import Access, StoreBase, _dm, _room, _too_many_adds, _user

Q_CREATE_ROOM = QUERIES["create_room"]
Q_ROOM = QUERIES["room"]
Q_ROOM_ACCESS = QUERIES["room_access"]
Q_ROOMS_OF_USER = QUERIES["rooms_of_user"]
Q_ADD_MEMBER = QUERIES["add_member"]
Q_REMOVE_MEMBER = QUERIES["remove_member"]
Q_CREATE_DM = QUERIES["create_dm"]
Q_DM_ROOM_ID = QUERIES["dm_room_id"]
Q_LOCK_ROOMS = QUERIES["lock_rooms"]
Q_LOCK_TARGET = QUERIES["lock_target"]
Q_ADD_MEMBER_BY = QUERIES["add_member_by"]
Q_RECENT_ADDS = QUERIES["recent_adds"]


class RoomQueries(StoreBase):
    """Rooms, memberships, direct messages and read positions."""

    # -- rooms --------------------------------------------------------------

    async def create_room(self, name: str, private: bool, creator: int) -> Room:
        async with self._conn() as conn:
            return _room(await conn.fetchrow(Q_CREATE_ROOM, name, private, creator))

    async def room(self, room: int, caller: int) -> Room | None:
        """The room as `caller` sees it (its `dm` is the other person of their DM)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_ROOM, room, caller)
        return None if row is None else _room(row)

    async def access(self, room: int, user: int) -> Access | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_ROOM_ACCESS, room, user)
        if row is None:
            return None
        return Access(
            row["private"],
            row["created_by"],
            row["last_seq"],
            row["member"],
            dm=row["dm"],
            role=row["role"],
            muted_until=row["muted_until"],
            banned=row["banned"],
            slow_mode=row["slow_mode"],
            last_sent_at=row["last_sent_at"],
            now=row["now"],
        )

    async def rooms_of_user(self, user: int) -> list[RoomSummary]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_ROOMS_OF_USER, user)
        return [
            RoomSummary(
                id=r["id"],
                name=r["name"],
                private=r["private"],
                created_by=_user(r, "creator_"),
                last_seq=r["last_seq"],
                unread=r["unread"],
                dm=_dm(r),
                topic=r["topic"],
                slow_mode=r["slow_mode"],
                role=r["role"],
            )
            for r in rows
        ]

    async def add_member(self, room: int, user: int) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_ADD_MEMBER, room, user)

    async def remove_member(self, room: int, user: int) -> bool:
        # The room's lock first: the member_count trigger updates the room row after the
        # delete, and sends lock room then member; the other order could deadlock.
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q_LOCK_ROOMS, [room])
            return await conn.fetchval(Q_REMOVE_MEMBER, room, user) is not None

    async def add_member_by(
        self, room: int, target: int, actor: int, window: float, cap: int
    ) -> bool:
        """`actor` puts `target` into `room`, unless others did so `cap` times within
        `window` seconds (rate_limited). False if they were a member already.

        The target's row lock orders concurrent adds of one user on every process, so
        the count each one reads includes the others.
        """
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q_LOCK_TARGET, target)
            row = await conn.fetchrow(Q_ADD_MEMBER_BY, room, target, actor, window, cap)
        if row["added"]:
            return True
        if row["was_member"] or row["recent"] < cap:
            return False  # a member already, or they joined by themselves meanwhile
        raise _too_many_adds()

    async def dm_room(
        self, user: User, other: User, window: float, cap: int
    ) -> tuple[int, list[int]]:
        """The one private room of a pair, created by whichever caller comes first, and
        who became a member by this call (both for a new DM, the caller if they had left).

        Opening an existing DM puts back only the caller, never the other person. A new
        DM puts `other` into a room, so it counts against their cap of adds by others.
        """
        low, high = sorted((user.id, other.id))
        key = f"{low}:{high}"
        name = f"{user.username} & {other.username}"
        added: list[int] = []
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(Q_DM_ROOM_ID, key, user.id)
            room = None if row is None else row["id"]
            if row is not None and row["rejoined"]:
                added = [user.id]
            if room is None:
                await conn.execute(Q_LOCK_TARGET, other.id)
                if await conn.fetchval(Q_RECENT_ADDS, other.id, window) >= cap:
                    raise _too_many_adds()
                room = await conn.fetchval(Q_CREATE_DM, user.id, other.id, name, key)
                if room is not None:
                    added = [user.id, other.id]
            if room is None:  # the other side created it meanwhile (and committed)
                row = await conn.fetchrow(Q_DM_ROOM_ID, key, user.id)
                room = row["id"]
                added = [user.id] if row["rejoined"] else []
        assert room is not None
        return int(room), added
