"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 with scripted answers.

It also serves documents (a JWKS for the JWT tests) that the test may change at any time.

Each path is one bot's webhook. Answers are scripted per path (a status, a body,
a delay, or a hold until the test lets the request go); once a path's script is
used up it answers 200 `{}`. Every request is recorded, and tests wait on the
receiver's own condition for the requests they expect, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from .support import HANG, free_port


@dataclass
class Answer:
    """One scripted answer."""

    status: int = 200
    body: bytes = b"{}"
    # Seconds before answering: a slow webhook (the server's timeout is shorter).
    delay: float = 0.0
    # Held until this event is set: a request in flight for as long as the test wants.
    hold: asyncio.Event | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Only for requests this accepts (e.g. one room's events); None: any request.
    match: Callable[[Received], bool] | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def lane(self) -> str:
        """The path and the event's room: one bot's lane (the path itself if no event)."""
        try:
            return f"{self.path}#{self.json['room']['id']}"
        except (ValueError, KeyError, TypeError):
            return self.path

    @property
    def delivery(self) -> int:
        return int(self.headers["x-chat-delivery"])

    @property
    def seq(self) -> int:
        return int(self.json["message"]["seq"])

    def signed_with(self, secret: str) -> bool:
        """Whether the signature is the contract's HMAC of `TIMESTAMP.BODY`."""
        timestamp = self.headers["x-chat-timestamp"]
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256)
        return hmac.compare_digest(self.headers["x-chat-signature"], "sha256=" + mac.hexdigest())


class Receiver:
    """The HTTP server and what it received."""

    def __init__(self) -> None:
        self.port = free_port()
        # Scripted answers per path, used in order.
        self.script: dict[str, list[Answer]] = defaultdict(list)
        # Documents served as they are at each request (a JWKS the test rotates).
        self.documents: dict[str, bytes] = {}
        # Every request, in arrival order.
        self.received: list[Received] = []
        # Notified on each request.
        self.arrived = asyncio.Condition()
        # Requests being answered now and the most there ever were at once, per path and
        # per lane (path and the event's room).
        self.open: dict[str, int] = defaultdict(int)
        self.most_open: dict[str, int] = defaultdict(int)
        self._server: uvicorn.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, *answers: Answer) -> None:
        self.script[path].extend(answers)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait(self, path: str, count: int, timeout: float = HANG) -> list[Received]:
        """The first `count` requests to `path`, waiting for them to arrive."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.at(path)) >= count)
            return self.at(path)[:count]

    async def wait_for(self, path: str, check: Any, timeout: float = HANG) -> list[Received]:
        """The requests to `path` once `check(requests)` holds."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: check(self.at(path)))
            return self.at(path)

    def _answer(self, request: Received) -> Answer:
        """The first scripted answer of the path that takes this request (used up)."""
        script = self.script[request.path]
        for index, answer in enumerate(script):
            if answer.match is None or answer.match(request):
                return script.pop(index)
        return Answer()

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Received(path, headers, body)
        async with self.arrived:
            self.received.append(request)
            self.arrived.notify_all()
        document = self.documents.get(path)
        answer = Answer(body=document) if document is not None else self._answer(request)
        keys = (path, request.lane)
        for key in keys:
            self.open[key] += 1
            self.most_open[key] = max(self.most_open[key], self.open[key])
        try:
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.hold is not None:
                await answer.hold.wait()
        finally:
            for key in keys:
                self.open[key] -= 1
        head = [(b"content-type", b"application/json")]
        head += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": head})
        await send({"type": "http.response.body", "body": answer.body})


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A running receiver, stopped afterwards even if the test fails."""
    receiver = Receiver()
    config = uvicorn.Config(
        receiver.app,
        host="127.0.0.1",
        port=receiver.port,
        log_level="warning",
        lifespan="off",
        interface="asgi3",
        # Requests held open by a test are cut after this at shutdown.
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(HANG):
            while not server.started:
                if task.done():
                    await task
                await asyncio.sleep(0.01)
        yield receiver
    finally:
        # A graceful exit closes the servers' keep-alive connections (a forced one leaves
        # their sockets to the garbage collector, a ResourceWarning in a later test).
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
