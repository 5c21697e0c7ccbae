"""Messages: the group-commit inserts, history, edits, deletes and search.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from .. import metrics
from ..errors import forbidden, invalid, not_found
from ..protocol import (
    Message,
)
from ..sql import QUERIES
from .base import (
    REPLICA_TIMEOUT,
    SEARCH_REJECTED,
    UNAVAILABLE_ERRORS,
    Draft,
    StoreBase,
    message_from_row,
)

log = logging.getLogger("chat.store")

Q_INSERT_MESSAGE = QUERIES["insert_message"]
Q_MESSAGE_BY_CLIENT_ID = QUERIES["message_by_client_id"]
Q_MESSAGES_AFTER = QUERIES["messages_after"]
Q_MESSAGES_BEFORE = QUERIES["messages_before"]
Q_MESSAGE_AUTHOR = QUERIES["message_author"]
Q_EDIT_MESSAGE = QUERIES["edit_message"]
Q_DELETE_MESSAGE = QUERIES["delete_message"]
Q_LOCK_ROOMS = QUERIES["lock_rooms"]
Q_INSERT_MESSAGES = QUERIES["insert_messages"]
Q_INSERT_MESSAGE_PLAIN = QUERIES["insert_message_plain"]
Q_INSERT_MESSAGES_PLAIN = QUERIES["insert_messages_plain"]
Q_SEARCH_PREPARE = QUERIES["search_prepare"]
Q_SEARCH_MESSAGES = QUERIES["search_messages"]
Q_SEARCH_CUSTOM_PLAN = QUERIES["search_custom_plan"]
Q_LAST_SEQ = QUERIES["last_seq"]


class MessageQueries(StoreBase):
    """Messages: the group-commit inserts, history, edits, deletes and search."""

    # -- messages -----------------------------------------------------------

    async def insert_batch(self, drafts: Sequence[Draft]) -> dict[int, Message]:
        """One transaction for many sends: {position in `drafts` (1-based): stored message}.

        Drafts left out (not a member, a client_id already stored or repeated in the
        batch) are for `insert_one`, which answers each on its own.
        """
        rooms = sorted({d.room for d in drafts})
        columns: list[list[Any]] = [
            [d.room for d in drafts],
            [d.sender.id for d in drafts],
            [d.body for d in drafts],
            [d.client_id for d in drafts],
        ]
        query = Q_INSERT_MESSAGES_PLAIN
        if not all(d.plain for d in drafts):
            query = Q_INSERT_MESSAGES
            columns += [
                [d.thread for d in drafts],
                [d.names for d in drafts],
                [d.mention_room for d in drafts],
            ]
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q_LOCK_ROOMS, rooms)
            rows = await conn.fetch(query, *columns)
        return {row["ord"]: message_from_row(row, drafts[row["ord"] - 1]) for row in rows}

    async def insert_one(self, draft: Draft) -> tuple[Message, bool] | None:
        """One send in one statement: (message, created); the first for a repeated client_id.

        None if the sender is not a member, is muted or is within slow mode.
        """
        room, sender, body, client_id = draft.room, draft.sender, draft.body, draft.client_id
        async with self._conn() as conn:
            try:
                args: tuple[Any, ...] = (room, sender.id, body, client_id)
                query = Q_INSERT_MESSAGE_PLAIN
                if not draft.plain:
                    query = Q_INSERT_MESSAGE
                    args += (draft.thread, draft.names, draft.mention_room)
                row = await conn.fetchrow(query, *args)
                if row is None:
                    # Refused, or a slow-mode send that lost a race (see the query): run
                    # it again after the room's lock, whose snapshot sees every send and
                    # mute committed before, so that the refusal, if any, is final.
                    async with conn.transaction():
                        await conn.execute(Q_LOCK_ROOMS, [room])
                        row = await conn.fetchrow(query, *args)
            except asyncpg.UniqueViolationError:
                # A retry or a racing duplicate of the same client_id: return the first.
                row = await conn.fetchrow(Q_MESSAGE_BY_CLIENT_ID, room, sender.id, client_id)
                if row is None:  # pragma: no cover - the row exists since the violation
                    raise
                return message_from_row(row), False
        if row is None:
            if client_id is not None:
                # A retry of a message stored before a mute or within slow mode is
                # still a retry: it gets the first message back, not a refusal.
                async with self._conn() as conn:
                    first = await conn.fetchrow(Q_MESSAGE_BY_CLIENT_ID, room, sender.id, client_id)
                if first is not None:
                    return message_from_row(first), False
            return None
        return message_from_row(row, draft), True

    async def messages_after(self, room: int, after: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MESSAGES_AFTER, room, after, limit)
        return [message_from_row(r) for r in rows]

    async def messages_before(self, room: int, before: int, limit: int) -> list[Message]:
        """A history page, from the replica when it is usable and has every message of the
        page the primary has (else from the primary): a page never misses a message
        that was acknowledged before it was asked for."""
        replica = self.replica
        if replica is not None and replica.usable:
            try:
                async with replica.pool.acquire(timeout=REPLICA_TIMEOUT) as conn:
                    # The room's newest seq first: the page's snapshot is at least as new.
                    seen = await conn.fetchval(Q_LAST_SEQ, room)
                    rows = await conn.fetch(Q_MESSAGES_BEFORE, room, before, limit)
                newest = (await self.last_seqs([room])).get(room, 0)
                if seen is not None and seen >= min(newest, before - 1):
                    metrics.DB_READS.labels("replica").inc()
                    return [message_from_row(r) for r in reversed(rows)]
                # The replica has not replayed the page's newest messages yet: primary.
            except UNAVAILABLE_ERRORS as exc:
                log.warning("read replica failed a read", extra={"error": type(exc).__name__})
                replica.failed()
        metrics.DB_READS.labels("primary").inc()
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MESSAGES_BEFORE, room, before, limit)
        return [message_from_row(r) for r in reversed(rows)]

    async def message_author(self, room: int, message: int) -> tuple[int, bool] | None:
        """(sender id, deleted) of a message of the room; None if the room has no such one."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_MESSAGE_AUTHOR, room, message)
        return None if row is None else (row["sender_id"], row["deleted"])

    async def edit_message(
        self,
        room: int,
        message: int,
        body: str,
        names: str | None = None,
        mention_room: bool = False,
    ) -> Message | None:
        """The edited message, its mentions found again; None if it is (or just became)
        a tombstone."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_EDIT_MESSAGE, room, message, body, names, mention_room)
        return None if row is None else message_from_row(row)

    async def delete_message(self, room: int, message: int) -> int | None:
        """Tombstone a message; its seq, or None if the room has no such message."""
        async with self._conn() as conn:
            seq = await conn.fetchval(Q_DELETE_MESSAGE, room, message)
        return None if seq is None else int(seq)

    # -- search -------------------------------------------------------------

    async def search(
        self, user: int, query: str, room: int | None, before: int | None, limit: int
    ) -> list[tuple[Message, str | None]]:
        """Messages matching `query` (to_tsquery input) in the user's rooms, newest first.

        Each with its ts_headline text (chat/search.py turns it into ranges).
        """
        # The rooms come from the primary (membership as of now); the matches from
        # the read replica while it is usable (a search may lag by READ_MAX_LAG).
        async with self._conn() as conn:
            try:
                head = await conn.fetchrow(Q_SEARCH_PREPARE, query, user, room)
            except SEARCH_REJECTED:
                raise invalid("`q` is not a query the database can search for") from None
        if not head["room_exists"]:
            raise not_found("no such room")
        if room is not None and not head["rooms"]:
            raise forbidden()
        if head["nodes"] == 0:
            raise invalid("`q` has no word to search for")
        if not head["indexable"]:
            raise invalid("`q` needs a word to find that is not excluded")

        async def matches(conn: Any) -> list[Any]:
            async with conn.transaction(readonly=True):
                await conn.execute(Q_SEARCH_CUSTOM_PLAN)
                rows: list[Any] = await conn.fetch(
                    Q_SEARCH_MESSAGES,
                    head["rooms"],
                    head["query"],
                    before if before is not None else 2**62,
                    limit,
                )
            return rows

        try:
            rows = await self.read(matches)
        except SEARCH_REJECTED:
            raise invalid("`q` is not a query the database can search for") from None
        return [(message_from_row(r), r["headline"]) for r in rows]
