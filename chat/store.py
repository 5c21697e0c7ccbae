"""PostgreSQL: the asyncpg pool and every query of `sql/queries`, returning protocol types.

Only this module knows asyncpg. A lost or refused connection, a timed-out
command or a server shutting down becomes `ChatError("unavailable")`, so a
request fails cleanly while PostgreSQL is away and the pool reconnects by
itself once it is back. Constraint violations are matched by exception class.

With `DATABASE_READ_URL`, reads that may lag (history pages here; the
directory, search and thread lists through `Store.read`) go to a streaming
replica while `Replica` says it is usable: up, and its replay at most
`READ_MAX_LAG` behind, measured every second by comparing LSNs, never per
query. A replica that is behind, down or failing is bypassed at once for the
primary; nothing waits for it. Everything that must be current (sends, acks,
gap repair, replay after `join`, access checks) always reads the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import msgspec

from . import metrics, migrate
from .config import Settings
from .errors import ChatError, forbidden, invalid, not_found, unavailable
from .protocol import (
    AuditEntry,
    Ban,
    Delivery,
    DirectoryRoom,
    Member,
    Message,
    Reaction,
    Room,
    RoomSummary,
    ThreadItem,
    User,
    iso,
)
from .sql import QUERIES

log = logging.getLogger("chat.store")

T = TypeVar("T")

# Seconds between two measurements of the replica's lag.
LAG_CHECK_INTERVAL = 1.0
# Seconds a replica gets to hand over a connection or answer the lag check before it
# counts as down: reads never wait longer than this on it.
REPLICA_TIMEOUT = 1.0

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
Q_MESSAGE_AUTHOR = QUERIES["message_author"]
Q_EDIT_MESSAGE = QUERIES["edit_message"]
Q_DELETE_MESSAGE = QUERIES["delete_message"]
Q_LOCK_ROOMS = QUERIES["lock_rooms"]
Q_INSERT_MESSAGES = QUERIES["insert_messages"]
# Plain messages (no thread, no mention) keep the statements from before conversations.
Q_INSERT_MESSAGE_PLAIN = QUERIES["insert_message_plain"]
Q_INSERT_MESSAGES_PLAIN = QUERIES["insert_messages_plain"]
Q_LOCK_TARGET = QUERIES["lock_target"]
Q_ADD_MEMBER_BY = QUERIES["add_member_by"]
Q_RECENT_ADDS = QUERIES["recent_adds"]
Q_BLOCK = QUERIES["block"]
Q_UNBLOCK = QUERIES["unblock"]
Q_BLOCKED_USERS = QUERIES["blocked_users"]
Q_IS_BLOCKED = QUERIES["is_blocked"]
Q_BOT_BY_USERNAME = QUERIES["bot_by_username"]
Q_REPLACE_SESSIONS = QUERIES["replace_sessions"]
Q_SEARCH_PREPARE = QUERIES["search_prepare"]
Q_SEARCH_MESSAGES = QUERIES["search_messages"]
Q_SEARCH_CUSTOM_PLAN = QUERIES["search_custom_plan"]

# PostgreSQL refusing a search query (a tsquery it cannot parse or that is too large):
# the caller's input, so `invalid`, not a server failure.
SEARCH_REJECTED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresSyntaxError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg.exceptions.DataError,
)
Q_SET_WEBHOOK = QUERIES["set_webhook"]
Q_DELETE_WEBHOOK = QUERIES["delete_webhook"]
Q_CLAIM_WEBHOOK_EVENTS = QUERIES["claim_webhook_events"]
Q_WEBHOOK_EVENT_PARTS = QUERIES["webhook_event_parts"]
Q_FINISH_WEBHOOK_EVENT = QUERIES["finish_webhook_event"]
Q_RETRY_WEBHOOK_EVENT = QUERIES["retry_webhook_event"]
Q_RELEASE_WEBHOOK_LEASES = QUERIES["release_webhook_leases"]
Q_OLDEST_PENDING_WEBHOOK_EVENT = QUERIES["oldest_pending_webhook_event"]
Q_WEBHOOK_DELIVERIES = QUERIES["webhook_deliveries"]
Q_IDENTITY_USER = QUERIES["identity_user"]
Q_CREATE_IDENTITY_USER = QUERIES["create_identity_user"]
Q_LAST_SEQ = QUERIES["last_seq"]
Q_WAL_POSITION = QUERIES["wal_position"]
Q_REPLAY_POSITION = QUERIES["replay_position"]
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

# Raised by the members trigger (migration 0005) for a banned newcomer.
SQLSTATE_BANNED = "CHB01"
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


class Store:
    """The message store: every read and write of PostgreSQL goes through here."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        # The connection pool; its size and timeouts come from the settings.
        self.pool = pool
        # Idle expiry of user sessions, in seconds.
        self.session_idle_seconds = settings.session_idle_days * 86400
        # The read replica (DATABASE_READ_URL), if any.
        self.replica: Replica | None = None

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

    # -- blocks -------------------------------------------------------------

    async def block(self, blocker: int, blocked: int) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_BLOCK, blocker, blocked)

    async def unblock(self, blocker: int, blocked: int) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_UNBLOCK, blocker, blocked)

    async def blocked_users(self, blocker: int) -> list[User]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_BLOCKED_USERS, blocker)
        return [_user(r) for r in rows]

    async def is_blocked(self, blocker: int, blocked: int) -> bool:
        """Whether `blocker` blocked `blocked`."""
        async with self._conn() as conn:
            return bool(await conn.fetchval(Q_IS_BLOCKED, blocker, blocked))

    # -- bot tokens ---------------------------------------------------------

    async def bot_by_username(self, username: str) -> tuple[User, int] | None:
        """A bot and its owner's id; None for an unknown name or a person's."""
        if "\x00" in username:
            return None
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_BOT_BY_USERNAME, username)
        return None if row is None else (_user(row), int(row["owner_id"]))

    async def replace_sessions(self, user: int, token_hash: bytes | None) -> list[bytes]:
        """End every session of `user` and start `token_hash`'s (if given) at once;
        returns the ended sessions' hashes."""
        async with self._conn() as conn:
            rows = await conn.fetch(Q_REPLACE_SESSIONS, user, token_hash)
        return [bytes(r["token_hash"]) for r in rows]

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
        """The token hashes among these that still have a session, not idle-expired."""
        async with self._conn() as conn:
            rows = await conn.fetch(Q_LIVE_SESSIONS, list(token_hashes), self.session_idle_seconds)
        return {bytes(r["token_hash"]) for r in rows}

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

    # -- webhooks (issue 15) ------------------------------------------------

    async def set_webhook(self, bot: int, url: str, secret: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_SET_WEBHOOK, bot, url, secret)

    async def delete_webhook(self, bot: int) -> bool:
        """Remove the bot's webhook and fail its pending events; False if it had none."""
        async with self._conn() as conn:
            return await conn.fetchval(Q_DELETE_WEBHOOK, bot) is not None

    async def claim_webhook_events(
        self, limit: int, lease: str, seconds: float
    ) -> list[ClaimedEvent]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_CLAIM_WEBHOOK_EVENTS, limit, seconds, lease)
        return [
            ClaimedEvent(
                r["id"], r["bot_id"], r["room_id"], r["message_id"], r["attempts"], r["age"]
            )
            for r in rows
        ]

    async def webhook_event_parts(self, bot: int, message: int) -> EventParts | None:
        """None if the bot or the message is gone (deleted with their room or account)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_WEBHOOK_EVENT_PARTS, bot, message)
        if row is None:
            return None
        return EventParts(row["url"], row["secret"], _user(row, "bot_"), message_from_row(row))

    async def finish_webhook_event(
        self, event: int, lease: str, status: str, http: int | None, error: str | None
    ) -> float | None:
        """Mark an event delivered or failed; its age in seconds, or None if the lease was lost."""
        async with self._conn() as conn:
            age = await conn.fetchval(Q_FINISH_WEBHOOK_EVENT, event, lease, status, http, error)
        return None if age is None else float(age)

    async def retry_webhook_event(
        self, event: int, lease: str, delay: float, give_up: float, http: int | None, error: str
    ) -> str | None:
        """Schedule the next attempt (or fail the event past `give_up`); the status it is
        left in, or None if the lease was lost."""
        async with self._conn() as conn:
            status = await conn.fetchval(
                Q_RETRY_WEBHOOK_EVENT, event, lease, delay, give_up, http, error
            )
        return None if status is None else str(status)

    async def release_webhook_leases(self, lease: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_RELEASE_WEBHOOK_LEASES, lease)

    async def oldest_pending_webhook_event(self) -> float:
        """Seconds since the oldest pending event was written (0 when none is pending)."""
        async with self._conn() as conn:
            return float(await conn.fetchval(Q_OLDEST_PENDING_WEBHOOK_EVENT))

    async def webhook_deliveries(self, bot: int, limit: int) -> list[Delivery]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_WEBHOOK_DELIVERIES, bot, limit)
        return [
            Delivery(
                id=r["id"],
                room=r["room_id"],
                message_id=r["message_id"],
                status=r["status"],
                attempts=r["attempts"],
                last_status=r["last_status"],
                last_error=r["last_error"],
            )
            for r in rows
        ]

    # -- identities (JWT sign-in, issue 15) -----------------------------------

    async def identity_user(self, issuer: str, subject: str) -> User | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_IDENTITY_USER, issuer, subject)
        return None if row is None else _user(row)

    async def create_identity_user(self, issuer: str, subject: str, username: str) -> User | None:
        """A new user for (issuer, subject) named `username`; None if the name is taken.

        If another request made this identity's user meanwhile, that user is returned.
        """
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(Q_CREATE_IDENTITY_USER, issuer, subject, username)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_username_key":
                return None
            found = await self.identity_user(issuer, subject)
            if found is None:  # pragma: no cover - the row exists since the violation
                raise
            return found
        return _user(row)

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
        async with self._conn() as conn:
            rows = await conn.fetch(Q_THREADS_OF_USER, user, limit)
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
