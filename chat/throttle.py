"""Log-in and sign-up throttling, shared by every process through the broker's counters.

Wrong passwords are counted per account (its username in lower case, so that
"Alice" and "ALICE" share one count) and per client address; after a few, the
account or the address is locked for a delay that doubles with each further
failure, up to a cap. A log-in refused by a lock gets 429 with `Retry-After`
before any password is hashed, so guessing costs the server nothing. A correct
password clears the account's count (not the address's: one valid account
must not reset an address guessing others). Within a process, log-ins to one
account go one at a time: concurrent guesses would otherwise all pass the lock
check before the first failure is counted. Sign-ups are counted per address
in a fixed window. Loopback is exempt from the per-address counts outside
production (`limits.exempt`); the per-account count never is.

If the broker does not answer, the throttle lets the request through: the
bounded hashing queue (`accounts.py`) still protects the process, and log-in
keeps working while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from . import metrics
from .broker import Counters
from .config import Settings
from .errors import ChatError
from .limits import exempt

log = logging.getLogger("chat.throttle")

T = TypeVar("T")

# Seconds a broker call may take before the throttle gives up on it and lets the request in.
BROKER_WAIT = 1.0


def _retry_after(seconds: float) -> int:
    """Whole seconds for `Retry-After`: rounded up, so that a retry then is not refused."""
    return max(1, math.ceil(seconds))


class Throttle:
    """The failure counts and locks of log-ins, and the sign-up counts."""

    def __init__(self, counters: Counters, settings: Settings) -> None:
        # Where the counts live: Redis, shared by every process, or this process's memory.
        self.counters = counters
        # The LOGIN_* and SIGNUP* limits, and whether loopback is exempt (not in production).
        self.settings = settings
        # Account key -> its lock and the log-ins holding or awaiting it, while any do.
        self.turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @staticmethod
    def _account(username: str) -> str:
        # Hashed: a log-in's username is free text up to 256 characters.
        digest = hashlib.sha256(username.lower().encode("utf-8", "surrogatepass")).hexdigest()
        return f"login:user:{digest[:32]}"

    def _address(self, kind: str, address: str) -> str | None:
        if not address or exempt(address, self.settings.production):
            return None
        return f"{kind}:addr:{address}"

    async def _ask(self, call: Awaitable[T], default: T) -> T:
        try:
            return await asyncio.wait_for(call, BROKER_WAIT)
        except Exception as exc:  # the broker is down or slow: fail open (see the docstring)
            metrics.BROKER_ERRORS.inc()
            log.warning("throttle not consulted", extra={"error": type(exc).__name__})
            return default

    @contextlib.asynccontextmanager
    async def turn(self, username: str) -> AsyncIterator[None]:
        """Hold the account's log-in turn in this process (see the module's docstring)."""
        key = self._account(username)
        lock, waiting = self.turns.setdefault(key, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                del self.turns[key]

    async def check_log_in(self, username: str, address: str) -> None:
        """Refuse with 429 while the account or the address is locked."""
        keys = [self._account(username), self._address("login", address)]
        waits = await asyncio.gather(
            *(self._ask(self.counters.locked(key), 0.0) for key in keys if key is not None)
        )
        wait = max(waits)
        if wait > 0:
            metrics.THROTTLED.labels("log-in").inc()
            raise ChatError(
                "rate_limited",
                f"too many wrong log-ins: retry in {_retry_after(wait)} s",
                retry_after=_retry_after(wait),
            )

    async def log_in_failed(self, username: str, address: str) -> None:
        s = self.settings
        account = self.counters.failure(
            self._account(username), s.login_free_failures, s.login_delay, s.login_delay_max
        )
        calls = [self._ask(account, 0.0)]
        key = self._address("login", address)
        if key is not None:
            by_address = self.counters.failure(
                key, s.login_address_free_failures, s.login_delay, s.login_delay_max
            )
            calls.append(self._ask(by_address, 0.0))
        await asyncio.gather(*calls)

    async def log_in_succeeded(self, username: str) -> None:
        await self._ask(self.counters.forget(self._account(username)), None)

    async def check_sign_up(self, address: str) -> None:
        """Count a sign-up attempt from `address`; 429 beyond the limit of its window."""
        key = self._address("signup", address)
        if key is None:
            return
        count, left = await self._ask(self.counters.hit(key, self.settings.signup_window), (0, 0.0))
        if count > self.settings.signups_per_address:
            metrics.THROTTLED.labels("sign-up").inc()
            raise ChatError(
                "rate_limited",
                f"too many sign-ups from this address: retry in {_retry_after(left)} s",
                retry_after=_retry_after(left),
            )
