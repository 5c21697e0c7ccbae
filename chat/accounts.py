"""Passwords and tokens: how a user proves who they are.

Passwords are hashed with argon2id (OWASP: 19 MiB, 2 passes, 1 lane) on a
small pool of threads of its own, so the event loop keeps serving; an unknown
username is checked against a dummy hash so that it costs the same as a wrong
password. The pool's queue is bounded: when `ARGON2_THREADS` are busy and
`ARGON2_QUEUE` hashes wait, the next gets 503 at once, rather than every
log-in waiting behind a flood. Wrong log-ins are throttled (`throttle.py`)
before any hashing. Tokens are 32 random bytes; only their SHA-256 is stored,
and neither is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import mentions, metrics
from .broker import Counters
from .config import Settings
from .errors import ChatError, invalid
from .protocol import User
from .store import Store
from .throttle import Throttle

T = TypeVar("T")

_UNAUTHORIZED = "wrong username or password"


def new_token() -> tuple[str, bytes]:
    """A fresh token (256 random bits, URL-safe text) and the hash that is stored."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def _check_username(username: str) -> None:
    """`room`, `here` and `everyone` (any case) would read as group mentions."""
    if mentions.reserved(username):
        raise invalid(f"{username!r} is reserved: choose another username")


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Accounts:
    """Sign-up, log-in, bots and token checks, on top of the store."""

    def __init__(self, store: Store, settings: Settings, counters: Counters) -> None:
        self.store = store
        # Wrong log-ins and sign-ups, counted across processes.
        self.throttle = Throttle(counters, settings)
        # Hashing gets threads of its own, not the default pool that other work shares.
        self.pool = ThreadPoolExecutor(settings.argon2_threads, thread_name_prefix="argon2")
        # One slot per hash running or waiting; released by the pool's thread when it
        # ends, so a client that hangs up does not free a slot its hash still holds.
        self.slots = threading.BoundedSemaphore(settings.argon2_threads + settings.argon2_queue)
        # argon2id with the configured cost (OWASP's minimum by default).
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=1,
        )
        # Verified against when the username is unknown, so both failures take as long.
        self.dummy_hash = self.hasher.hash(secrets.token_hex(16))

    def close(self) -> None:
        """Stop the hashing threads; hashes still waiting are dropped."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _hash(self, work: Callable[..., T], *args: str) -> T:
        """Run one argon2 call on the pool; 503 when its queue is full."""
        if not self.slots.acquire(blocking=False):
            metrics.THROTTLED.labels("hashing-queue-full").inc()
            raise ChatError(
                "unavailable", "the server is busy checking passwords; retry", retry_after=1
            )
        try:
            future = self.pool.submit(work, *args)
        except RuntimeError:  # the pool is shut down: the process is stopping
            self.slots.release()
            raise ChatError("unavailable", "the server is stopping; retry", retry_after=1) from None
        future.add_done_callback(lambda _: self.slots.release())
        metrics.PASSWORD_HASHES.inc()
        return await asyncio.wrap_future(future)

    async def sign_up(self, username: str, password: str, address: str) -> User:
        _check_username(username)
        await self.throttle.check_sign_up(address)
        digest = await self._hash(self.hasher.hash, password)
        return await self.store.create_user(username, digest)

    async def log_in(self, username: str, password: str, address: str) -> tuple[str, User]:
        async with self.throttle.turn(username):
            await self.throttle.check_log_in(username, address)
            found = await self.store.user_for_login(username)
            digest = found[1] if found else self.dummy_hash
            ok = await self._hash(self._verify, digest, password)
            if found is None or not ok:
                await self.throttle.log_in_failed(username, address)
                raise ChatError("unauthorized", _UNAUTHORIZED)
            await self.throttle.log_in_succeeded(username)
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
        _check_username(username)
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
