"""The client's side of the wire: the connection kept alive, frames in, holes filled.

`Link` is the part of `ChatClient` that runs the connection: the supervisor
loop (connect, hello, resume every room with `since`, read frames, back off and
start over unless the close code forbids it), the dispatch of what the server
sends (replies resolve requests by `ref`; messages are de-duplicated and
checked for gaps by seq), and the fills from the history API that close a
room's hole before its live messages flow again. `core.py` has the rest: the
life cycle, the requests and the event iterator.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..protocol import (
    ErrorFrame,
    Hello,
    MessageFrame,
    NotifyFrame,
    OkJoin,
    Pong,
    RemovedFrame,
    RoomAddedFrame,
    RoomUpdatedFrame,
    TypingFrame,
    User,
    Welcome,
    encode_text,
)
from .errors import FATAL_CLOSES, ClientError, ConnectionStopped, ServerError
from .frames import Ack, Event, MalformedFrame, ServerFrame, backoff_delay, decode_server_frame
from .http import HttpApi
from .ops import (
    FILL_PAGE,
    MAX_FRAME,
    TokenSource,
    _fail,
    _Op,
    _resolve,
    _Room,
    jwt_expiry,
    log,
)


class Link:
    """The connection half of `ChatClient` (a base class: the client sets the state)."""

    # The state `ChatClient.__init__` sets (see there); declared for the methods here.
    url: str
    ws_url: str
    token: str
    api: HttpApi
    refresh_token: TokenSource | None
    backoff_base: float
    backoff_cap: float
    max_buffer: int
    open_timeout: float
    reconnects: int
    _rng: random.Random
    _user: User | None
    _rooms: dict[int, _Room]
    _ops: dict[int, _Op]
    _refs: Iterator[int]
    _ws: ClientConnection | None
    _gen: int
    _events: deque[Event]
    _wakeup: asyncio.Event
    _drained: asyncio.Event
    _ready: asyncio.Event
    _tasks: set[asyncio.Task[None]]
    _stopped: ClientError | None
    _last_error: str
    # Requests' side (core.py): sending, retrying and refreshing the token.
    _transmit: Callable[[_Op], Coroutine[Any, Any, None]]
    _retry: Callable[[_Op], Coroutine[Any, Any, None]]
    _refresher: Callable[[int], Coroutine[Any, Any, None]]
    _fresh_token: Callable[[], Coroutine[Any, Any, None]]

    def _push(self, event: Event) -> None:
        self._events.append(event)
        self._wakeup.set()

    # -- the connection -------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_base, self.backoff_cap, self._rng)

    async def _run(self) -> None:
        """Connect, read until the connection ends, back off, again; until stopped."""
        failures = 0
        try:
            while True:
                try:
                    ws = await connect(
                        self.ws_url, open_timeout=self.open_timeout, max_size=MAX_FRAME
                    )
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    if 400 <= status < 500 and status not in (408, 429):
                        body = exc.response.body.decode(errors="replace")[:200]
                        advice = "the server refused the WebSocket handshake; check the URL"
                        self._stop(ConnectionStopped(status, body, advice))
                        return
                    log.info("handshake refused with HTTP %d; retrying", status)
                except InvalidURI as exc:
                    self._stop(ClientError(f"bad WebSocket URL {self.ws_url!r}: {exc}"))
                    return
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    log.info("cannot connect to %s (%s); retrying", self.ws_url, exc)
                else:
                    welcomed, code, reason = await self._session(ws)
                    if welcomed:
                        failures = 0
                    if code == 4001 and welcomed and self.refresh_token is not None:
                        # The JWT expired under a working socket: a new one, then reconnect.
                        log.info("the token expired; reconnecting with a fresh one")
                        code = 1012
                    if code in FATAL_CLOSES:
                        reason = reason or self._last_error
                        self._stop(ConnectionStopped(code, reason, FATAL_CLOSES[code]))
                        return
                    log.info("connection closed with %d %s; reconnecting", code, reason)
                delay = self._backoff(failures)
                failures += 1
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("the chat client failed")
            self._stop(ClientError(f"the chat client failed: {exc!r}"))

    async def _session(self, ws: ClientConnection) -> tuple[bool, int, str]:
        """One connection from hello to close: whether it was welcomed, and the close code."""
        welcomed = False
        try:
            try:
                await self._fresh_token()
            except Exception as exc:  # the bot's callback: its failure must not end the client
                log.warning("the refresh_token callback failed: %s", type(exc).__name__)
            await ws.send(encode_text(Hello(token=self.token)))
            async for data in ws:
                frame = self._decode(data)
                if frame is None:
                    continue
                if welcomed:
                    self._dispatch(frame)
                elif isinstance(frame, Welcome):
                    welcomed = True
                    self._welcome(ws, frame)
                elif isinstance(frame, ErrorFrame):
                    self._last_error = f"{frame.code}: {frame.message}"
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            # A leave is done once the connection is gone: nothing is subscribed any more.
            for op in [op for op in self._ops.values() if op.kind == "leave"]:
                del self._ops[op.ref]
                _resolve(op.future, None)
            await ws.close()
        rcvd = ws.protocol.close_rcvd
        return welcomed, (rcvd.code if rcvd else 1006), (rcvd.reason if rcvd else "")

    def _decode(self, data: str | bytes) -> ServerFrame | None:
        try:
            return decode_server_frame(data)
        except MalformedFrame as exc:
            log.warning("ignoring a malformed frame: %s", exc)
            return None

    def _welcome(self, ws: ClientConnection, frame: Welcome) -> None:
        self._user = frame.user
        self._gen += 1
        self._ws = ws
        self._last_error = ""
        if self._ready.is_set():
            self.reconnects += 1
            log.info("reconnected as %s", frame.user.username)
        self._ready.set()
        self._spawn(self._resume(self._gen))
        if self.refresh_token is not None and jwt_expiry(self.token) is not None:
            self._spawn(self._refresher(self._gen))

    async def _resume(self, gen: int) -> None:
        """Rejoin every room with `since`, then send again every request still waiting."""
        joining = {op.room for op in self._ops.values() if op.kind == "join"}
        for room in self._rooms:
            if room not in joining:
                ref = next(self._refs)
                self._ops[ref] = _Op(ref, "join", room, None, None)
        for op in sorted(self._ops.values(), key=lambda op: (op.kind != "join", op.ref)):
            if self._gen != gen:
                return
            await self._transmit(op)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chat client task failed", exc_info=task.exception())

    def _stop(self, error: ClientError) -> None:
        """Stop for good: fail every pending request and wake the reader with `error`."""
        log.error("%s", error)
        self._stopped = error
        for op in self._ops.values():
            _fail(op.future, error)
        self._ops.clear()
        for task in self._tasks:
            task.cancel()
        self._wakeup.set()

    # -- frames from the server -----------------------------------------------

    def _dispatch(self, frame: ServerFrame) -> None:
        match frame:
            case Ack():
                self._on_ack(frame)
            case ErrorFrame():
                self._on_error(frame)
            case MessageFrame():
                self._on_message(frame)
            case RemovedFrame():
                if self._forget(frame.room):
                    self._push(frame)
            case RoomUpdatedFrame():
                # Its `room` is the whole room (name, topic, slow mode), not an id.
                if frame.room.id in self._rooms:
                    self._push(frame)
            case NotifyFrame() | RoomAddedFrame():
                # The personal stream: for this user whatever rooms this client joined.
                if len(self._events) < 2 * self.max_buffer:
                    self._push(frame)
            case Welcome() | Pong():
                pass
            case _:
                # Live-only events: edited, deleted, typing, presence, presence_diff.
                # A reader that far behind loses typing first, the rest at twice the bound.
                size = len(self._events)
                if isinstance(frame, TypingFrame) and size >= self.max_buffer:
                    return
                if frame.room in self._rooms and size < 2 * self.max_buffer:
                    self._push(frame)

    def _on_ack(self, ack: Ack) -> None:
        op = self._ops.pop(ack.ref, None) if isinstance(ack.ref, int) else None
        if op is None:
            return
        result: Any = None
        if op.kind == "join":
            result = self._joined(op.room, ack)
        elif op.kind in ("send", "edit"):
            result = ack.message
        _resolve(op.future, result)

    def _joined(self, room: int, ack: Ack) -> OkJoin:
        last = ack.seq or 0
        state = self._rooms.get(room)
        if state is not None:
            if state.seen is None:
                state.seen = last
            state.wire = max(state.wire, last)
            if ack.truncated:
                # The replay skips messages: take them all from history instead.
                self._fall_behind(state)
        return OkJoin(ref=ack.ref, room=room, seq=last, truncated=ack.truncated)

    def _on_error(self, error: ErrorFrame) -> None:
        op = self._ops.get(error.ref) if isinstance(error.ref, int) else None
        if op is None:
            self._last_error = f"{error.code}: {error.message}"
            log.warning("error from the server: %s", self._last_error)
            return
        if error.code == "unavailable":
            # A backing service is down: the same request is safe to repeat later.
            op.sent_on = 0
            self._spawn(self._retry(op))
            return
        del self._ops[op.ref]
        if op.kind == "join" and op.future is None and self._forget(op.room):
            # A rejoin refused (the user was removed meanwhile): the room is gone.
            self._push(RemovedFrame(room=op.room))
        elif op.kind == "join":
            self._forget(op.room)
        _fail(op.future, ServerError(error.code, error.message))

    def _on_message(self, frame: MessageFrame) -> None:
        state = self._rooms.get(frame.room)
        if state is None or state.seen is None:
            return
        seq = frame.message.seq
        state.wire = max(state.wire, seq)
        if state.behind or seq <= state.seen:
            return
        if seq > state.seen + 1 or len(self._events) >= self.max_buffer:
            self._fall_behind(state)
            return
        state.seen = seq
        self._push(frame)

    def _forget(self, room: int) -> bool:
        """Drop a room, its fill and any join of it still waiting; whether it was there."""
        state = self._rooms.pop(room, None)
        if state is None:
            return False
        if state.filler is not None:
            state.filler.cancel()
        for op in [op for op in self._ops.values() if op.kind == "join" and op.room == room]:
            del self._ops[op.ref]
            _fail(op.future, ClientError(f"room {room} was left before its join completed"))
        return True

    # -- filling holes from history -------------------------------------------

    def _fall_behind(self, state: _Room) -> None:
        state.behind = True
        if state.filler is None or state.filler.done():
            state.filler = self._spawn(self._fill(state))

    async def _fill(self, state: _Room) -> None:
        """Fetch a room's messages after the last accepted one until it reaches the live stream.

        Live frames of the room are dropped meanwhile (they only raise `wire`), and
        the switch back to live happens with no await after the last check, so no
        message falls between the two.
        """
        failures = 0
        while state.behind and self._rooms.get(state.id) is state:
            while len(self._events) > self.max_buffer // 2:
                self._drained.clear()
                await self._drained.wait()
            assert state.seen is not None
            # Never fetch more than the buffer has room for.
            limit = max(1, min(FILL_PAGE, self.max_buffer - len(self._events)))
            try:
                page = await self.api.history(state.id, after=state.seen, limit=limit)
            except ServerError as exc:
                if exc.code in ("forbidden", "not_found"):
                    if self._forget(state.id):
                        self._push(RemovedFrame(room=state.id))
                    return
                log.warning("history of room %d: %s; retrying", state.id, exc)
                page = []
            except httpx.HTTPError as exc:
                log.info("history of room %d: %s; retrying", state.id, exc)
                page = []
            if self._rooms.get(state.id) is not state:
                return
            for message in page:
                if message.seq > state.seen:
                    state.seen = message.seq
                    self._push(MessageFrame(room=state.id, message=message))
            if state.seen >= state.wire:
                state.behind = False
                return
            if page:
                failures = 0
            else:
                await asyncio.sleep(self._backoff(failures))
                failures += 1
