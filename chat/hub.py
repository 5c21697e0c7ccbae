"""This process's connections, the rooms they joined, and their bounded send queues.

The hub owns the rule that makes delivery ordered and gapless for each
connection: a room hands out message frames strictly in `seq` order, and a
connection takes frame `seq` only when it has had `seq - 1`. A connection that
is behind (it joined with `since`, or it is replaying) is skipped by the live
path and caught up from PostgreSQL by the node, then switched to live in one
step with no await in between.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Close
from .protocol import User

_ids = itertools.count(1)


class Connection:
    """One WebSocket client: who it is, what it joined, and its outbound queue."""

    def __init__(
        self,
        user: User,
        token_hash: bytes,
        *,
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
        # Room id -> the newest seq this connection has been given (or skipped past).
        self.rooms: dict[int, int] = {}
        # Rooms being replayed from PostgreSQL: the live path skips them meanwhile.
        self.catching_up: set[int] = set()
        # Room id -> times this connection left it: a replay started before a leave
        # (and a rejoin) sees the number change and stops without touching the rejoin.
        self.epochs: Counter[int] = Counter()
        # Frames without a seq (edits, typing, presence) of rooms being replayed, held
        # until the replay is done: after a join the order is ok, presence, replay, live.
        self.held: dict[int, list[tuple[str, bool]]] = {}
        # Outbound frames: (text, ephemeral). Bounded by max_frames and max_bytes.
        self.queue: deque[tuple[str, bool]] = deque()
        # Bytes of text in the queue (characters; close enough for a bound).
        self.queued_bytes = 0
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # Seconds `room_for` waits for the writer to make room before giving up on the client.
        self.send_timeout = send_timeout
        # Set when the queue has something, or when the connection must close.
        self.wakeup = asyncio.Event()
        # Set when a replay waits for room in the queue and the writer made some.
        self.drained = asyncio.Event()
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

    def hold(self, room: int, text: str, ephemeral: bool) -> None:
        """Keep a live frame of a room being replayed until `flush_held`; shed, or close if full."""
        held = self.held.setdefault(room, [])
        if len(held) >= self.max_frames:
            if ephemeral:
                return
            held[:] = [item for item in held if not item[1]]
            if len(held) >= self.max_frames:
                self.close(Close.TRY_AGAIN, "too much happened during a replay: resume with since")
                return
        held.append((text, ephemeral))

    def flush_held(self, room: int) -> None:
        """The replay of `room` is done: queue what was held for it, in order."""
        for text, ephemeral in self.held.pop(room, ()):
            self.push(text, ephemeral)

    def forget(self, room: int) -> bool:
        """Out of `room` at once: no frame of it reaches this connection any more."""
        if self.rooms.pop(room, None) is None:
            return False
        self.catching_up.discard(room)
        self.held.pop(room, None)
        self.epochs[room] += 1
        return True

    async def put(self, text: str) -> bool:
        """Queue a frame, waiting for room instead of overflowing (replays, replies)."""
        await self.room_for(len(text))
        return self.push(text)

    async def room_for(self, size: int) -> None:
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
            self.drained.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self.drained.wait()
            except TimeoutError:
                self.close(Close.TRY_AGAIN, "send queue stuck: read faster, resume with since")

    def pop(self) -> str | None:
        if not self.queue:
            return None
        text, _ = self.queue.popleft()
        self.queued_bytes -= len(text)
        if not self.queue:
            self.drained.set()
        elif self.queued_bytes <= self.max_bytes // 2:
            self.drained.set()
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
            self.drained.set()
            if self.on_close is not None:
                self.on_close()


@dataclass(eq=False)
class RoomState:
    """A room that at least one local connection joined."""

    id: int
    # Local connections joined to the room, by connection id.
    conns: dict[int, Connection] = field(default_factory=dict)
    # Local connections per user: presence changes on the first join and last leave.
    users: Counter[int] = field(default_factory=Counter)
    # The newest seq handed to the room's connections; None until the first join
    # has read it from PostgreSQL after subscribing.
    delivered: int | None = None
    # Frames that arrived ahead of `delivered + 1`, by seq, waiting for the gap to fill.
    pending: dict[int, str] = field(default_factory=dict)
    # Set once the broker has confirmed the subscription.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    # The task filling a gap from PostgreSQL, if one runs.
    filler: asyncio.Task[None] | None = None
    # The newest seq PostgreSQL is known to have (a fill goes at least this far).
    target: int = 0
    # Joins in progress: the state is not released while one runs.
    joining: int = 0


class Hub:
    """Who is connected to this process, and which rooms they joined."""

    def __init__(self) -> None:
        # Every open connection, by id.
        self.connections: dict[int, Connection] = {}
        # Rooms with at least one local connection (or being joined), by id.
        self.rooms: dict[int, RoomState] = {}
        # Open connections per user id, for the per-user limit.
        self.per_user: Counter[int] = Counter()

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.per_user[conn.user.id] += 1

    def remove(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            self.per_user[conn.user.id] -= 1
            if self.per_user[conn.user.id] <= 0:
                del self.per_user[conn.user.id]

    def deliver(self, state: RoomState, seq: int, text: str) -> list[Connection]:
        """Hand message `seq` to every live connection of the room that is due for it.

        Returns the connections found behind (they need a catch-up).
        """
        behind = []
        room = state.id
        for conn in state.conns.values():
            last = conn.rooms.get(room)
            if last is None or room in conn.catching_up:
                continue
            if seq == last + 1:
                conn.rooms[room] = seq
                conn.push(text)
            elif seq > last + 1:
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
        if state.id in conn.catching_up:
            conn.hold(state.id, text, ephemeral)
        else:
            conn.push(text, ephemeral)

    def by_token(self, token_hash: bytes) -> list[Connection]:
        return [c for c in self.connections.values() if c.token_hash == token_hash]
