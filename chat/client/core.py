"""The WebSocket client: one connection kept alive, rooms resumed, requests retried.

`ChatClient` runs one supervisor task. It connects, says hello, rejoins every
room with `since` = the last seq it accepted there, sends again every request
still waiting for its reply, and reads frames until the connection ends; then
it waits a full-jitter backoff and starts over, unless the close code (4001,
4008) says not to. Replies resolve requests by `ref`; events go into a buffer
that the user drains with `async for`. Messages are de-duplicated and checked
for gaps by seq, per room. A room whose stream has a hole (a truncated replay,
or messages shed because the user read too slowly) is filled from the history
API before its live messages flow again, so the user sees every message of a
joined room once and in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, Self

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..protocol import (
    Delete,
    Edit,
    ErrorFrame,
    FrameError,
    Hello,
    Join,
    Leave,
    Message,
    MessageFrame,
    NotifyFrame,
    OkJoin,
    Pong,
    React,
    Read,
    Refresh,
    RemovedFrame,
    RoomAddedFrame,
    RoomUpdatedFrame,
    Send,
    TypingFrame,
    Unreact,
    User,
    Welcome,
    check_body,
    encode_text,
)
from ..protocol import Typing as TypingRequest
from .errors import FATAL_CLOSES, ClientClosed, ClientError, ConnectionStopped, ServerError
from .frames import Ack, Event, MalformedFrame, ServerFrame, backoff_delay, decode_server_frame
from .http import HttpApi, http_base, log_in, ws_url

log = logging.getLogger("chat.client")

Kind = Literal["join", "leave", "send", "edit", "delete", "read", "react", "unreact", "refresh"]
Request = Send | Edit | Delete | Read | Leave | React | Unreact | Refresh
# Supplies a fresh JWT of the same user (from the bot's identity provider).
TokenSource = Callable[[], Awaitable[str]]

# Messages fetched per history request when a room's hole is filled.
FILL_PAGE = 200
# Largest frame accepted from the server; the server is trusted, so only a sanity bound.
MAX_FRAME = 64 * 1024 * 1024


class _Op:
    """A request waiting for its reply; sent again on each new connection until it gets one."""

    __slots__ = ("attempts", "frame", "future", "kind", "ref", "room", "sent_on")

    def __init__(
        self,
        ref: int,
        kind: Kind,
        room: int,
        frame: Request | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        # Unique for the client's life, so a reply is never taken for another request's.
        self.ref = ref
        self.kind = kind
        self.room = room
        # The frame to send; None for a join, whose `since` is taken when it is sent.
        self.frame = frame
        # Resolved with the reply's result; None for the client's own rejoins.
        self.future = future
        # The connection (its generation) it was last sent on; 0: not sent on this one.
        self.sent_on = 0
        # `unavailable` replies so far, for its backoff.
        self.attempts = 0


class _Room:
    """What the client knows of a joined room's message stream."""

    __slots__ = ("behind", "filler", "id", "seen", "wire")

    def __init__(self, room: int, since: int | None) -> None:
        self.id = room
        # The last seq accepted into the buffer; None until the first join's `ok`.
        self.seen = since
        # The highest seq seen on the wire, so a fill knows when it has caught up.
        self.wire = since or 0
        # A hole was found: live messages are dropped until the fill from history catches up.
        self.behind = False
        # The task filling the hole, while there is one.
        self.filler: asyncio.Task[None] | None = None


def _resolve(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def jwt_expiry(token: str) -> float | None:
    """The `exp` of a JWT (UNIX seconds), read without checking it; None for other tokens.

    The client only schedules its refresh by it: the server is the one that checks.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _check(body: str) -> str:
    # A body the server must refuse is refused here, before it is retried forever.
    try:
        return check_body(body)
    except FrameError as exc:
        raise ValueError(str(exc)) from None


class ChatClient:
    """A chat connection for bots: `async with ChatClient(url, token) as client: ...`.

    `url` is the server's `http(s)://host:port` (or its `ws(s)://host:port/ws`).
    Reconnects on its own with full-jitter exponential backoff between
    `backoff_base` and `backoff_cap` seconds. Holds at most about `max_buffer`
    unread messages; beyond that it sheds them and fetches them again from
    history once the reader catches up.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_buffer: int = 10_000,
        open_timeout: float = 10.0,
        rng: random.Random | None = None,
        refresh_token: TokenSource | None = None,
        refresh_margin: float = 60.0,
    ) -> None:
        if not 0 < backoff_base <= backoff_cap:
            raise ValueError("need 0 < backoff_base <= backoff_cap")
        if max_buffer < 2:
            raise ValueError("max_buffer must be at least 2")
        # The server's HTTP base URL and its WebSocket endpoint.
        self.url = http_base(url)
        self.ws_url = ws_url(url)
        # The bearer token the client says hello with.
        self.token = token
        # The HTTP API as the same user (history fills use it too).
        self.api = HttpApi(self.url, token)
        # With a JWT: called for a new one `refresh_margin` seconds before the current one
        # expires; the socket then sends `refresh`, and reconnects say hello with it.
        self.refresh_token = refresh_token
        self.refresh_margin = refresh_margin
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_buffer = max_buffer
        # Seconds for the TCP connect and the WebSocket handshake.
        self.open_timeout = open_timeout
        # Connections that got a welcome after the first one.
        self.reconnects = 0
        self._rng = rng or random.Random()
        # The user the server welcomed us as.
        self._user: User | None = None
        # Joined rooms (and rooms being joined), by id.
        self._rooms: dict[int, _Room] = {}
        # Requests waiting for a reply, by ref, in the order they were made.
        self._ops: dict[int, _Op] = {}
        self._refs = itertools.count(1)
        # The welcomed connection, or None between connections.
        self._ws: ClientConnection | None = None
        # Bumped at each welcome; tells connections apart for `_Op.sent_on`.
        self._gen = 0
        # Events not yet handed to the user.
        self._events: deque[Event] = deque()
        # Set when an event arrives or the client stops: wakes `__anext__`.
        self._wakeup = asyncio.Event()
        # Set when the buffer is down to half: wakes history fills.
        self._drained = asyncio.Event()
        # Set at the first welcome.
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # Background tasks: resumes, retries, fills.
        self._tasks: set[asyncio.Task[None]] = set()
        # Why the client stopped on its own (4001, 4008, a refused handshake).
        self._stopped: ClientError | None = None
        # `close()` was called.
        self._closed = False
        # The last `error` frame without a ref, to explain the close that follows it.
        self._last_error = ""

    # -- life cycle -----------------------------------------------------------

    @classmethod
    async def login(cls, url: str, username: str, password: str, **options: Any) -> ChatClient:
        """Log in over HTTP, then connect; `options` are the constructor's."""
        session = await log_in(url, username, password)
        client = cls(url, session.token, **options)
        await client.start()
        return client

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect; returns once the server has welcomed the client (retrying until then).

        Raises `ConnectionStopped` if the server refuses the token (4001).
        """
        self._check_open()
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._run(), name="chat-client")
        if self._ready.is_set():
            return
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait((ready, self._supervisor), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.close()
            raise
        finally:
            ready.cancel()
        if not self._ready.is_set():
            error = self._stopped or ClientClosed()
            await self.close()
            raise error

    async def close(self) -> None:
        """Close the connection and stop; pending requests fail with `ClientClosed`."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *([self._supervisor] if self._supervisor else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for op in self._ops.values():
            _fail(op.future, ClientClosed())
        self._ops.clear()
        self._wakeup.set()
        await self.api.aclose()

    @property
    def user(self) -> User:
        """The user the server welcomed this client as."""
        if self._user is None:
            raise ClientError("not connected yet: use `async with` or `await client.start()`")
        return self._user

    @property
    def rooms(self) -> list[int]:
        """The rooms joined (or being joined)."""
        return list(self._rooms)

    @property
    def connected(self) -> bool:
        """Whether a welcomed connection is open right now."""
        return self._ws is not None

    @property
    def buffered(self) -> int:
        """Events received and not yet read."""
        return len(self._events)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed()
        if self._stopped is not None:
            raise self._stopped

    # -- requests -------------------------------------------------------------

    async def join(self, room: int, since: int | None = None) -> OkJoin:
        """Join a room: its messages above `since` (or from now on, without it) become events.

        Returns the server's `ok` (`seq` is the room's newest seq). Joining a room
        already joined returns at once. The client rejoins by itself after a reconnect.
        """
        self._check_open()
        state = self._rooms.get(room)
        if state is not None:
            pending = next(
                (op for op in self._ops.values() if op.kind == "join" and op.room == room), None
            )
            if pending is None:
                return OkJoin(ref=None, room=room, seq=state.seen or 0)
            if pending.future is None:
                pending.future = asyncio.get_running_loop().create_future()
            result: OkJoin = await asyncio.shield(pending.future)
            return result
        state = self._rooms[room] = _Room(room, since)
        try:
            ok: OkJoin = await self._request("join", room, None)
        except BaseException:
            if self._rooms.get(room) is state and state.seen is None:
                self._forget(room)
            raise
        return ok

    async def leave(self, room: int) -> None:
        """Stop receiving a room (membership stays)."""
        self._check_open()
        if not self._forget(room) or self._ws is None:
            return
        await self._request("leave", room, Leave(room=room))

    async def send(
        self,
        room: int,
        body: str,
        *,
        client_id: str | None = None,
        thread: int | None = None,
    ) -> Message:
        """Send a message (a reply in `thread`, a root's or a reply's id, if given);
        returns it as stored, once the server has it durably.

        Retried across reconnects (and `unavailable` replies) with the same
        `client_id`, generated when not given, so a retry never stores a second copy.
        """
        self._check_open()
        client_id = client_id or f"c-{uuid.uuid4().hex}"
        frame = Send(room=room, body=_check(body), client_id=client_id, thread=thread)
        message: Message = await self._request("send", room, frame)
        return message

    async def edit(self, room: int, message_id: int, body: str) -> Message:
        """Change the body of one of your messages; returns the edited message."""
        self._check_open()
        message: Message = await self._request(
            "edit", room, Edit(room=room, id=message_id, body=_check(body))
        )
        return message

    async def delete(self, room: int, message_id: int) -> None:
        """Delete a message (yours, or any in a room you created)."""
        self._check_open()
        await self._request("delete", room, Delete(room=room, id=message_id))

    async def read(self, room: int, seq: int, *, thread: int | None = None) -> None:
        """Store your read position in a room (or, with `thread`, in that thread)."""
        self._check_open()
        await self._request("read", room, Read(room=room, seq=seq, thread=thread))

    async def react(self, room: int, message_id: int, emoji: str) -> None:
        """Add your `emoji` to a message; joined clients get a `ReactionsFrame`."""
        self._check_open()
        await self._request("react", room, React(room=room, id=message_id, emoji=emoji))

    async def unreact(self, room: int, message_id: int, emoji: str) -> None:
        """Take back your `emoji` from a message (nothing happens if you had none)."""
        self._check_open()
        await self._request("unreact", room, Unreact(room=room, id=message_id, emoji=emoji))

    async def typing(self, room: int) -> None:
        """Tell the room you are typing; dropped if not connected right now."""
        self._check_open()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_text(TypingRequest(room=room)))

    async def refresh(self, token: str | None = None) -> None:
        """Use a new JWT of the same user (`token`, or one from `refresh_token`) from now on.

        The open socket is told with a `refresh` frame, so that the server does not
        close it when the old token expires; HTTP calls and reconnects use it too.
        """
        self._check_open()
        if token is None:
            if self.refresh_token is None:
                raise ClientError("pass a token, or give the client a `refresh_token` callback")
            token = await self.refresh_token()
        self.token = token
        self.api.token = token
        if self._ws is not None:
            await self._request("refresh", 0, Refresh(token=token))

    async def _refresher(self, gen: int) -> None:
        """Refresh the JWT of connection `gen` ahead of its expiry, for as long as it lasts."""
        failures = 0
        while self._gen == gen and self.refresh_token is not None:
            expires = jwt_expiry(self.token)
            if expires is None:
                return
            left = expires - time.time()
            # Refresh `refresh_margin` early, or halfway for a token shorter-lived than that.
            await asyncio.sleep(max(0.0, min(left - self.refresh_margin, left / 2)))
            if self._gen != gen:
                return
            try:
                await self.refresh()
                failures = 0
            except (ClientError, OSError, TimeoutError) as exc:
                log.warning("could not refresh the token: %s", type(exc).__name__)
                await asyncio.sleep(self._backoff(failures))
                failures += 1

    async def _fresh_token(self) -> None:
        """Before a hello: a token that expires within the margin is replaced first."""
        expires = jwt_expiry(self.token)
        if self.refresh_token is None or expires is None:
            return
        if expires - time.time() <= self.refresh_margin:
            self.token = await self.refresh_token()
            self.api.token = self.token

    async def _request(self, kind: Kind, room: int, frame: Request | None) -> Any:
        ref = next(self._refs)
        if frame is not None:
            frame.ref = ref
        op = _Op(ref, kind, room, frame, asyncio.get_running_loop().create_future())
        self._ops[ref] = op
        try:
            await self._transmit(op)
            assert op.future is not None
            return await op.future
        finally:
            self._ops.pop(ref, None)

    async def _transmit(self, op: _Op) -> None:
        """Send a request on the current connection, unless it was sent there already."""
        ws, gen = self._ws, self._gen
        if ws is None or op.sent_on == gen:
            return
        frame: Request | Join | None = op.frame
        if op.kind == "join":
            state = self._rooms.get(op.room)
            if state is None:
                return
            frame = Join(room=op.room, ref=op.ref, since=state.seen)
        op.sent_on = gen
        # A send that fails here is sent again on the next connection.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode_text(frame))

    async def _retry(self, op: _Op) -> None:
        op.attempts += 1
        await asyncio.sleep(self._backoff(op.attempts - 1))
        if self._ops.get(op.ref) is op:
            await self._transmit(op)

    # -- events ---------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event; raises `ConnectionStopped` once the server stopped the client."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._events:
                event = self._events.popleft()
                if len(self._events) <= self.max_buffer // 2:
                    self._drained.set()
                return event
            if self._stopped is not None:
                raise self._stopped
            if self._supervisor is None:
                raise ClientError("not started: use `async with` or `await client.start()`")
            self._wakeup.clear()
            await self._wakeup.wait()

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
