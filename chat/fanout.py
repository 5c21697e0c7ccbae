"""Fan-out in this process: the I/O around `delivery.py`.

PostgreSQL is the truth and the broker is a fast path. A room's channel is
subscribed while local connections hold the room; live message frames go
through the room's `RoomLine`, which says what to hand on and when a gap must
be filled from PostgreSQL. The same fill runs after a broker reconnect and
every few seconds against the rooms' newest seqs (one query), so a message
whose publisher died still arrives. A joining connection, or one found behind,
is replayed from PostgreSQL and switched to live with no await in between, so
no live frame falls between the replay and the live path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from . import metrics
from .broker import Broker
from .config import Settings
from .errors import ChatError, Close
from .hub import Connection, Hub, RoomState
from .protocol import Envelope, Kind, MessageFrame, encode_envelope, encode_text
from .store import Store

log = logging.getLogger("chat.fanout")

# Rows read per round when filling a gap or replaying to a connection.
FILL_BATCH = 500

Spawn = Callable[[Awaitable[None], str], "asyncio.Task[None]"]


class Fanout:
    """Subscriptions, ordering, gap fills and replays for the rooms this process holds."""

    def __init__(
        self, settings: Settings, store: Store, broker: Broker, hub: Hub, origin: str, spawn: Spawn
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.hub = hub
        # Starts a background task the node owns (cancelled at stop).
        self.spawn = spawn
        # This process's id in publications: it skips its own.
        self.origin = origin
        # Channel names start with the configured prefix, so services can share a Redis.
        self.prefix = settings.redis_prefix
        # On a Redis Cluster the room id is a hash tag: the room's channel and its
        # presence keys (`PREFIX:presence:{ROOM}`) share a slot, hence a shard.
        self.tagged = settings.redis_cluster

    def channel(self, room: int) -> str:
        return f"{self.prefix}:room:{{{room}}}" if self.tagged else f"{self.prefix}:room:{room}"

    # -- publishing ---------------------------------------------------------------

    async def publish(
        self, channel: str, kind: Kind, text: str = "0", *, seq: int = 0, target: str = ""
    ) -> None:
        """Hand a publication to the broker (which never waits for the other processes)."""
        envelope = Envelope(kind, self.origin, msgspec.Raw(text.encode()), seq, target)
        try:
            await self.broker.publish(channel, encode_envelope(envelope))
        except Exception as exc:
            metrics.BROKER_ERRORS.inc()
            log.warning("publish failed", extra={"channel": channel, "error": type(exc).__name__})

    async def broadcast(self, room: int, kind: Kind, text: str, *, exclude: int = 0) -> None:
        """A frame without a seq to every joined connection, here and on every process."""
        self.local(room, kind, text, exclude=exclude)
        await self.publish(self.channel(room), kind, text)

    def local(self, room: int, kind: Kind, text: str, *, exclude: int = 0) -> None:
        """A frame without a seq to this process's connections joined to the room."""
        state = self.hub.rooms.get(room)
        if state is not None:
            self.hub.broadcast(state, text, exclude=exclude, ephemeral=kind is Kind.EPHEMERAL)

    async def stored(self, room: int, seq: int, text: str) -> None:
        """A message this process stored: delivered here at once, and published."""
        self.live(room, seq, text)
        await self.publish(self.channel(room), Kind.MESSAGE, text, seq=seq)

    # -- subscriptions ----------------------------------------------------------

    async def open(self, room: int) -> RoomState:
        """The room's state for a join, its channel subscribed (first local join) or being so."""
        state, first = self.hub.subscribe(room)
        if first:
            metrics.ROOMS.set(len(self.hub.rooms))
            try:
                await self.broker.subscribe(self.channel(room))
            finally:
                state.subscribed.set()
        else:
            await state.subscribed.wait()
        return state

    async def close(self, state: RoomState, *, joined: bool = False) -> None:
        """A join ended or a connection left: unsubscribe if the room is gone here."""
        if not self.hub.release(state, joined=joined):
            return
        metrics.ROOMS.set(len(self.hub.rooms))
        try:
            await self.broker.unsubscribe(self.channel(state.id))
        except Exception:
            metrics.BROKER_ERRORS.inc()

    # -- live frames ------------------------------------------------------------

    def start(self, state: RoomState, last: int) -> None:
        """A join read `last`, the room's newest seq, after the subscription."""
        self._hand_on(state, state.line.start(last))

    def live(self, room: int, seq: int, text: str) -> None:
        """A message frame published by some process (or stored by this one)."""
        state = self.hub.rooms.get(room)
        if state is None:
            return
        arrival = state.line.live(seq, text)
        if arrival.lost:
            self._lose_track(state)
        elif arrival.fill:
            self._fill_later(state, grace=True)
        self._hand_on(state, arrival.deliver)

    def _hand_on(self, state: RoomState, frames: list[tuple[int, str]]) -> None:
        if not frames:
            return
        metrics.DELIVERIES.inc(len(state.conns) * len(frames))
        for conn in self.hub.deliver(state, frames):
            self._replay_later(conn, state)

    def _fill_later(self, state: RoomState, *, grace: bool) -> None:
        if state.filler is None or state.filler.done():
            state.filler = self.spawn(self._fill(state, grace), "fill")

    async def _fill(self, state: RoomState, grace: bool) -> None:
        """Read what the room is missing from PostgreSQL and hand it on in order."""
        if grace and self.settings.gap_grace > 0:
            # Out-of-order arrival is common (commits race publishes); give the
            # missing frame a moment to arrive before asking PostgreSQL.
            await asyncio.sleep(self.settings.gap_grace)
        room = state.id
        try:
            while self.hub.rooms.get(room) is state:
                released, after = state.line.fill_from()
                self._hand_on(state, released)
                if after is None:
                    return
                metrics.GAP_FILLS.inc()
                rows = await self.store.messages_after(room, after, FILL_BATCH)
                if not rows:
                    return
                for message in rows:
                    text = encode_text(MessageFrame(room=room, message=message))
                    self._hand_on(state, state.line.fetched(message.seq, text))
        except ChatError:
            log.warning("gap fill waits for postgresql", extra={"room": room})

    def _lose_track(self, state: RoomState) -> None:
        """Too much held behind a gap that cannot be filled: the clients resume instead."""
        log.warning("room lost track; closing its connections", extra={"room": state.id})
        for conn in list(state.conns.values()):
            conn.close(Close.RESTART, "lost track of a room: resume with since")
            metrics.CLOSES.labels(str(Close.RESTART)).inc()

    async def reconcile(self) -> None:
        """Compare the newest seq of every held room with PostgreSQL, in one query."""
        held = [s.id for s in self.hub.rooms.values() if s.line.delivered is not None]
        if not held:
            return
        newest = await self.store.last_seqs(held)
        for room, last in newest.items():
            state = self.hub.rooms.get(room)
            if state is not None and state.line.known(last):
                self._fill_later(state, grace=False)

    # -- replays ----------------------------------------------------------------

    async def replay(self, conn: Connection, state: RoomState) -> None:
        """Replay from PostgreSQL until the connection reaches the room's live position.

        The switch to live happens with no await after the last check, so no live
        frame falls between the replay and the live path.
        """
        room = state.id
        position = conn.positions.get(room)
        if position is None:
            return
        try:
            while not conn.closing and conn.positions.get(room) is position:
                if position.caught_up(state.line.delivered):
                    return
                rows = await self.store.messages_after(room, position.last, FILL_BATCH)
                if not rows:
                    position.skip_to(state.line.delivered or 0)
                    return
                for message in rows:
                    text = encode_text(MessageFrame(room=room, message=message))
                    await conn.wait_for_room(len(text))
                    # Checked after the wait, with no await before the push: another
                    # replay or the live path may have moved the connection meanwhile.
                    if conn.positions.get(room) is position and position.replayed(message.seq):
                        conn.push(text)
        finally:
            if conn.positions.get(room) is position:  # else it left meanwhile
                # What happened meanwhile follows the replay, before anything newer.
                conn.finish_replay(position)

    def _replay_later(self, conn: Connection, state: RoomState) -> None:
        metrics.CATCH_UPS.inc()

        async def run() -> None:
            try:
                await self.replay(conn, state)
            except ChatError:
                conn.close(Close.RESTART, "lost track of a room: resume with since")

        self.spawn(run(), "catch-up")
