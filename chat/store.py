"""PostgreSQL: the asyncpg pool and every query of `sql/queries`, returning protocol types.

Only this module knows asyncpg. A lost or refused connection, a timed-out
command or a server shutting down becomes `ChatError("unavailable")`, so a
request fails cleanly while PostgreSQL is away and the pool reconnects by
itself once it is back. Constraint violations are matched by exception class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import migrate
from .config import Settings
from .errors import ChatError, forbidden, invalid, not_found, unavailable
from .protocol import Message, Room, RoomSummary, User, iso
from .sql import QUERIES

log = logging.getLogger("chat.store")

# Read once at import: a name missing from sql/queries fails here, at start-up.
Q_CREATE_USER = QUERIES["create_user"]
Q_CREATE_BOT = QUERIES["create_bot"]
Q_USER_FOR_LOGIN = QUERIES["user_for_login"]
Q_USER_BY_USERNAME = QUERIES["user_by_username"]
Q_CREATE_SESSION = QUERIES["create_session"]
Q_SESSION_USER = QUERIES["session_user"]
Q_DELETE_SESSION = QUERIES["delete_session"]
Q_CREATE_ROOM = QUERIES["create_room"]
Q_ROOM = QUERIES["room"]
Q_ROOM_ACCESS = QUERIES["room_access"]
Q_ROOMS_OF_USER = QUERIES["rooms_of_user"]
Q_ADD_MEMBER = QUERIES["add_member"]
Q_REMOVE_MEMBER = QUERIES["remove_member"]
Q_CREATE_DM = QUERIES["create_dm"]
Q_DM_ROOM_ID = QUERIES["dm_room_id"]
Q_SET_READ = QUERIES["set_read"]
Q_LAST_SEQS = QUERIES["last_seqs"]
Q_MEMBERSHIPS = QUERIES["memberships"]
Q_LIVE_SESSIONS = QUERIES["live_sessions"]
Q_INSERT_MESSAGE = QUERIES["insert_message"]
Q_MESSAGE_BY_CLIENT_ID = QUERIES["message_by_client_id"]
Q_MESSAGES_AFTER = QUERIES["messages_after"]
Q_MESSAGES_BEFORE = QUERIES["messages_before"]
Q_EDIT_MESSAGE = QUERIES["edit_message"]
Q_DELETE_MESSAGE = QUERIES["delete_message"]
Q_LOCK_ROOMS = QUERIES["lock_rooms"]
Q_INSERT_MESSAGES = QUERIES["insert_messages"]
Q_SEARCH_PREPARE = QUERIES["search_prepare"]
Q_SEARCH_MESSAGES = QUERIES["search_messages"]

# PostgreSQL refusing a search query (a tsquery it cannot parse or that is too large):
# the caller's input, so `invalid`, not a server failure.
SEARCH_REJECTED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresSyntaxError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg.exceptions.DataError,
)

# Errors that mean "PostgreSQL is not reachable right now", not "the request is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)


@dataclass(slots=True)
class _Send:
    """A send waiting for its batch."""

    room: int
    sender: User
    body: str
    client_id: str | None
    done: asyncio.Future[tuple[Message, bool] | None]


@dataclass(frozen=True, slots=True)
class Access:
    """What a user may do in a room, read in one query."""

    private: bool
    created_by: int
    last_seq: int
    member: bool


def _user(row: Any, prefix: str = "") -> User:
    return User(id=row[prefix + "id"], username=row[prefix + "username"], bot=row[prefix + "bot"])


def _room(row: Any) -> Room:
    return Room(
        id=row["id"],
        name=row["name"],
        private=row["private"],
        created_by=_user(row, "creator_"),
    )


def message_from_row(row: Any) -> Message:
    return Message(
        id=row["id"],
        room=row["room_id"],
        seq=row["seq"],
        sender=_user(row, "sender_"),
        body=row["body"],
        client_id=row["client_id"],
        ts=iso(row["created_at"]),
        edited_at=iso(row["edited_at"]) if row["edited_at"] is not None else None,
        deleted=row["deleted"],
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (`RESET ALL`, `UNLISTEN *`, ...).

    No query here changes session state (no SET, LISTEN or cursor; the one
    advisory lock, taken by migrate, is released in its `finally`), so the
    reset only cost a round trip and a transaction per pool use.
    """


class Store:
    """The message store: every read and write of PostgreSQL goes through here."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        # The connection pool; its size and timeouts come from the settings.
        self.pool = pool
        # Idle expiry of user sessions, in seconds.
        self.session_idle_seconds = settings.session_idle_days * 86400
        # Group commit: sends waiting for a batch, batches in flight, and the bounds.
        self._queue: list[_Send] = []
        self._inflight = 0
        self._max_inflight = settings.write_batches
        self._batch_size = settings.write_batch_size
        self._window = settings.write_batch_window
        # The timer that ends a gathering window, while one runs.
        self._gather: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, settings: Settings, *, run_migrations: bool = True) -> Store:
        """Open the pool (retrying while PostgreSQL starts) and migrate if needed."""
        assert settings.database_url, "DATABASE_URL is not set"
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout,
            timeout=settings.db_connect_timeout,
            max_inactive_connection_lifetime=60,
            reset=_keep_session,
        )
        store = cls(pool, settings)
        if run_migrations:
            async with pool.acquire() as conn:
                await migrate.migrate(conn)  # type: ignore[arg-type]
        return store

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            log.warning("postgresql unavailable", extra={"error": type(exc).__name__})
            raise unavailable("the database is unavailable; retry") from None

    async def ping(self) -> bool:
        try:
            async with self._conn() as conn:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), 2)
        except ChatError:
            return False
        except UNAVAILABLE_ERRORS:
            return False
        return True

    # -- accounts -----------------------------------------------------------

    async def create_user(self, username: str, password_hash: str) -> User:
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(Q_CREATE_USER, username, password_hash)
        except asyncpg.UniqueViolationError:
            raise ChatError("conflict", f"the username {username!r} is taken") from None
        return _user(row)

    async def create_bot(self, username: str, owner: int) -> User:
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(Q_CREATE_BOT, username, owner)
        except asyncpg.UniqueViolationError:
            raise ChatError("conflict", f"the username {username!r} is taken") from None
        return _user(row)

    async def user_for_login(self, username: str) -> tuple[User, str] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_USER_FOR_LOGIN, username)
        return None if row is None else (_user(row), row["password_hash"])

    async def user_by_username(self, username: str) -> User | None:
        if "\x00" in username:
            return None  # PostgreSQL text cannot hold NUL, so no username has one
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_USER_BY_USERNAME, username)
        return None if row is None else _user(row)

    async def create_session(self, token_hash: bytes, user: int, expires_idle: bool) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_CREATE_SESSION, token_hash, user, expires_idle)

    async def session_user(self, token_hash: bytes) -> User | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_SESSION_USER, token_hash, self.session_idle_seconds)
        return None if row is None else _user(row)

    async def delete_session(self, token_hash: bytes) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(Q_DELETE_SESSION, token_hash) is not None

    # -- rooms --------------------------------------------------------------

    async def create_room(self, name: str, private: bool, creator: int) -> Room:
        async with self._conn() as conn:
            return _room(await conn.fetchrow(Q_CREATE_ROOM, name, private, creator))

    async def room(self, room: int) -> Room | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_ROOM, room)
        return None if row is None else _room(row)

    async def access(self, room: int, user: int) -> Access | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_ROOM_ACCESS, room, user)
        if row is None:
            return None
        return Access(row["private"], row["created_by"], row["last_seq"], row["member"])

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
            )
            for r in rows
        ]

    async def add_member(self, room: int, user: int) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_ADD_MEMBER, room, user)

    async def remove_member(self, room: int, user: int) -> bool:
        async with self._conn() as conn:
            return await conn.fetchval(Q_REMOVE_MEMBER, room, user) is not None

    async def dm_room(self, user: User, other: User) -> int:
        """The one private room of a pair, created by whichever caller comes first."""
        low, high = sorted((user.id, other.id))
        key = f"{low}:{high}"
        name = f"{user.username} & {other.username}"
        async with self._conn() as conn:
            room = await conn.fetchval(Q_CREATE_DM, user.id, other.id, name, key)
            if room is None:
                room = await conn.fetchval(Q_DM_ROOM_ID, key, user.id, other.id)
        assert room is not None
        return int(room)

    async def set_read(self, room: int, user: int, seq: int) -> int | None:
        async with self._conn() as conn:
            value = await conn.fetchval(Q_SET_READ, room, user, seq)
        return None if value is None else int(value)

    async def last_seqs(self, rooms: Sequence[int]) -> dict[int, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_LAST_SEQS, list(rooms))
        return {r["id"]: r["last_seq"] for r in rows}

    async def memberships(self, rooms: Sequence[int], users: Sequence[int]) -> set[tuple[int, int]]:
        """The (room, user) pairs among `rooms` x `users` that are memberships."""
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MEMBERSHIPS, list(rooms), list(users))
        return {(r["room_id"], r["user_id"]) for r in rows}

    async def live_sessions(self, token_hashes: Sequence[bytes]) -> set[bytes]:
        """The token hashes among these that still have a session."""
        async with self._conn() as conn:
            rows = await conn.fetch(Q_LIVE_SESSIONS, list(token_hashes))
        return {bytes(r["token_hash"]) for r in rows}

    # -- messages -----------------------------------------------------------

    async def insert_message(
        self, room: int, sender: User, body: str, client_id: str | None
    ) -> tuple[Message, bool] | None:
        """Store a message; (message, created). None if the sender is not a member.

        Group commit: with nothing in flight a send is stored at once; while a
        batch is in flight, sends gather for `write_batch_window` (or until
        `write_batch_size`, or until all `write_batches` lanes are busy, when they
        wait for one) and go together: one statement, one commit, and each caller
        still returns only after the commit that stored its message.
        """
        done: asyncio.Future[tuple[Message, bool] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(_Send(room, sender, body, client_id, done))
        self._flush_more()
        return await done

    def _flush_more(self, gathered: bool = False) -> None:
        while self._queue and self._inflight < self._max_inflight:
            if (
                not gathered
                and self._inflight
                and self._window > 0
                and len(self._queue) < self._batch_size
            ):
                # A commit is under way: gather what arrives meanwhile into one batch.
                if self._gather is None:
                    self._gather = asyncio.get_running_loop().call_later(
                        self._window, self._gathered
                    )
                return
            if self._gather is not None:
                self._gather.cancel()
                self._gather = None
            batch = self._queue[: self._batch_size]
            del self._queue[: self._batch_size]
            self._inflight += 1
            task = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    def _gathered(self) -> None:
        self._gather = None
        self._flush_more(gathered=True)

    async def _flush(self, batch: list[_Send]) -> None:
        # A caller that gave up (its client left) before the batch ran stores nothing.
        batch = [item for item in batch if not item.done.done()]
        try:
            try:
                stored = await self._insert_batch(batch) if len(batch) > 1 else {}
            except asyncpg.UniqueViolationError:
                stored = {}  # a duplicate raced in from elsewhere: answer one by one
            for index, item in enumerate(batch, 1):
                if item.done.done():
                    continue
                row = stored.get(index)
                if row is not None:
                    message = Message(
                        id=row["id"],
                        room=item.room,
                        seq=row["seq"],
                        sender=item.sender,
                        body=item.body,
                        client_id=item.client_id,
                        ts=iso(row["created_at"]),
                    )
                    item.done.set_result((message, True))
                    continue
                try:
                    result = await self._insert_one(
                        item.room, item.sender, item.body, item.client_id
                    )
                except Exception as exc:  # handed to the waiting caller
                    if not item.done.done():
                        item.done.set_exception(exc)
                else:
                    if not item.done.done():
                        item.done.set_result(result)
        except BaseException as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc if isinstance(exc, Exception) else unavailable())
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            self._flush_more()

    async def _insert_batch(self, batch: list[_Send]) -> dict[int, Any]:
        """One transaction for many sends; {position in batch (1-based): row} of those stored."""
        rooms = sorted({item.room for item in batch})
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q_LOCK_ROOMS, rooms)
            rows = await conn.fetch(
                Q_INSERT_MESSAGES,
                [item.room for item in batch],
                [item.sender.id for item in batch],
                [item.body for item in batch],
                [item.client_id for item in batch],
            )
        return {row["ord"]: row for row in rows}

    async def _insert_one(
        self, room: int, sender: User, body: str, client_id: str | None
    ) -> tuple[Message, bool] | None:
        """The single-row path: one statement, duplicates answered with the first."""
        async with self._conn() as conn:
            try:
                row = await conn.fetchrow(Q_INSERT_MESSAGE, room, sender.id, body, client_id)
            except asyncpg.UniqueViolationError:
                # A retry or a racing duplicate of the same client_id: return the first.
                row = await conn.fetchrow(Q_MESSAGE_BY_CLIENT_ID, room, sender.id, client_id)
                if row is None:  # pragma: no cover - the row exists since the violation
                    raise
                return message_from_row(row), False
        if row is None:
            return None
        message = Message(
            id=row["id"],
            room=room,
            seq=row["seq"],
            sender=sender,
            body=body,
            client_id=client_id,
            ts=iso(row["created_at"]),
        )
        return message, True

    async def messages_after(self, room: int, after: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MESSAGES_AFTER, room, after, limit)
        return [message_from_row(r) for r in rows]

    async def messages_before(self, room: int, before: int, limit: int) -> list[Message]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_MESSAGES_BEFORE, room, before, limit)
        return [message_from_row(r) for r in reversed(rows)]

    async def edit_message(self, room: int, message: int, editor: int, body: str) -> Message:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_EDIT_MESSAGE, room, message, editor, body)
        if row is None:
            raise ChatError("not_found", "no such message in this room")
        if row["id"] is None:
            if row["was_deleted"]:
                raise ChatError("conflict", "a deleted message cannot be edited")
            raise ChatError("forbidden", "only the sender edits a message")
        return message_from_row(row)

    async def delete_message(self, room: int, message: int, user: int) -> int:
        """Tombstone a message; returns its seq."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_DELETE_MESSAGE, room, message, user)
        if row is None:
            raise ChatError("not_found", "no such message in this room")
        if not row["deleted"]:
            raise ChatError("forbidden", "only the sender or the room's creator deletes a message")
        return int(row["seq"])

    # -- search -------------------------------------------------------------

    async def search(
        self, user: int, query: str, room: int | None, before: int | None, limit: int
    ) -> list[tuple[Message, str | None]]:
        """Messages matching `query` (to_tsquery input) in the user's rooms, newest first.

        Each with its ts_headline text (chat/search.py turns it into ranges).
        """
        async with self._conn() as conn, conn.transaction(readonly=True):
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
            try:
                rows = await conn.fetch(
                    Q_SEARCH_MESSAGES,
                    head["rooms"],
                    head["query"],
                    before if before is not None else 2**62,
                    limit,
                )
            except SEARCH_REJECTED:
                raise invalid("`q` is not a query the database can search for") from None
        return [(message_from_row(r), r["headline"]) for r in rows]
