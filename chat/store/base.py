"""What every part of `Store` shares: the pool, the read replica, errors and row mappers.

The package's own docstring (`store/__init__.py`) says how PostgreSQL outages
and the read replica are handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import asyncpg
import msgspec

from .. import metrics, migrate
from ..config import Settings
from ..errors import ChatError, forbidden, invalid, unavailable
from ..protocol import (
    Message,
    Reaction,
    Room,
    User,
    iso,
)
from ..sql import QUERIES

log = logging.getLogger("chat.store")
# Read once at import: a name missing from sql/queries fails here, at start-up.
Q_LAST_SEQS = QUERIES["last_seqs"]
Q_WAL_POSITION = QUERIES["wal_position"]
Q_REPLAY_POSITION = QUERIES["replay_position"]

T = TypeVar("T")

# Seconds between two measurements of the replica's lag.
LAG_CHECK_INTERVAL = 1.0
# Seconds a replica gets to hand over a connection or answer the lag check before it
# counts as down: reads never wait longer than this on it.
REPLICA_TIMEOUT = 1.0

# Plain messages (no thread, no mention) keep the statements from before conversations.

# PostgreSQL refusing a search query (a tsquery it cannot parse or that is too large):
# the caller's input, so `invalid`, not a server failure.
SEARCH_REJECTED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresSyntaxError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg.exceptions.DataError,
)

# Raised by the members trigger (migration 0005) for a banned newcomer.
SQLSTATE_BANNED = "CHB01"

# The most distinct emoji one message holds.
MAX_EMOJI = 20

_reactions_decoder = msgspec.json.Decoder(list[Reaction])

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


# What makes a lag check fail: unreachable, or refusing (a server shutting down).
CHECK_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to store: what a send carries."""

    room: int
    sender: User
    body: str
    client_id: str | None
    # The root of the thread this replies in (checked to be a root of the room).
    thread: int | None = None
    # Lower-cased names after `@`, space-separated (mentions.Found.joined); None for none.
    names: str | None = None
    # The body says @room.
    mention_room: bool = False

    @property
    def plain(self) -> bool:
        """No thread and no mention: stored by the statement plain messages always had."""
        return self.thread is None and self.names is None and not self.mention_room


@dataclass(frozen=True, slots=True)
class Access:
    """What a user may do in a room, read in one query."""

    private: bool
    created_by: int
    last_seq: int
    member: bool
    # A direct-message room: no moderation, and nobody else comes in.
    dm: bool = False
    # The user's role when a member: owner, moderator or member.
    role: str | None = None
    # When the user's mute ends, if they are muted now.
    muted_until: dt.datetime | None = None
    # Banned from the room: no joining or being added until unbanned.
    banned: bool = False
    # The room's slow mode (seconds) and when the user last sent there: why a send
    # that stored nothing was refused.
    slow_mode: int = 0
    last_sent_at: dt.datetime | None = None
    # PostgreSQL's clock when this was read: what mutes and slow mode are measured by.
    now: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """A webhook event this process claimed: the head of its (bot, room) lane."""

    id: int
    bot: int
    room: int
    message: int
    # Attempts so far, this one included.
    attempts: int
    # Seconds since the event was written.
    age: float


@dataclass(frozen=True, slots=True)
class EventParts:
    """What a delivery sends: the webhook (None if removed), the bot and the message."""

    url: str | None
    secret: str | None
    bot: User
    message: Message


def _user(row: Any, prefix: str = "") -> User:
    return User(id=row[prefix + "id"], username=row[prefix + "username"], bot=row[prefix + "bot"])


def _dm(row: Any) -> User | None:
    """The other person of a DM from the `dm_` columns; None for other rooms."""
    return None if row["dm_id"] is None else _user(row, "dm_")


def _room(row: Any) -> Room:
    return Room(
        id=row["id"],
        name=row["name"],
        private=row["private"],
        created_by=_user(row, "creator_"),
        dm=_dm(row),
        topic=row["topic"],
        slow_mode=row["slow_mode"],
    )


def _too_many_adds() -> ChatError:
    return ChatError(
        "rate_limited", "this user was added to too many rooms lately: try again later"
    )


def message_from_row(row: Any, draft: Draft | None = None) -> Message:
    """A message from a row of the message queries, or from an insert's row
    (id, seq, created_at) and the draft it stored."""
    if draft is not None:
        return Message(
            id=row["id"],
            room=draft.room,
            seq=row["seq"],
            sender=draft.sender,
            body=draft.body,
            client_id=draft.client_id,
            ts=iso(row["created_at"]),
            thread=draft.thread,
            mentions=list(row["mentions"]),
            mention_room=draft.mention_room,
        )
    last_reply_at = row["last_reply_at"]
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
        thread=row["thread_id"],
        reply_count=row["reply_count"],
        last_reply_at=None if last_reply_at is None else iso(last_reply_at),
        reactions=reactions_from(row["reactions"]),
        mentions=list(row["mentions"]),
        mention_room=row["mention_room"],
    )


def reactions_from(value: str | None) -> list[Reaction]:
    """The stored aggregate (jsonb text, null for none) as the contract's list."""
    return [] if value is None else _reactions_decoder.decode(value)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (`RESET ALL`, `UNLISTEN *`, ...).

    No query here changes session state (no SET, LISTEN or cursor; the one
    advisory lock, taken by migrate, is released in its `finally`), so the
    reset only cost a round trip and a transaction per pool use.
    """


def replay_lag(marks: deque[tuple[float, int]], replayed: int | None, now: float) -> float:
    """Seconds a replica is behind: the age of the oldest primary WAL position (sampled
    each second into `marks`, oldest first) it has not replayed yet; 0 when it has
    replayed them all. Drops the marks it has passed. `replayed` None: not a standby
    (promoted, or misconfigured), so nothing to wait for."""
    if replayed is None:
        marks.clear()
        return 0.0
    while marks and marks[0][1] <= replayed:
        marks.popleft()
    return now - marks[0][0] if marks else 0.0


class Replica:
    """A streaming replica's pool, and whether reads may use it now (lag checked each second).

    Lag is the age of the oldest primary WAL position the replica has not yet
    replayed: each second the primary's `pg_current_wal_lsn()` is recorded with
    the time, and the replica's `pg_last_wal_replay_lsn()` says which records it
    has passed. An idle primary therefore shows no lag (unlike
    `pg_last_xact_replay_timestamp()`, which ages while nothing is written), and a
    paused or stuck replay shows its true age within a second.
    """

    def __init__(self, pool: asyncpg.Pool, primary: asyncpg.Pool, max_lag: float) -> None:
        self.pool = pool
        self.primary = primary
        self.max_lag = max_lag
        # (monotonic time, primary WAL position) each second, oldest first.
        self.marks: deque[tuple[float, int]] = deque(maxlen=3600)
        # Seconds behind at the latest check (inf while unreachable).
        self.lag = float("inf")
        # Reads may go to the replica: reachable, and lag within max_lag.
        self.usable = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._watch(), name="replica-lag")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pool.close()

    async def _watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(LAG_CHECK_INTERVAL)

    async def check(self) -> None:
        now = time.monotonic()
        try:
            async with asyncio.timeout(REPLICA_TIMEOUT):
                position = await self.primary.fetchval(Q_WAL_POSITION)
            self.marks.append((now, int(position)))
        except CHECK_ERRORS:
            pass  # the primary is away: its last known positions still apply
        try:
            async with asyncio.timeout(REPLICA_TIMEOUT):
                replayed = await self.pool.fetchval(Q_REPLAY_POSITION)
        except CHECK_ERRORS:
            self.failed()
            return
        self.lag = replay_lag(self.marks, None if replayed is None else int(replayed), now)
        was = self.usable
        self.usable = self.lag <= self.max_lag
        if was != self.usable:
            log.warning(
                "read replica " + ("in use" if self.usable else "bypassed: behind"),
                extra={"lag": round(self.lag, 3)},
            )
        metrics.DB_REPLICA_LAG.set(self.lag)
        metrics.DB_REPLICA_USABLE.set(1 if self.usable else 0)

    def failed(self) -> None:
        """The replica did not answer: bypass it until a check finds it again."""
        if self.usable:
            log.warning("read replica bypassed: unreachable")
        self.usable = False
        self.lag = float("inf")
        metrics.DB_REPLICA_LAG.set(self.lag)
        metrics.DB_REPLICA_USABLE.set(0)


class StoreBase:
    """The message store: every read and write of PostgreSQL goes through here."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        # The connection pool; its size and timeouts come from the settings.
        self.pool = pool
        # Idle expiry of user sessions, in seconds.
        self.session_idle_seconds = settings.session_idle_days * 86400
        # The read replica (DATABASE_READ_URL), if any.
        self.replica: Replica | None = None

    @classmethod
    async def connect(cls, settings: Settings, *, run_migrations: bool = True) -> Self:
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
        if settings.database_read_url:
            # min_size 0: a replica that is down at start-up delays nothing.
            read_pool = await asyncpg.create_pool(
                settings.database_read_url,
                min_size=0,
                max_size=settings.db_pool_max,
                command_timeout=settings.db_command_timeout,
                timeout=REPLICA_TIMEOUT,
                max_inactive_connection_lifetime=60,
                reset=_keep_session,
            )
            store.replica = Replica(read_pool, pool, settings.read_max_lag)
            store.replica.start()
        return store

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.close()
        await self.pool.close()

    async def read(self, query: Callable[[Any], Awaitable[T]]) -> T:
        """Run `query(conn)` on the replica while it is usable, else (or if it fails) on
        the primary. For reads that may lag by up to READ_MAX_LAG: never for anything
        that must be current (sends, acks, gap repair, replay after join, access)."""
        replica = self.replica
        if replica is not None and replica.usable:
            try:
                async with replica.pool.acquire(timeout=REPLICA_TIMEOUT) as conn:
                    result = await query(conn)
                metrics.DB_READS.labels("replica").inc()
                return result
            except UNAVAILABLE_ERRORS as exc:
                log.warning("read replica failed a read", extra={"error": type(exc).__name__})
                replica.failed()
        metrics.DB_READS.labels("primary").inc()
        async with self._conn() as conn:
            return await query(conn)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            log.warning("postgresql unavailable", extra={"error": type(exc).__name__})
            raise unavailable("the database is unavailable; retry") from None
        except asyncpg.DataError as exc:
            # A value PostgreSQL refuses (a NUL in text, an integer beyond bigint), from
            # asyncpg's encoder or the server: bad input, not a fault. The protocol's
            # checks should have refused it first, hence a warning (without the value).
            log.warning("postgresql refused a value", extra={"error": type(exc).__name__})
            raise invalid(
                "a value is out of range or holds a character that cannot be stored"
            ) from None
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != SQLSTATE_BANNED:
                raise
            # A join or an add that raced a ban and lost (the members trigger refused it).
            raise forbidden("banned from this room") from None

    async def ping(self) -> bool:
        try:
            async with self._conn() as conn:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), 2)
        except ChatError:
            return False
        except UNAVAILABLE_ERRORS:
            return False
        return True

    async def last_seqs(self, rooms: Sequence[int]) -> dict[int, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_LAST_SEQS, list(rooms))
        return {r["id"]: r["last_seq"] for r in rows}
