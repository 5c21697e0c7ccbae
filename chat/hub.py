"""This process's connections, the rooms they joined, and their bounded send queues.

The hub is who is here: connections by id, rooms by id, and in each room the
connections and how many per user. It owns those counts: `subscribe` says
whether a room is new to this process (the broker must subscribe its
channel), `add` whether a user's first connection joined it (presence), and
`remove` and `release` the same on the way out, as centrifuge's hub does with
`addSub` / `removeSub`. Where each connection stands in each room is a
`delivery.Position`; the ordering decisions live in `delivery.py`.

Nothing here awaits a client during fan-out: frames go onto each connection's
bounded queue, ephemeral frames are shed first when it fills, and a connection
that still overflows is closed with 1013 so that it resumes with `since`. What
does wait for queue room (a replay, a reply) waits at most `send_timeout`
seconds: a client that stopped reading is closed with 1013 then, rather than
holding its replay, its reader and its buffers forever.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .delivery import Frame, Offer, Position, RoomLine
from .errors import Close
from .limits import Limits
from .protocol import User

_ids = itertools.count(1)


class Connection:
    """One WebSocket client: who it is, what it joined, and its outbound queue."""

    def __init__(
        self,
        user: User,
        token_hash: bytes,
        *,
        limits: Limits,
        max_frames: int,
        max_bytes: int,
        send_timeout: float = 10.0,
        remote: str = "",
    ) -> None:
        # A process-local id for logs and for excluding a sender from its own frames.
        self.id = next(_ids)
        # The authenticated user.
        self.user = user
        # sha256 of the token it logged in with, to close it when the token is revoked.
        self.token_hash = token_hash
        # Client address, for logs.
        self.remote = remote
        # This connection's rate limits.
        self.limits = limits
        # Room id -> where this connection stands in it (joined rooms only).
        self.positions: dict[int, Position] = {}
        # Outbound frames: (text, ephemeral). Bounded by max_frames and max_bytes.
        self.queue: deque[tuple[str, bool]] = deque()
        # Bytes of text in the queue (characters; close enough for a bound).
        self.queued_bytes = 0
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # Seconds `wait_for_room` waits for the writer before giving up on the client.
        self.send_timeout = send_timeout
        # Set when the queue has something, or when the connection must close.
        self.wakeup = asyncio.Event()
        # Set when the writer made room in the queue (a replay or reply waits for it).
        self.room_made = asyncio.Event()
        # The close code once the server decided to close it; the writer sends it.
        self.close_code: int | None = None
        self.close_reason = ""
        # Called once when the server decides to close it (the app's watchdog).
        self.on_close: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user.id}>"

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def push(self, text: str, ephemeral: bool = False) -> bool:
        """Queue a frame without waiting; shed or close on overflow. False if not queued."""
        if self.close_code is not None:
            return False
        size = len(text)
        if len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
            if ephemeral:
                return False
            self._shed_ephemeral()
            if len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
                self.close(Close.TRY_AGAIN, "send queue full: read faster, resume with since")
                return False
        self.queue.append((text, ephemeral))
        self.queued_bytes += size
        self.wakeup.set()
        return True

    def hold(self, position: Position, text: str, ephemeral: bool) -> None:
        """Keep a live frame of a room being replayed until the replay ends; close if too much."""
        if not position.hold(text, ephemeral, self.max_frames):
            self.close(Close.TRY_AGAIN, "too much happened during a replay: resume with since")

    def finish_replay(self, position: Position) -> None:
        """The replay of a room is done: queue what was held for it, in order, then live."""
        for text, ephemeral in position.finish():
            self.push(text, ephemeral)

    async def put(self, text: str) -> bool:
        """Queue a frame, waiting for room instead of overflowing (replays, replies)."""
        await self.wait_for_room(len(text))
        return self.push(text)

    async def wait_for_room(self, size: int) -> None:
        """Wait until a frame of `size` fits in the queue (or the connection is closing).

        A client that reads nothing for `send_timeout` is closed with 1013: without a
        deadline the waiting replay or reply (and the reader behind it) never ends.
        """
        deadline = asyncio.get_running_loop().time() + self.send_timeout
        while (
            self.close_code is None
            and self.queue
            and (len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes)
        ):
            self.room_made.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self.room_made.wait()
            except TimeoutError:
                self.close(Close.TRY_AGAIN, "send queue stuck: read faster, resume with since")

    def pop(self) -> str | None:
        if not self.queue:
            return None
        text, _ = self.queue.popleft()
        self.queued_bytes -= len(text)
        if not self.queue or self.queued_bytes <= self.max_bytes // 2:
            self.room_made.set()
        return text

    def _shed_ephemeral(self) -> None:
        kept = deque(item for item in self.queue if not item[1])
        if len(kept) != len(self.queue):
            self.queue = kept
            self.queued_bytes = sum(len(text) for text, _ in kept)

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to send what is queued, then close with `code`; later frames are dropped.

        The queue is kept so that the client gets the replies it was owed (the
        `rate_limited` errors before a 4008, say); only an overflow (1013) drops it,
        since that queue is what the client could not keep up with.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if code == Close.TRY_AGAIN:
                self.queue.clear()
                self.queued_bytes = 0
            self.wakeup.set()
            self.room_made.set()
            if self.on_close is not None:
                self.on_close()


@dataclass(eq=False)
class RoomState:
    """A room that at least one local connection joined (or is joining)."""

    id: int
    # The order of the room's message frames in this process.
    line: RoomLine
    # Local connections joined to the room, by connection id.
    conns: dict[int, Connection] = field(default_factory=dict)
    # Local connections per user: presence changes on the first join and last leave.
    users: Counter[int] = field(default_factory=Counter)
    # Set once the broker has confirmed the subscription.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    # The task filling a gap from PostgreSQL, if one runs.
    filler: asyncio.Task[None] | None = None
    # Joins in progress: the state is not released while one runs.
    joining: int = 0


class Hub:
    """Who is connected to this process, and which rooms they joined."""

    def __init__(self, pending_limit: int) -> None:
        # Every open connection, by id.
        self.connections: dict[int, Connection] = {}
        # Rooms with at least one local connection (or being joined), by id.
        self.rooms: dict[int, RoomState] = {}
        # Open connections per user id, for the per-user limit.
        self.per_user: Counter[int] = Counter()
        # Every open connection of each user, joined to rooms or not: the personal stream
        # (notify, room_added) reaches them all.
        self.of_user: dict[int, dict[int, Connection]] = {}
        # Frames a room may hold behind a gap (see delivery.RoomLine).
        self.pending_limit = pending_limit

    def attach(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.per_user[conn.user.id] += 1
        self.of_user.setdefault(conn.user.id, {})[conn.id] = conn

    def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            self.per_user[conn.user.id] -= 1
            if self.per_user[conn.user.id] <= 0:
                del self.per_user[conn.user.id]
            mine = self.of_user.get(conn.user.id)
            if mine is not None:
                mine.pop(conn.id, None)
                if not mine:
                    del self.of_user[conn.user.id]

    def sockets_of(self, user: int) -> list[Connection]:
        """Every open connection of `user` on this process."""
        mine = self.of_user.get(user)
        return [] if mine is None else list(mine.values())

    # -- rooms ------------------------------------------------------------------

    def subscribe(self, room: int) -> tuple[RoomState, bool]:
        """The room's state for a join in progress; True if this process is new to the room."""
        state = self.rooms.get(room)
        first = state is None
        if state is None:
            state = self.rooms[room] = RoomState(room, RoomLine(self.pending_limit))
        state.joining += 1
        return state, first

    def add(self, conn: Connection, state: RoomState, position: Position) -> bool:
        """Join `conn` to the room at `position`; True if it is its user's first connection here."""
        if conn.id in state.conns:
            conn.positions[state.id] = position
            return False
        state.conns[conn.id] = conn
        conn.positions[state.id] = position
        state.users[conn.user.id] += 1
        return state.users[conn.user.id] == 1

    def remove(self, conn: Connection, room: int) -> bool:
        """Out of `room` at once; True if that was its user's last connection in it here."""
        if conn.positions.pop(room, None) is None:
            return False
        state = self.rooms.get(room)
        if state is None or state.conns.pop(conn.id, None) is None:
            return False
        state.users[conn.user.id] -= 1
        if state.users[conn.user.id] > 0:
            return False
        del state.users[conn.user.id]
        return True

    def release(self, state: RoomState, *, joined: bool = False) -> bool:
        """A join ended (`joined`) or a connection left: True if the room is now gone here."""
        if joined:
            state.joining -= 1
        if state.conns or state.joining or self.rooms.get(state.id) is not state:
            return False
        del self.rooms[state.id]
        if state.filler is not None:
            state.filler.cancel()
        return True

    def members_here(self, room: int, user: int) -> list[Connection]:
        state = self.rooms.get(room)
        return [] if state is None else [c for c in state.conns.values() if c.user.id == user]

    # -- fan-out ----------------------------------------------------------------

    def deliver(self, state: RoomState, frames: Iterable[tuple[int, Frame]]) -> list[Connection]:
        """Hand message frames (in seq order) to every live connection of the room due for them.

        Returns the connections found behind (they need a replay).
        """
        behind = []
        room = state.id
        for seq, text in frames:
            for conn in state.conns.values():
                position = conn.positions.get(room)
                if position is None:
                    continue
                offer = position.offer(seq)
                if offer is Offer.SEND:
                    conn.push(text)
                elif offer is Offer.BEHIND:
                    behind.append(conn)
        return behind

    def broadcast(self, state: RoomState, text: str, *, exclude: int = 0, ephemeral: bool) -> None:
        """Hand a frame without a seq (edits, typing, presence) to the room's connections.

        A connection still being replayed the room gets it after the replay.
        """
        for conn in state.conns.values():
            if conn.id != exclude:
                self.broadcast_to(state, conn, text, ephemeral=ephemeral)

    def broadcast_to(
        self, state: RoomState, conn: Connection, text: str, *, ephemeral: bool
    ) -> None:
        """`broadcast` for one connection of the room."""
        position = conn.positions.get(state.id)
        if position is not None and position.replaying:
            conn.hold(position, text, ephemeral)
        else:
            conn.push(text, ephemeral)

    def by_token(self, token_hash: bytes) -> list[Connection]:
        return [c for c in self.connections.values() if c.token_hash == token_hash]
