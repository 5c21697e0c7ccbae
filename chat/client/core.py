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
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections import deque
from typing import Any, Self

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..protocol import (
    Delete,
    Edit,
    Join,
    Leave,
    Message,
    OkJoin,
    React,
    Read,
    Refresh,
    Send,
    Unreact,
    User,
    encode_text,
)
from ..protocol import Typing as TypingRequest
from .errors import ClientClosed, ClientError
from .frames import Event
from .http import HttpApi, http_base, log_in, ws_url
from .link import Link
from .ops import (
    Kind,
    Request,
    TokenSource,
    _check,
    _fail,
    _Op,
    _Room,
    jwt_expiry,
)

log = logging.getLogger("chat.client")


class ChatClient(Link):
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
