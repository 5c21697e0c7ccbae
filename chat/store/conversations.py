"""Threads, reactions and mentions.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

from typing import Any

from ..errors import ChatError, invalid
from ..protocol import (
    Message,
    Reaction,
    ThreadItem,
)
from ..sql import QUERIES
from .base import MAX_EMOJI, StoreBase, message_from_row, reactions_from

Q_THREAD_ROOT = QUERIES["thread_root"]
Q_THREAD_AFTER = QUERIES["thread_after"]
Q_THREAD_BEFORE = QUERIES["thread_before"]
Q_THREADS_OF_USER = QUERIES["threads_of_user"]
Q_SET_THREAD_READ = QUERIES["set_thread_read"]
Q_THREAD_FOLLOWERS = QUERIES["thread_followers"]
Q_ROOM_KIND = QUERIES["room_kind"]
Q_ROOM_MEMBER_IDS = QUERIES["room_member_ids"]
Q_LOCK_MESSAGE = QUERIES["lock_message"]
Q_REACTION_STATE = QUERIES["reaction_state"]
Q_ADD_REACTION = QUERIES["add_reaction"]
Q_REMOVE_REACTION = QUERIES["remove_reaction"]
Q_REFRESH_REACTIONS = QUERIES["refresh_reactions"]
Q_MESSAGE_REACTIONS = QUERIES["message_reactions"]
Q_MENTION_COUNTS = QUERIES["mention_counts"]
Q_MENTIONS_OF_USER = QUERIES["mentions_of_user"]


class ConversationQueries(StoreBase):
    """Threads, reactions and mentions."""

    # -- threads ------------------------------------------------------------

    async def thread_root(self, message: int) -> tuple[int, int] | None:
        """(room, root) of the thread a message id names; None for no such message."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_THREAD_ROOT, message)
        return None if row is None else (row["room_id"], row["root_id"])

    async def thread_after(self, root: int, after: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_THREAD_AFTER, root, after, limit)
        return [message_from_row(r) for r in rows]

    async def thread_before(self, root: int, before: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_THREAD_BEFORE, root, before, limit)
        return [message_from_row(r) for r in reversed(rows)]

    async def threads_of_user(self, user: int, limit: int) -> list[ThreadItem]:
        """The followed threads, from the read replica while it is usable (may lag)."""

        async def page(conn: Any) -> list[Any]:
            found: list[Any] = await conn.fetch(Q_THREADS_OF_USER, user, limit)
            return found

        rows = await self.read(page)
        return [
            ThreadItem(room=r["room_id"], root=message_from_row(r), unread=r["unread"])
            for r in rows
        ]

    async def set_thread_read(self, user: int, room: int, root: int, seq: int) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_SET_THREAD_READ, user, room, root, seq)

    async def thread_followers(self, root: int) -> list[int]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_THREAD_FOLLOWERS, root)
        return [r["user_id"] for r in rows]

    # -- who to tell ----------------------------------------------------------

    async def room_pair(self, room: int) -> tuple[int, int] | None:
        """A DM's two people; None for any other room (or none)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_ROOM_KIND, room)
        if row is None or row["dm_low"] is None:
            return None
        return int(row["dm_low"]), int(row["dm_high"])

    async def room_member_ids(self, room: int) -> list[int]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_ROOM_MEMBER_IDS, room)
        return [r["user_id"] for r in rows]

    # -- reactions ----------------------------------------------------------

    async def react(
        self, room: int, message: int, user: int, emoji: str, add: bool
    ) -> tuple[int, list[Reaction], bool]:
        """Add or remove one reaction: (seq, the message's whole list, whether it changed).

        The message's row lock orders changes to one message on every process, so the
        cap of distinct emoji and the aggregate written onto the row are exact.
        """
        async with self._conn() as conn, conn.transaction():
            deleted = await conn.fetchval(Q_LOCK_MESSAGE, room, message)
            if deleted is None:
                raise ChatError("not_found", "no such message in this room")
            if deleted:
                raise ChatError("conflict", "a deleted message takes no reactions")
            if add:
                state = await conn.fetchrow(Q_REACTION_STATE, message, emoji)
                if not state["has"] and state["n"] >= MAX_EMOJI:
                    raise invalid(f"a message holds at most {MAX_EMOJI} distinct emoji")
                changed = await conn.fetchval(Q_ADD_REACTION, message, emoji, user) is not None
            else:
                changed = await conn.fetchval(Q_REMOVE_REACTION, message, emoji, user) is not None
            if changed:
                row = await conn.fetchrow(Q_REFRESH_REACTIONS, message)
            else:
                row = await conn.fetchrow(Q_MESSAGE_REACTIONS, room, message)
        return row["seq"], reactions_from(row["reactions"]), changed

    # -- mentions -----------------------------------------------------------

    async def mention_counts(self, user: int) -> dict[int, int]:
        """{room: unread messages mentioning `user` or @room} for the user's rooms."""
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MENTION_COUNTS, user)
        return {r["room_id"]: r["n"] for r in rows}

    async def mentions_of_user(self, user: int, before: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MENTIONS_OF_USER, user, before, limit)
        return [message_from_row(r) for r in rows]
