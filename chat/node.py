"""The core: a decoded frame or HTTP call in, replies and publications out.

The node ties the store (PostgreSQL), the broker (Redis or memory) and the hub
(this process's connections). Its one rule for delivery: PostgreSQL is the
truth and the broker is a fast path. Each room this process holds remembers
the newest seq it delivered; a live frame that skips ahead waits while the
missing ones are read from PostgreSQL, a repeat is dropped, and the same fill
runs after a broker reconnect and every few seconds against the rooms' newest
seqs (one query), so a message whose publisher died still arrives. A joining
connection is replayed from PostgreSQL by the same catch-up that repairs a
connection found behind.

Broker payloads are `kind|origin|seq|arg|frame`: the frame's JSON is encoded
once by the process that made it and handed as-is to every recipient.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from . import metrics
from .accounts import Accounts
from .broker import Broker, PresenceEntry
from .budgets import Budgets
from .config import Settings
from .errors import ChatError, Close, forbidden, invalid, not_found
from .hub import Connection, Hub, RoomState
from .limits import Limits
from .protocol import (
    ClientFrame,
    Delete,
    DeletedFrame,
    Edit,
    EditedFrame,
    Join,
    Leave,
    Message,
    MessageFrame,
    Ok,
    OkJoin,
    OkMessage,
    Ping,
    Pong,
    PresenceDiffFrame,
    PresenceFrame,
    Read,
    RemovedFrame,
    Room,
    RoomSummary,
    Send,
    Typing,
    TypingFrame,
    User,
    as_id,
    encode,
    encode_text,
)
from .store import Store

log = logging.getLogger("chat.node")

# Frames held ahead of a gap before the process gives up on the room and closes
# its connections with 1012 (they resume with `since`).
PENDING_LIMIT = 10000
# Rows read per round when filling a gap or replaying to a connection.
FILL_BATCH = 500


@dataclass
class PresenceBatch:
    """A room's presence changes gathered for one presence_diff, net of each other."""

    # Users who came, and users who went, by id: a change undoes its opposite.
    joins: dict[int, User] = field(default_factory=dict)
    leaves: dict[int, User] = field(default_factory=dict)


class Node:
    """One server process's view of the chat service."""

    def __init__(self, settings: Settings, store: Store, broker: Broker, origin: str) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        # This process's id in broker payloads and presence entries.
        self.origin = origin
        self._origin_b = origin.encode()
        # Channel names start with the configured prefix, so services can share a Redis.
        self.prefix = settings.redis_prefix
        self.control = f"{settings.redis_prefix}:control"
        self.accounts = Accounts(store, settings)
        self.hub = Hub()
        # Per-connection rate limits (refusals, typing), by connection id.
        self.limits: dict[int, Limits] = {}
        # Per-user budgets shared by HTTP and WebSocket: sends, joins and reads, replays.
        self.budgets = Budgets(settings)
        # Presence changes per room waiting for their coalesced presence_diff.
        self.presence_batches: dict[int, PresenceBatch] = {}
        # Presence entries this process holds, refreshed before they expire.
        self.presence: dict[tuple[int, int], PresenceEntry] = {}
        # Background loops and fire-and-forget tasks, cancelled on stop.
        self.tasks: set[asyncio.Task[None]] = set()
        # Set by `drain` at shutdown: connections are closed and new ones refused.
        self.draining = False
        # Set once draining and the last connection has gone.
        self._drained = asyncio.Event()

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        await self.broker.connect(self._on_broker, self._resync_all)
        await self.broker.subscribe(self.control)
        self._spawn(self._reconcile_loop(), "reconcile")
        self._spawn(self._presence_loop(), "presence")

    async def stop(self) -> None:
        self._close_all()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # Take this process's users out of presence now rather than by expiry.
        for entry in list(self.presence.values()):
            try:
                await asyncio.wait_for(self.broker.presence_remove(entry), 1)
            except Exception:
                break
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

    def _channel(self, room: int) -> str:
        return f"{self.prefix}:room:{room}"

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

    def attach(self, conn: Connection) -> None:
        if self.hub.per_user[conn.user.id] >= self.settings.max_connections_per_user:
            raise ChatError("rate_limited", "too many connections for this user")
        self.hub.add(conn)
        self.limits[conn.id] = Limits(self.settings)
        metrics.CONNECTIONS.inc()
        if self.draining:
            conn.close(Close.RESTART, "server restarting")  # its hello raced the shutdown

    async def confirm(self, conn: Connection) -> None:
        """Refuse a just-attached connection whose session ended while its hello was read.

        A log-out that closed the token's sockets before `attach` missed this one;
        the session is read again now that a log-out finds it. The caller detaches
        the connection if this raises.
        """
        if not await self.store.live_sessions([conn.token_hash]):
            raise ChatError("unauthorized", "this session has ended: log in again")

    async def detach(self, conn: Connection) -> None:
        self.hub.remove(conn)
        self.limits.pop(conn.id, None)
        metrics.CONNECTIONS.dec()
        if self.draining and not self.hub.connections:
            self._drained.set()
        for room in list(conn.rooms):
            await self._leave_room(conn, room)

    # -- the WebSocket frames -------------------------------------------------

    async def handle(self, conn: Connection, frame: ClientFrame) -> None:
        """Act on one decoded frame; replies go onto the connection's queue."""
        match frame:
            case Send():
                self._limit(conn, self.budgets.of(conn.user.id).sends.take())
                started = time.perf_counter()
                message = await self.send(conn.user, as_id(frame.room), frame.body, frame.client_id)
                metrics.SEND_LATENCY.observe(time.perf_counter() - started)
                await conn.put(encode_text(OkMessage(ref=frame.ref, message=message)))
            case Join():
                self._limit(conn, self.budgets.of(conn.user.id).control.take())
                await self.join(conn, frame)
            case Leave():
                self._limit(conn, self.budgets.of(conn.user.id).control.take())
                await self._leave_room(conn, as_id(frame.room))
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Typing():
                await self.typing(conn, as_id(frame.room))
            case Read():
                self._limit(conn, self.budgets.of(conn.user.id).control.take())
                await self.read(conn.user, as_id(frame.room), frame.seq)
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Edit():
                self._limit(conn, self.budgets.of(conn.user.id).sends.take())
                message = await self.edit(conn.user, as_id(frame.room), as_id(frame.id), frame.body)
                await conn.put(encode_text(OkMessage(ref=frame.ref, message=message)))
            case Delete():
                self._limit(conn, self.budgets.of(conn.user.id).sends.take())
                await self.delete(conn.user, as_id(frame.room), as_id(frame.id))
                await conn.put(encode_text(Ok(ref=frame.ref)))
            case Ping():
                await conn.put(encode_text(Pong(ref=frame.ref)))
            case _:
                raise invalid("`hello` was already received")

    def _limit(self, conn: Connection, allowed: bool) -> None:
        """Refuse a frame its user's budget did not allow; too many refusals close 4008.

        The budget is the user's (every connection and the HTTP API spend it); the
        refusals that lead to 4008 are counted per connection.
        """
        if allowed:
            return
        limits = self.limits.get(conn.id)
        if limits is not None:
            limits.refusals += 1
            if limits.refusals > self.settings.rate_limit_close_after:
                conn.close(Close.RATE_LIMITED, "rate limit exceeded too often")
                metrics.CLOSES.labels(str(Close.RATE_LIMITED)).inc()
        raise ChatError("rate_limited", "too many requests: slow down")

    async def join(self, conn: Connection, frame: Join) -> None:
        room = as_id(frame.room)
        rejoin = room in conn.rooms
        if not rejoin and len(conn.rooms) >= self.settings.max_rooms_per_connection:
            raise invalid(
                f"a connection joins at most {self.settings.max_rooms_per_connection} rooms"
            )
        state = await self._acquire(room)
        registered = False
        try:
            access = await self.store.access(room, conn.user.id)
            if access is None:
                raise not_found("no such room")
            if not access.member:
                if access.private:
                    raise forbidden("this room is private: a member must add you")
                await self.store.add_member(room, conn.user.id)
            last = access.last_seq
            if state.delivered is None:
                state.delivered = last
                self._drain(state)
            start, truncated = last, False
            if frame.since is not None:
                since = min(frame.since, last)
                start = max(since, last - self.settings.replay_limit)
                # Replays spend the user's replay budget: a few bytes of `join` asked
                # for megabytes. Beyond it the replay is cut short like one beyond
                # REPLAY_LIMIT: the newest that fit, `truncated`, the rest over HTTP.
                start = last - self.budgets.of(conn.user.id).replay.grant(last - start)
                truncated = start > since
            first_here = False
            if not rejoin:
                state.conns[conn.id] = conn
                state.users[conn.user.id] += 1
                first_here = state.users[conn.user.id] == 1
            registered = True
            conn.rooms[room] = start
            conn.catching_up.add(room)
            # A removal applied after `access` was read, but before the connection was
            # registered here, kicked nobody: read membership again now that a removal
            # finds it, so that a removal always wins (nothing was sent for it yet).
            if (room, conn.user.id) not in await self.store.memberships([room], [conn.user.id]):
                raise forbidden("you were removed from this room")
            await conn.put(
                encode_text(OkJoin(ref=frame.ref, room=room, seq=last, truncated=truncated))
            )
            if first_here:
                await self._presence_join(room, conn.user)
            online = await self._presence_list(room)
            await conn.put(encode_text(PresenceFrame(room=room, online=online)))
            await self._catch_up(conn, state)
        except BaseException:
            if registered:
                await self._leave_room(conn, room)
            raise
        finally:
            state.joining -= 1
            if not state.conns:
                await self._release(state)

    async def _acquire(self, room: int) -> RoomState:
        """The room's state, subscribing to its channel first if this process is new to it."""
        state = self.hub.rooms.get(room)
        if state is None:
            state = RoomState(room)
            self.hub.rooms[room] = state
            metrics.ROOMS.set(len(self.hub.rooms))
            state.joining += 1
            try:
                await self.broker.subscribe(self._channel(room))
            finally:
                state.subscribed.set()
        else:
            state.joining += 1
            await state.subscribed.wait()
        return state

    async def _release(self, state: RoomState) -> None:
        if state.conns or state.joining or self.hub.rooms.get(state.id) is not state:
            return
        del self.hub.rooms[state.id]
        metrics.ROOMS.set(len(self.hub.rooms))
        if state.filler is not None:
            state.filler.cancel()
        try:
            await self.broker.unsubscribe(self._channel(state.id))
        except Exception:
            metrics.BROKER_ERRORS.inc()

    async def _leave_room(self, conn: Connection, room: int) -> None:
        if not conn.forget(room):
            return
        state = self.hub.rooms.get(room)
        if state is None or state.conns.pop(conn.id, None) is None:
            return
        state.users[conn.user.id] -= 1
        if state.users[conn.user.id] <= 0:
            del state.users[conn.user.id]
            await self._presence_leave(room, conn.user)
        if not state.conns:
            await self._release(state)

    async def _catch_up(self, conn: Connection, state: RoomState) -> None:
        """Replay from PostgreSQL until the connection reaches the room's live position.

        The switch to live happens with no await after the last check, so no live
        frame falls between the replay and the live path.
        """
        room = state.id
        epoch = conn.epochs[room]
        conn.catching_up.add(room)
        try:
            while not conn.closing and conn.epochs[room] == epoch:
                last = conn.rooms.get(room)
                if last is None or state.delivered is None or last >= state.delivered:
                    return
                rows = await self.store.messages_after(room, last, FILL_BATCH)
                if not rows:
                    conn.rooms[room] = max(conn.rooms.get(room, 0), state.delivered)
                    return
                for message in rows:
                    text = encode_text(MessageFrame(room=room, message=message))
                    await conn.room_for(len(text))
                    # Checked after the wait, with no await before the push: another
                    # replay or the live path may have moved the connection meanwhile.
                    if conn.epochs[room] != epoch or conn.rooms.get(room) != message.seq - 1:
                        continue
                    conn.push(text)
                    conn.rooms[room] = message.seq
        finally:
            if conn.epochs[room] == epoch:  # else it left (and maybe rejoined) meanwhile
                conn.catching_up.discard(room)
                # What happened meanwhile follows the replay, before anything newer.
                conn.flush_held(room)

    def _catch_up_later(self, conn: Connection, state: RoomState) -> None:
        if state.id in conn.catching_up:
            return
        conn.catching_up.add(state.id)
        metrics.CATCH_UPS.inc()

        async def run() -> None:
            try:
                await self._catch_up(conn, state)
            except ChatError:
                conn.close(Close.RESTART, "lost track of a room: resume with since")

        self._spawn(run(), "catch-up")

    # -- messages -------------------------------------------------------------

    async def post(self, user: User, room: int, body: str, client_id: str | None) -> Message:
        """`send` for the HTTP API: it spends the same per-user budget as the WebSocket."""
        if not self.budgets.of(user.id).sends.take():
            raise ChatError("rate_limited", "too many sends: slow down")
        return await self.send(user, room, body, client_id)

    async def send(self, user: User, room: int, body: str, client_id: str | None) -> Message:
        """Store a message and fan it out; returns it once it is durably stored."""
        result = await self.store.insert_message(room, user, body, client_id)
        if result is None:
            await self._check_access(room, user.id)
            raise forbidden()
        message, created = result
        if created:
            metrics.MESSAGES_STORED.inc()
            text = encode_text(MessageFrame(room=room, message=message))
            self._on_message(room, message.seq, text)
            await self._publish(self._channel(room), b"M", message.seq, b"", text)
        return message

    async def edit(self, user: User, room: int, message_id: int, body: str) -> Message:
        await self._check_access(room, user.id)
        message = await self.store.edit_message(room, message_id, user.id, body)
        await self._broadcast(room, encode_text(EditedFrame(room=room, message=message)))
        return message

    async def delete(self, user: User, room: int, message_id: int) -> None:
        await self._check_access(room, user.id)
        seq = await self.store.delete_message(room, message_id, user.id)
        await self._broadcast(room, encode_text(DeletedFrame(room=room, id=message_id, seq=seq)))

    async def read(self, user: User, room: int, seq: int) -> None:
        if await self.store.set_read(room, user.id, seq) is None:
            await self._check_access(room, user.id)
            raise forbidden()

    async def typing(self, conn: Connection, room: int) -> None:
        limits = self.limits.get(conn.id)
        now = time.monotonic()
        if limits is not None:
            if now - limits.last_typing < 1 / self.settings.typing_rate:
                return  # dropped silently, as the contract says
            limits.last_typing = now
        if room not in conn.rooms:
            raise forbidden("join the room before typing in it")
        text = encode_text(TypingFrame(room=room, user=conn.user))
        state = self.hub.rooms.get(room)
        if state is not None:
            self.hub.broadcast(state, text, exclude=conn.id, ephemeral=True)
        await self._publish(self._channel(room), b"E", 0, b"", text)

    async def _check_access(self, room: int, user: int) -> None:
        access = await self.store.access(room, user)
        if access is None:
            raise not_found("no such room")
        if not access.member:
            raise forbidden()

    async def _broadcast(self, room: int, text: str, *, exclude: int = 0) -> None:
        """A frame without a seq to every joined connection, here and elsewhere."""
        state = self.hub.rooms.get(room)
        if state is not None:
            self.hub.broadcast(state, text, exclude=exclude, ephemeral=False)
        await self._publish(self._channel(room), b"F", 0, b"", text)

    async def _publish(self, channel: str, kind: bytes, seq: int, arg: bytes, text: str) -> None:
        payload = b"|".join((kind, self._origin_b, str(seq).encode(), arg, text.encode()))
        try:
            await self.broker.publish(channel, payload)
        except Exception as exc:
            metrics.BROKER_ERRORS.inc()
            log.warning("publish failed", extra={"channel": channel, "error": type(exc).__name__})

    # -- what arrives from the broker -----------------------------------------

    def _on_broker(self, channel: str, payload: bytes) -> None:
        kind, origin, seq, arg, frame = payload.split(b"|", 4)
        if origin == self._origin_b:
            return  # this process already delivered it locally
        if channel == self.control:
            if kind == b"K":
                self._close_token(bytes.fromhex(arg.decode()))
            return
        room = int(channel.rsplit(":", 1)[1])
        if kind == b"M":
            self._on_message(room, int(seq), frame.decode())
        elif kind in (b"F", b"E", b"P"):
            state = self.hub.rooms.get(room)
            if state is not None:
                self.hub.broadcast(state, frame.decode(), ephemeral=kind != b"F")
        elif kind == b"R":
            self._kick(room, int(arg))

    def _on_message(self, room: int, seq: int, text: str) -> None:
        state = self.hub.rooms.get(room)
        if state is None:
            return
        delivered = state.delivered
        if delivered is not None and seq <= delivered:
            return
        if delivered is None or seq > delivered + 1:
            state.pending[seq] = text
            if len(state.pending) > PENDING_LIMIT:
                self._lose_track(state)
            elif delivered is not None:
                self._fill_later(state, grace=True)
            return
        self._advance(state, seq, text)

    def _advance(self, state: RoomState, seq: int, text: str) -> None:
        """Deliver `seq` (the room's next), then whatever was waiting right behind it."""
        while True:
            state.delivered = seq
            metrics.DELIVERIES.inc(len(state.conns))
            for conn in self.hub.deliver(state, seq, text):
                self._catch_up_later(conn, state)
            following = state.pending.pop(seq + 1, None)
            if following is None:
                break
            seq, text = seq + 1, following

    def _drain(self, state: RoomState) -> None:
        """Drop held frames already delivered; deliver those now next in line."""
        if state.delivered is None or not state.pending:
            return
        for seq in [s for s in state.pending if s <= state.delivered]:
            del state.pending[seq]
        following = state.pending.pop(state.delivered + 1, None)
        if following is not None:
            self._advance(state, state.delivered + 1, following)

    def _fill_later(self, state: RoomState, *, grace: bool) -> None:
        if state.filler is None or state.filler.done():
            state.filler = self._spawn(self._fill(state, grace), "fill")

    async def _fill(self, state: RoomState, grace: bool) -> None:
        """Read what the room is missing from PostgreSQL and deliver it in order."""
        if grace and self.settings.gap_grace > 0:
            # Out-of-order arrival is common (commits race publishes); give the
            # missing frame a moment to arrive before asking PostgreSQL.
            await asyncio.sleep(self.settings.gap_grace)
        room = state.id
        try:
            while self.hub.rooms.get(room) is state and state.delivered is not None:
                self._drain(state)
                want = max(state.target, max(state.pending, default=0))
                if state.delivered >= want:
                    return
                metrics.GAP_FILLS.inc()
                rows = await self.store.messages_after(room, state.delivered, FILL_BATCH)
                if not rows:
                    return
                for message in rows:
                    if state.delivered is not None and message.seq == state.delivered + 1:
                        text = encode_text(MessageFrame(room=room, message=message))
                        self._advance(state, message.seq, text)
        except ChatError:
            log.warning("gap fill waits for postgresql", extra={"room": room})

    def _lose_track(self, state: RoomState) -> None:
        """Too much held behind a gap that cannot be filled: the clients resume instead."""
        log.warning("room lost track; closing its connections", extra={"room": state.id})
        for conn in list(state.conns.values()):
            conn.close(Close.RESTART, "lost track of a room: resume with since")
            metrics.CLOSES.labels(str(Close.RESTART)).inc()
        state.pending.clear()

    async def _reconcile(self) -> None:
        """Compare the newest seq of every held room with PostgreSQL, in one query."""
        held = [s.id for s in self.hub.rooms.values() if s.delivered is not None]
        if not held:
            return
        newest = await self.store.last_seqs(held)
        for room, last in newest.items():
            state = self.hub.rooms.get(room)
            if state is not None and state.delivered is not None and last > state.delivered:
                state.target = max(state.target, last)
                self._fill_later(state, grace=False)

    async def _recheck_access(self) -> None:
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
                self._kick(room, user)
        tokens = {conn.token_hash for conn in self.hub.connections.values()}
        if tokens:
            for token_hash in tokens - await self.store.live_sessions(sorted(tokens)):
                self._close_token(token_hash)

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
                    await self._recheck_access()
                    rechecked = now
                self.budgets.prune(self.hub.per_user)
                await self._reconcile()
            except ChatError:
                pass  # PostgreSQL is away; the next round tries again

    async def _resync_all(self) -> None:
        """After a broker reconnect: whatever was published meanwhile is lost, so re-read
        the messages, memberships and sessions from PostgreSQL.

        A restarted Redis lost this process's presence entries too: they are put
        back now rather than at the next refresh, up to `presence_ttl / 3` later.
        """
        metrics.BROKER_RECONNECTS.inc()
        await self._refresh_presence()
        for attempt in range(50):
            try:
                await self._recheck_access()
                await self._reconcile()
                return
            except ChatError:
                await asyncio.sleep(min(0.1 * 2**attempt, 2))

    # -- presence -------------------------------------------------------------

    async def _presence_join(self, room: int, user: User) -> None:
        entry = PresenceEntry(room, user, encode(user).decode())
        self.presence[(room, user.id)] = entry
        await self._presence_add(entry)

    async def _presence_add(self, entry: PresenceEntry) -> bool:
        """Add or refresh an entry and announce who came or went; False if the broker failed."""
        try:
            joined, left = await self.broker.presence_add(entry, self.settings.presence_ttl)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            return False  # the refresh loop adds it once the broker is back
        if joined or left:
            await self._presence_diff(entry.room, [entry.user] if joined else [], left)
        return True

    async def _presence_leave(self, room: int, user: User) -> None:
        entry = self.presence.pop((room, user.id), None)
        if entry is None:
            return
        try:
            gone = await self.broker.presence_remove(entry)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            return
        if gone:
            await self._presence_diff(room, [], [user])

    async def _presence_diff(self, room: int, joins: list[User], leaves: list[User]) -> None:
        """Announce presence changes: the first at once, then one net diff a window.

        Without it every join and leave was a frame to every member: a user joining
        and leaving in a loop flooded the room. A change in a quiet room goes out at
        once, as before; the changes of the next PRESENCE_COALESCE seconds gather
        into one diff, where a join and a leave of the same user cancel out (what
        really changed is still announced), and so on while changes keep coming.
        """
        change = PresenceBatch({u.id: u for u in joins}, {u.id: u for u in leaves})
        if self.settings.presence_coalesce <= 0:
            await self._send_presence(room, change)
            return
        batch = self.presence_batches.get(room)
        if batch is None:
            # A quiet room: announce now, and gather what follows for a window.
            self.presence_batches[room] = PresenceBatch()
            self._spawn(self._flush_presence(room), "presence-diff")
            await self._send_presence(room, change)
            return
        for user in joins:
            if batch.leaves.pop(user.id, None) is None:
                batch.joins[user.id] = user
        for user in leaves:
            if batch.joins.pop(user.id, None) is None:
                batch.leaves[user.id] = user

    async def _flush_presence(self, room: int) -> None:
        """Every window, send what gathered; stop (the room is quiet) when nothing did."""
        while True:
            await asyncio.sleep(self.settings.presence_coalesce)  # the window, not a sync
            batch = self.presence_batches.get(room)
            if batch is None:
                return
            if not batch.joins and not batch.leaves:
                del self.presence_batches[room]
                return
            self.presence_batches[room] = PresenceBatch()
            await self._send_presence(room, batch)

    async def _send_presence(self, room: int, batch: PresenceBatch) -> None:
        if not batch.joins and not batch.leaves:
            return
        leaves = list(batch.leaves.values())
        text = encode_text(
            PresenceDiffFrame(room=room, joins=list(batch.joins.values()), leaves=leaves)
        )
        state = self.hub.rooms.get(room)
        if state is not None:
            # No connection here is told of its own user's coming or going: not the one
            # whose join caused it (the contract), nor one that joined again while its
            # leave waited in the window (it would read that it left). Such a user has
            # no other connection here in the room: the change was its first or last.
            changed = batch.joins.keys() | batch.leaves.keys()
            variants: dict[int, str | None] = {}
            for conn in list(state.conns.values()):
                uid = conn.user.id
                if uid not in changed:
                    self.hub.broadcast_to(state, conn, text, ephemeral=True)
                    continue
                if uid not in variants:
                    others = PresenceDiffFrame(
                        room=room,
                        joins=[u for u in batch.joins.values() if u.id != uid],
                        leaves=[u for u in leaves if u.id != uid],
                    )
                    variants[uid] = encode_text(others) if others.joins or others.leaves else None
                variant = variants[uid]
                if variant is not None:
                    self.hub.broadcast_to(state, conn, variant, ephemeral=True)
        await self._publish(self._channel(room), b"P", 0, b"", text)

    async def _presence_list(self, room: int) -> list[User]:
        try:
            return await self.broker.presence_list(room)
        except Exception:
            metrics.BROKER_ERRORS.inc()
            state = self.hub.rooms.get(room)
            users = {c.user.id: c.user for c in state.conns.values()} if state else {}
            return [users[uid] for uid in sorted(users)]

    async def _presence_loop(self) -> None:
        """Refresh this process's entries well before they expire; sweep out the dead."""
        while True:
            await asyncio.sleep(self.settings.presence_ttl / 3)
            await self._refresh_presence()

    async def _refresh_presence(self) -> None:
        """Add or refresh every entry this process holds; report who came or went."""
        for key, entry in list(self.presence.items()):
            if self.presence.get(key) is not entry:
                continue  # left meanwhile
            if not await self._presence_add(entry):
                return

    # -- control across processes ---------------------------------------------

    def _kick(self, room: int, user: int) -> None:
        """Stop `user`'s connections here from receiving `room` (they were removed)."""
        state = self.hub.rooms.get(room)
        if state is None:
            return
        text = encode_text(RemovedFrame(room=room))
        for conn in [c for c in state.conns.values() if c.user.id == user]:
            conn.push(text)
            conn.forget(room)
            state.conns.pop(conn.id, None)
            state.users[user] -= 1
            if state.users[user] <= 0:
                del state.users[user]
                self._spawn(self._presence_leave(room, conn.user), "presence-leave")
        if not state.conns:
            self._spawn(self._release(state), "release")

    def _close_token(self, token_hash: bytes) -> None:
        for conn in self.hub.by_token(token_hash):
            conn.close(Close.UNAUTHORIZED, "logged out")
            metrics.CLOSES.labels(str(Close.UNAUTHORIZED)).inc()

    # -- the HTTP half --------------------------------------------------------

    async def log_out(self, token_hash: bytes) -> None:
        await self.accounts.log_out(token_hash)
        self._close_token(token_hash)
        await self._publish(self.control, b"K", 0, token_hash.hex().encode(), "")

    async def create_room(self, user: User, name: str, private: bool) -> Room:
        return await self.store.create_room(name, private, user.id)

    async def rooms(self, user: User) -> list[RoomSummary]:
        return await self.store.rooms_of_user(user.id)

    async def join_room(self, user: User, room: int) -> Room:
        access = await self.store.access(room, user.id)
        if access is None:
            raise not_found("no such room")
        if not access.member:
            if access.private:
                raise forbidden("this room is private: a member must add you")
            await self.store.add_member(room, user.id)
        return await self._room(room)

    async def add_member(self, user: User, room: int, username: str) -> Room:
        await self._check_access(room, user.id)
        target = await self.store.user_by_username(username)
        if target is None:
            raise not_found(f"no user named {username!r}")
        await self.store.add_member(room, target.id)
        return await self._room(room)

    async def remove_member(self, user: User, room: int, username: str) -> None:
        access = await self.store.access(room, user.id)
        if access is None:
            raise not_found("no such room")
        if not access.member:
            raise forbidden()
        target = await self.store.user_by_username(username)
        if target is None:
            raise not_found(f"no user named {username!r}")
        if target.id != user.id and access.created_by != user.id:
            raise forbidden("only the room's creator removes someone else")
        if not await self.store.remove_member(room, target.id):
            raise not_found(f"{target.username} is not a member of this room")
        self._kick(room, target.id)
        await self._publish(self._channel(room), b"R", 0, str(target.id).encode(), "")

    async def dm(self, user: User, username: str) -> Room:
        other = await self.store.user_by_username(username)
        if other is None:
            raise not_found(f"no user named {username!r}")
        if other.id == user.id:
            raise invalid("a direct message needs someone else")
        return await self._room(await self.store.dm_room(user, other))

    async def history(
        self, user: User, room: int, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        await self._check_access(room, user.id)
        if after is not None:
            messages = await self.store.messages_after(room, after, limit)
            if before is not None:
                messages = [m for m in messages if m.seq < before]
            return messages
        return await self.store.messages_before(
            room, before if before is not None else 2**62, limit
        )

    async def online(self, user: User, room: int) -> list[User]:
        await self._check_access(room, user.id)
        return await self._presence_list(room)

    async def _room(self, room: int) -> Room:
        found = await self.store.room(room)
        if found is None:
            raise not_found("no such room")
        return found


def new_origin() -> str:
    """A process id for broker payloads: random, so a restarted process is a new one."""
    return secrets.token_hex(6)
