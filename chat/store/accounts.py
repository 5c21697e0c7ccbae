"""Users, sessions, identities from an identity provider, bots' tokens and blocks.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..errors import ChatError
from ..protocol import (
    User,
)
from ..sql import QUERIES
from .base import StoreBase, _user

Q_CREATE_USER = QUERIES["create_user"]
Q_CREATE_BOT = QUERIES["create_bot"]
Q_USER_FOR_LOGIN = QUERIES["user_for_login"]
Q_USER_BY_USERNAME = QUERIES["user_by_username"]
Q_CREATE_SESSION = QUERIES["create_session"]
Q_SESSION_USER = QUERIES["session_user"]
Q_DELETE_SESSION = QUERIES["delete_session"]
Q_SET_READ = QUERIES["set_read"]
Q_MEMBERSHIPS = QUERIES["memberships"]
Q_LIVE_SESSIONS = QUERIES["live_sessions"]
Q_BLOCK = QUERIES["block"]
Q_UNBLOCK = QUERIES["unblock"]
Q_BLOCKED_USERS = QUERIES["blocked_users"]
Q_IS_BLOCKED = QUERIES["is_blocked"]
Q_BOT_BY_USERNAME = QUERIES["bot_by_username"]
Q_REPLACE_SESSIONS = QUERIES["replace_sessions"]
Q_IDENTITY_USER = QUERIES["identity_user"]
Q_CREATE_IDENTITY_USER = QUERIES["create_identity_user"]


class AccountQueries(StoreBase):
    """Users, sessions, identities from an identity provider, bots' tokens and blocks."""

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
