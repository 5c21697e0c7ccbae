"""Passwords and tokens: how a user proves who they are.

Passwords are hashed with argon2id (OWASP: 19 MiB, 2 passes, 1 lane) in a
worker thread so the event loop keeps serving; an unknown username is checked
against a dummy hash so that it costs the same as a wrong password. Tokens are
32 random bytes; only their SHA-256 is stored, and neither is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .config import Settings
from .errors import ChatError
from .protocol import User
from .store import Store

_UNAUTHORIZED = "wrong username or password"


def new_token() -> tuple[str, bytes]:
    """A fresh token (256 random bits, URL-safe text) and the hash that is stored."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Accounts:
    """Sign-up, log-in, bots and token checks, on top of the store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        # argon2id with the configured cost (OWASP's minimum by default).
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=1,
        )
        # Verified against when the username is unknown, so both failures take as long.
        self.dummy_hash = self.hasher.hash(secrets.token_hex(16))

    async def sign_up(self, username: str, password: str) -> User:
        digest = await asyncio.to_thread(self.hasher.hash, password)
        return await self.store.create_user(username, digest)

    async def log_in(self, username: str, password: str) -> tuple[str, User]:
        found = await self.store.user_for_login(username)
        digest = found[1] if found else self.dummy_hash
        ok = await asyncio.to_thread(self._verify, digest, password)
        if found is None or not ok:
            raise ChatError("unauthorized", _UNAUTHORIZED)
        user = found[0]
        token, token_hash = new_token()
        await self.store.create_session(token_hash, user.id, expires_idle=True)
        return token, user

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    async def create_bot(self, owner: User, username: str) -> tuple[str, User]:
        if owner.bot:
            raise ChatError("forbidden", "a bot cannot create bots: its owner can")
        bot = await self.store.create_bot(username, owner.id)
        token, token_hash = new_token()
        await self.store.create_session(token_hash, bot.id, expires_idle=False)
        return token, bot

    async def authenticate(self, token: str) -> tuple[User, bytes]:
        """The user a token belongs to, and the token's hash; 401 if none."""
        if not token or len(token) > 512:
            raise ChatError("unauthorized", "a valid token is needed")
        token_hash = hash_token(token)
        user = await self.store.session_user(token_hash)
        if user is None:
            raise ChatError("unauthorized", "the token is unknown, expired or revoked")
        return user, token_hash

    async def log_out(self, token_hash: bytes) -> None:
        await self.store.delete_session(token_hash)
