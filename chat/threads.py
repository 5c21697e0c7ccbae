"""Threads: replies, a thread's history, followed threads and their read positions.

A reply is an ordinary message of its room (its `seq`, replay, gap repair and
unread are the room's) with `thread` set; the statement that stores it also
counts it on the root and records who follows the thread (`messages.sql`).
This module checks what a `thread` field names and serves the thread views.
"""

from __future__ import annotations

from . import access
from .errors import not_found
from .protocol import Message, ThreadItem, User
from .store import Store


async def resolve_root(store: Store, room: int, thread: int) -> int:
    """The root a reply to `thread` belongs to (a reply's own root for a reply to a
    reply); `not_found` unless it is a message of `room`."""
    found = await store.thread_root(thread)
    if found is None or found[0] != room:
        raise not_found("no such message in this room to reply to")
    return found[1]


class Threads:
    """The thread views and read positions."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def history(
        self,
        user: User,
        room: int,
        thread: int,
        before: int | None,
        after: int | None,
        limit: int,
    ) -> list[Message]:
        """A root's replies, ascending seq, with the room history's paging rules."""
        await access.require_member(self.store, room, user.id)
        root = await resolve_root(self.store, room, thread)
        if after is not None:
            messages = await self.store.thread_after(root, after, limit)
            if before is not None:
                messages = [m for m in messages if m.seq < before]
            return messages
        return await self.store.thread_before(root, before if before is not None else 2**62, limit)

    async def followed(self, user: User, limit: int) -> list[ThreadItem]:
        return await self.store.threads_of_user(user.id, limit)

    async def read(self, user: User, room: int, thread: int, seq: int) -> None:
        """Move the caller's read position in a thread forward (a no-op if they do not
        follow it)."""
        await access.require_member(self.store, room, user.id)
        root = await resolve_root(self.store, room, thread)
        await self.store.set_thread_read(user.id, room, root, seq)
