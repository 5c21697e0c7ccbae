"""Tokens and memberships as every process must see them.

A log-out or a bot's rotated token closes that token's sockets on every
process (one control publication); a removal stops the member's sockets from
receiving the room everywhere (one publication on the room's channel); a
socket opened with a JWT closes with 4001 when the JWT expires unless
`refresh` moved its expiry. The broker may lose a publication, so `recheck`
re-reads memberships and sessions from PostgreSQL periodically and after a
reconnect, before anything stored meanwhile is delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from . import metrics
from .accounts import Accounts
from .bots import BotTokens
from .errors import Close, forbidden, invalid
from .fanout import Fanout
from .hub import Connection, Hub
from .presence import PresenceTracker
from .protocol import Kind, RemovedFrame, User, encode_text
from .store import Store

Spawn = Callable[[Awaitable[None], str], "asyncio.Task[None]"]


class Sessions:
    """Log-outs, token rotations, JWT expiry and removals, applied on every process."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        bot_tokens: BotTokens,
        hub: Hub,
        fanout: Fanout,
        presence: PresenceTracker,
        control: str,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.bot_tokens = bot_tokens
        self.hub = hub
        self.fanout = fanout
        self.presence = presence
        # The channel every process hears log-outs on.
        self.control = control
        # Starts a background task the node owns.
        self._spawn = spawn
        # The connections opened with a JWT, by id: the timer that closes each when its
        # token expires. They have no session row, so the session re-check skips them.
        self.expiring: dict[int, asyncio.TimerHandle] = {}

    # -- JWT expiry ------------------------------------------------------------

    def jwt(self, conn: Connection) -> bool:
        """Whether `conn` was opened with a JWT (it ends when the JWT expires)."""
        return conn.id in self.expiring

    def forget(self, conn: Connection) -> None:
        """`conn` is gone: its expiry timer too."""
        handle = self.expiring.pop(conn.id, None)
        if handle is not None:
            handle.cancel()

    def expire_at(self, conn: Connection, expires: float) -> None:
        """Close `conn` with 4001 when its JWT expires (replacing an earlier timer)."""
        old = self.expiring.pop(conn.id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, expires - time.time())
        self.expiring[conn.id] = asyncio.get_running_loop().call_later(delay, self._expired, conn)

    def _expired(self, conn: Connection) -> None:
        self.expiring.pop(conn.id, None)
        conn.close(Close.UNAUTHORIZED, "the token expired: sign in again")
        metrics.CLOSES.labels(str(Close.UNAUTHORIZED)).inc()

    async def refresh(self, conn: Connection, token: str) -> None:
        """A fresh JWT of the same user moves the socket's expiry to the new token's."""
        if not self.jwt(conn):
            raise invalid("only a socket opened with a JWT takes `refresh`")
        identity = await self.accounts.identify(token)
        if identity.expires is None:
            raise invalid("`refresh` takes a JWT")
        if identity.user.id != conn.user.id:
            raise forbidden("the token is another user's")
        self.expire_at(conn, identity.expires)

    # -- membership and sessions, everywhere ----------------------------------

    async def removed(self, room: int, user: int) -> None:
        """`user` is no longer a member of `room`: their sockets stop receiving it everywhere."""
        self.kick(room, user)
        await self.fanout.publish(self.fanout.channel(room), Kind.REMOVED, target=str(user))

    def kick(self, room: int, user: int) -> None:
        """Stop `user`'s connections here from receiving `room` (they were removed)."""
        text = encode_text(RemovedFrame(room=room))
        for conn in self.hub.members_here(room, user):
            conn.push(text)
            if self.hub.remove(conn, room):
                self._spawn(self.presence.leave(room, conn.user), "presence-leave")
        state = self.hub.rooms.get(room)
        if state is not None and not state.conns:
            self._spawn(self.fanout.close(state), "release")

    def close_tokens(self, token_hashes: Iterable[bytes]) -> None:
        for token_hash in token_hashes:
            for conn in self.hub.by_token(token_hash):
                conn.close(Close.UNAUTHORIZED, "logged out")
                metrics.CLOSES.labels(str(Close.UNAUTHORIZED)).inc()

    async def revoked(self, token_hashes: Sequence[bytes]) -> None:
        """Close the sockets of tokens whose sessions just ended, here and on every process.

        One control publication (the hashes comma-separated) per call; a process that
        misses it finds the ended sessions at its next access re-check.
        """
        if not token_hashes:
            return
        self.close_tokens(token_hashes)
        target = ",".join(h.hex() for h in token_hashes)
        await self.fanout.publish(self.control, Kind.LOGOUT, target=target)

    async def log_out(self, token_hash: bytes) -> None:
        await self.accounts.log_out(token_hash)
        await self.revoked([token_hash])

    async def replace_bot_tokens(
        self, owner: User, username: str, *, rotate: bool
    ) -> tuple[str | None, User]:
        """Rotate (a new token) or revoke a bot's tokens; the old ones' sockets close with 4001."""
        token, bot, ended = await self.bot_tokens.replace(owner, username, rotate=rotate)
        await self.revoked(ended)
        return token, bot

    async def recheck(self) -> None:
        """Apply removals and log-outs whose broadcast was lost with the broker link.

        Run before a fill delivers what was stored meanwhile, so a removed member
        gets none of it.
        """
        pairs = {
            (room, c.user.id) for room, st in self.hub.rooms.items() for c in st.conns.values()
        }
        if pairs:
            members = await self.store.memberships(
                sorted({room for room, _ in pairs}), sorted({user for _, user in pairs})
            )
            for room, user in sorted(pairs - members):
                self.kick(room, user)
        tokens = {
            conn.token_hash
            for conn in self.hub.connections.values()
            if not self.jwt(conn)  # a JWT's socket ends when the JWT expires
        }
        if tokens:
            self.close_tokens(tokens - await self.store.live_sessions(sorted(tokens)))
