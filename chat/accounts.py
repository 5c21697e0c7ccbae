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
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import mentions, metrics
from .broker import Counters
from .config import Settings
from .errors import ChatError, invalid
from .jwt_auth import Claims, JwtVerifier, looks_like_jwt
from .protocol import User
from .store import Store
from .throttle import Throttle

T = TypeVar("T")

_UNAUTHORIZED = "wrong username or password"

# The longest token accepted anywhere: the server's own are 43 characters, an RS256 JWT ~650.
MAX_TOKEN_CHARS = 4096
_USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
_NOT_USERNAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token belongs to: the user, the token's hash, and when it expires.

    `expires` (UNIX seconds) is set for a JWT only: its socket closes then. A
    server token has a session row instead, which a log-out or the idle rule ends.
    """

    user: User
    token_hash: bytes
    expires: float | None = None


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
        # JWTs of the identity provider, when AUTH_JWT_SECRET or AUTH_JWT_JWKS_URL is set.
        self.jwt = JwtVerifier(settings)

    def close(self) -> None:
        """Stop the hashing threads; hashes still waiting are dropped."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """`close`, and the JWKS client."""
        self.close()
        await self.jwt.close()

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
            # A user made by a JWT has no password: it signs in through its provider only.
            digest = found[1] if found and found[1] else self.dummy_hash
            ok = await self._hash(self._verify, digest, password)
            if found is None or not found[1] or not ok:
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
        identity = await self.identify(token)
        return identity.user, identity.token_hash

    async def identify(self, token: str) -> Identity:
        """Who a token (the server's own or the identity provider's JWT) belongs to; 401 if
        nobody. A JWT's user is made on the first sight of its (issuer, subject)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise ChatError("unauthorized", "a valid token is needed")
        token_hash = hash_token(token)
        if self.jwt.enabled and looks_like_jwt(token):
            claims = await self.jwt.verify(token)
            return Identity(await self._provision(claims), token_hash, claims.expires)
        user = await self.store.session_user(token_hash)
        if user is None:
            raise ChatError("unauthorized", "the token is unknown, expired or revoked")
        return Identity(user, token_hash)

    async def _provision(self, claims: Claims) -> User:
        """The user of (issuer, subject), made now if this is its first JWT.

        Named `preferred_username` when that is a valid username and free, else a name
        made from it (its username characters, then a random suffix). Later tokens of
        the subject are the same user whatever name they carry.
        """
        user = await self.store.identity_user(claims.issuer, claims.subject)
        if user is not None:
            return user
        for name in _candidate_names(claims.preferred_username):
            user = await self.store.create_identity_user(claims.issuer, claims.subject, name)
            if user is not None:
                return user
        raise ChatError("unavailable", "no free username was found for this user; retry")

    async def log_out(self, token_hash: bytes) -> None:
        await self.store.delete_session(token_hash)


def _candidate_names(preferred: str | None, tries: int = 8) -> list[str]:
    """Usernames to try for a new JWT user: `preferred` as it is when valid, then names
    made from it (or from "user") with a random suffix."""
    names = []
    if preferred and _USERNAME.fullmatch(preferred):
        names.append(preferred)
    base = _NOT_USERNAME.sub("", preferred or "")[:24] or "user"
    if len(base) < 3:
        base = f"user-{base}"
    names += [f"{base}-{secrets.token_hex(3)}" for _ in range(tries)]
    return names
