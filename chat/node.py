"""The core of a process: it ties the store, the broker and the hub together.

The node owns the life cycle (start, drain, stop), takes connections in and
out, hands each decoded frame to its use case (`messages.py`, `rooms.py`),
joins and leaves rooms (with `fanout.py` and `presence.py`), and routes what
arrives from the broker: message frames to `fanout.py`, log-outs and removals
to `sessions.py`, personal frames to `notify.py`. It runs the reconcile loop,
which re-reads what the broker may have lost from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable

import msgspec

from . import access, metrics
from .accounts import Accounts
from .blocks import Blocks
from .bots import BotTokens
from .broker import Backends
from .budgets import Budgets
from .config import Settings
from .deliveries import DeliveryWorker
from .delivery import Position
from .errors import ChatError, Close, forbidden, invalid
from .fanout import Fanout
from .hub import Connection, Hub
from .messages import Messages
from .moderation import Moderation
from .notify import Notifier, Personal
from .presence import PresenceTracker
from .protocol import (
    ClientFrame,
    Delete,
    Edit,
    Join,
    Kind,
    Leave,
    Ok,
    OkJoin,
    OkMessage,
    Ping,
    Pong,
    PresenceFrame,
    React,
    Read,
    Refresh,
    Send,
    Typing,
    Unreact,
    as_id,
    decode_envelope,
    encode_text,
)
from .reactions import Reactions
from .rooms import Rooms
from .sessions import Sessions
from .store import Store
from .threads import Threads
from .webhooks import Webhooks

log = logging.getLogger("chat.node")

# Frames held ahead of a gap before the process gives up on the room and closes
# its connections with 1012 (they resume with `since`).
PENDING_LIMIT = 10000


class Node:
    """One server process's view of the chat service."""

    def __init__(self, settings: Settings, store: Store, backends: Backends, origin: str) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker = backends.broker
        # This process's id in publications and presence entries.
        self.origin = origin
        # Log-outs for every process go here.
        self.control = f"{settings.redis_prefix}:control"
        self.accounts = Accounts(store, settings, backends.counters)
        self.blocks = Blocks(store)
        self.bot_tokens = BotTokens(store)
        self.hub = Hub(PENDING_LIMIT)
        # Background loops and fire-and-forget tasks, cancelled on stop.
        self.tasks: set[asyncio.Task[None]] = set()
        # Per-user budgets shared by HTTP and WebSocket: sends, joins and reads, replays.
        self.budgets = Budgets(settings)
        self.fanout = Fanout(settings, store, broker, self.hub, origin, self._spawn)
        self.presence = PresenceTracker(settings, backends.presence, self.fanout, self._spawn)
        # Log-outs, token rotations, JWT expiry and removals, on every process.
        self.sessions = Sessions(
            store,
            self.accounts,
            self.bot_tokens,
            self.hub,
            self.fanout,
            self.presence,
            self.control,
            self._spawn,
        )
        # Every socket of a user, on any process: notify and room_added.
        self.personal = Personal(self.hub, broker, self.fanout)
        self.notifier = Notifier(store, self.personal)
        self.messages = Messages(settings, store, self.fanout, self.budgets, self.notifier)
        self.rooms = Rooms(
            settings, store, self.presence, self.blocks, self.sessions.removed, self.personal
        )
        self.reactions = Reactions(store, self.fanout)
        self.threads = Threads(store)
        self.moderation = Moderation(store, self.fanout, self.rooms, self.sessions.removed)
        # Bots' webhooks: the owner's use cases, and this process's share of the deliveries.
        self.webhooks = Webhooks(store, settings.webhook_allow_private)
        self.deliveries = DeliveryWorker(settings, store, self.messages.send)
        # Set by `drain` at shutdown: connections are closed and new ones refused.
        self.draining = False
        # Set once draining and the last connection has gone.
        self._drained = asyncio.Event()

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        # Recorded first, so that the link comes up with it (and always has a channel).
        await self.broker.subscribe(self.control)
        await self.broker.connect(self._on_broker, self._resync_all)
        self._spawn(self._reconcile_loop(), "reconcile")
        self._spawn(self.presence.run(), "presence")
        self._spawn(self.deliveries.run(), "webhook-deliveries")

    async def stop(self) -> None:
        self._close_all()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.deliveries.close()
        await self.presence.clear()
        for conn in list(self.hub.connections.values()):
            self.sessions.forget(conn)
        await self.accounts.aclose()
        await self.broker.disconnect()

    async def drain(self, timeout: float) -> None:
        """Close every connection with 1012 and wait (up to `timeout`) until they are gone.

        Run at shutdown before the server's own teardown, which writes a close frame
        and cuts the TCP connection at once: a client still sending then gets a reset
        that can discard the frame unread (it sees 1006). Closed here, each goes
        through its writer (what is queued, then the close frame) and the closing
        handshake.
        """
        self.draining = True
        self._close_all()
        if not self.hub.connections:
            self._drained.set()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            log.warning("drain timed out", extra={"open": len(self.hub.connections)})

    def _close_all(self) -> None:
        for conn in list(self.hub.connections.values()):
            conn.close(Close.RESTART, "server restarting")

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- connections ----------------------------------------------------------

    def attach(self, conn: Connection, expires: float | None = None) -> None:
        """Take a connection in; `expires` (UNIX seconds) for one opened with a JWT."""
        if self.hub.per_user[conn.user.id] >= self.settings.max_connections_per_user:
            raise ChatError("rate_limited", "too many connections for this user")
        self.hub.attach(conn)
        if expires is not None:
            self.sessions.expire_at(conn, expires)
        metrics.CONNECTIONS.inc()
        if self.draining:
            conn.close(Close.RESTART, "server restarting")  # its hello raced the shutdown

    async def confirm(self, conn: Connection) -> None:
        """Refuse a just-attached connection whose session ended while its hello was read.

        A log-out that closed the token's sockets before `attach` missed this one;
        the session is read again now that a log-out finds it. The caller detaches
        the connection if this raises.
        """
        if self.sessions.jwt(conn):
            return  # a JWT: no session to end, it ends by expiring
        if not await self.store.live_sessions([conn.token_hash]):
            raise ChatError("unauthorized", "this session has ended: log in again")
        await self.personal.attached(conn.user.id)

    async def detach(self, conn: Connection) -> None:
        self.sessions.forget(conn)
        self.hub.detach(conn)
        metrics.CONNECTIONS.dec()
        if self.draining and not self.hub.connections:
            self._drained.set()
        await self.personal.detached(conn.user.id)
        for room in list(conn.positions):
            await self.leave(conn, room)

    # -- the WebSocket frames -------------------------------------------------

    async def handle(self, conn: Connection, frame: ClientFrame) -> None:
        """Act on one decoded frame; replies go onto the connection's queue."""
        messages = self.messages
        budget = self.budgets.of(conn.user.id)
        match frame:
            case Send():
                self._limit(conn, budget.sends.take())
                started = time.perf_counter()
                thread = None if frame.thread is None else as_id(frame.thread)
                message = await messages.send(
                    conn.user, as_id(frame.room), frame.body, frame.client_id, thread
                )
                metrics.SEND_LATENCY.observe(time.perf_counter() - started)
                await conn.put(encode_text(OkMessage(ref=frame.ref, message=message)))
            case Join():
                self._limit(conn, budget.control.take())
                await self.join(conn, frame)
            case Leave():
                self._limit(conn, budget.control.take())
                await self.leave(conn, as_id(frame.room))
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Typing():
                await messages.typing(conn, as_id(frame.room))
            case Read():
                self._limit(conn, budget.control.take())
                if frame.thread is None:
                    await messages.read(conn.user, as_id(frame.room), frame.seq)
                else:
                    await self.threads.read(
                        conn.user, as_id(frame.room), as_id(frame.thread), frame.seq
                    )
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case React() | Unreact():
                # Reactions spend the send budget.
                self._limit(conn, budget.sends.take())
                await self.reactions.change(
                    conn.user,
                    as_id(frame.room),
                    as_id(frame.id),
                    frame.emoji,
                    add=isinstance(frame, React),
                )
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Edit():
                self._limit(conn, budget.sends.take())
                room, message_id = as_id(frame.room), as_id(frame.id)
                message = await messages.edit(conn.user, room, message_id, frame.body)
                await conn.put(encode_text(OkMessage(ref=frame.ref, message=message)))
            case Delete():
                self._limit(conn, budget.sends.take())
                await messages.delete(conn.user, as_id(frame.room), as_id(frame.id))
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Ping():
                await conn.put(encode_text(Pong(ref=frame.ref)))
            case Refresh():
                self._limit(conn, budget.control.take())
                await self.sessions.refresh(conn, frame.token)
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case _:
                raise invalid("`hello` was already received")

    def _limit(self, conn: Connection, allowed: bool) -> None:
        """Refuse a frame its user's budget did not allow; too many refusals close 4008.

        The budget is the user's (every connection and the HTTP API spend it); the
        refusals that lead to 4008 are counted per connection.
        """
        if allowed:
            return
        limits = conn.limits
        limits.refusals += 1
        if limits.refusals > self.settings.rate_limit_close_after:
            conn.close(Close.RATE_LIMITED, "rate limit exceeded too often")
            metrics.CLOSES.labels(str(Close.RATE_LIMITED)).inc()
        raise ChatError("rate_limited", "too many requests: slow down")

    async def join(self, conn: Connection, frame: Join) -> None:
        """Subscribe a connection: ok, presence, the replay from `since`, then live frames."""
        room = as_id(frame.room)
        position = conn.positions.get(room)
        if position is None and len(conn.positions) >= self.settings.max_rooms_per_connection:
            raise invalid(
                f"a connection joins at most {self.settings.max_rooms_per_connection} rooms"
            )
        state = await self.fanout.open(room)
        registered = False
        try:
            found = await access.room_access(self.store, room, conn.user.id)
            became_member = access.check_join(found)
            if became_member:
                await self.store.add_member(room, conn.user.id)
            last = found.last_seq
            self.fanout.start(state, last)
            start, truncated = last, False
            if frame.since is not None:
                since = min(frame.since, last)
                start = max(since, last - self.settings.replay_limit)
                # Replays spend the user's replay budget: a few bytes of `join` asked
                # for megabytes. Beyond it the replay is cut short like one beyond
                # REPLAY_LIMIT: the newest that fit, `truncated`, the rest over HTTP.
                start = last - self.budgets.of(conn.user.id).replay.grant(last - start)
                truncated = start > since
            if position is None:
                position = Position(start)
                first_here = self.hub.add(conn, state, position)
            else:  # joined again: replay from the new starting point
                position.restart(start)
                first_here = False
            registered = True
            # A removal applied after `access` was read, but before the connection was
            # registered here, kicked nobody: read membership again now that a removal
            # finds it, so that a removal always wins (nothing was sent for it yet).
            if (room, conn.user.id) not in await self.store.memberships([room], [conn.user.id]):
                raise forbidden("you were removed from this room")
            await conn.put(
                encode_text(OkJoin(ref=frame.ref, room=room, seq=last, truncated=truncated))
            )
            if first_here:
                await self.presence.join(room, conn.user)
            online = await self.presence.online(room)
            await conn.put(encode_text(PresenceFrame(room=room, online=online)))
            await self.fanout.replay(conn, state)
            if became_member:
                # After the join's own frames (ok, presence, replay), which come in that order.
                await self.rooms.added(room, [conn.user.id])
        except BaseException:
            if registered:
                await self.leave(conn, room)
            raise
        finally:
            await self.fanout.close(state, joined=True)

    async def leave(self, conn: Connection, room: int) -> None:
        last_here = self.hub.remove(conn, room)
        if last_here:
            await self.presence.leave(room, conn.user)
        state = self.hub.rooms.get(room)
        if state is not None:
            await self.fanout.close(state)

    # -- what arrives from the broker -----------------------------------------

    def _on_broker(self, channel: str, payload: bytes) -> None:
        try:
            envelope = decode_envelope(payload)
        except msgspec.DecodeError:
            log.warning("a publication that does not decode", extra={"channel": channel})
            return
        if envelope.origin == self.origin:
            return  # this process already delivered it locally
        kind = envelope.kind
        if channel == self.control:
            if kind is Kind.LOGOUT:
                self.sessions.close_tokens(
                    bytes.fromhex(h) for h in envelope.target.split(",") if h
                )
            return
        # The id after the last ':' (`{ID}` on a cluster, where it is a hash tag).
        target = int(channel.rsplit(":", 1)[1].strip("{}"))
        if kind is Kind.PERSONAL:
            self.personal.local(target, bytes(envelope.frame).decode())
            return
        room = target
        if kind is Kind.MESSAGE:
            self.fanout.live(room, envelope.seq, bytes(envelope.frame).decode())
        elif kind is Kind.REMOVED:
            self.sessions.kick(room, int(envelope.target))
        else:
            self.fanout.local(room, kind, bytes(envelope.frame).decode())

    async def _reconcile_loop(self) -> None:
        rechecked = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                now = time.monotonic()
                # Deaf to removals and log-outs while the link is down; and a process
                # that died before publishing one (or a session that expired while idle,
                # which nothing publishes) is caught within ACCESS_RECHECK.
                if not self.broker.connected or now - rechecked >= self.settings.access_recheck:
                    await self.sessions.recheck()
                    rechecked = now
                self.budgets.prune(self.hub.per_user)
                await self.fanout.reconcile()
            except ChatError:
                pass  # PostgreSQL is away; the next round tries again

    async def _resync_all(self) -> None:
        """After a broker reconnect: whatever was published meanwhile is lost, so re-read
        the messages, memberships and sessions from PostgreSQL.

        A restarted Redis lost this process's presence entries too: they are put
        back now rather than at the next refresh, up to `presence_ttl / 3` later.
        """
        metrics.BROKER_RECONNECTS.inc()
        await self.presence.refresh()
        for attempt in range(50):
            try:
                await self.sessions.recheck()
                await self.fanout.reconcile()
                return
            except ChatError:
                await asyncio.sleep(min(0.1 * 2**attempt, 2))


def new_origin() -> str:
    """A process id for broker payloads: random, so a restarted process is a new one."""
    return secrets.token_hex(6)
