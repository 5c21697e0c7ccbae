"""The application: routes, the lifespan, and the shutdown drain on signals.

The edge is Starlette: this module, `api/` (the HTTP handlers) and `ws.py`
(the WebSocket endpoint) are the only ones that know it. HTTP handlers decode
a body into a msgspec type, call the node and encode its answer; every
`ChatError` becomes the contract's error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, WebSocketRoute

from .api import ROUTES
from .api.common import error_response
from .api.ops import STATIC, ClientFiles
from .broker import create_backends
from .config import Settings
from .limits import AddressLimiter
from .node import Node, new_origin
from .store import UNAVAILABLE_ERRORS, Store
from .ws import CLOSE_GRACE, websocket_endpoint

log = logging.getLogger("chat.app")


async def _not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return error_response("invalid", f"{request.method} is not allowed here", 405)
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        return error_response("not_found", f"no route for {request.url.path}")
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return error_response("internal" if status >= 500 else "invalid", str(exc), status)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; `settings` defaults to the environment."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        origin = new_origin()
        store = await _connect_store(settings)
        backends = create_backends(
            settings.redis_url, origin, settings.redis_prefix, settings.redis_cluster
        )
        if not settings.redis_url:
            log.warning("no REDIS_URL: fanning out in-process; run one process only")
        node = Node(settings, store, backends, origin)
        await node.start()
        app.state.node = node
        log.info("ready", extra={"origin": origin, "broker": type(backends.broker).__name__})
        restore = _drain_on_signals(node, settings)
        try:
            yield
        finally:
            restore()
            await node.stop()
            await store.close()

    routes = [*ROUTES, WebSocketRoute("/ws", websocket_endpoint)]
    if STATIC.is_dir():
        routes.append(Mount("/static", ClientFiles(directory=STATIC), name="static"))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _not_found, 404: _not_found, 405: _not_found},
    )
    app.state.settings = settings
    app.state.handshakes = AddressLimiter(
        settings.handshake_rate, max(1, int(settings.handshake_rate * 2)), settings.production
    )
    # WebSockets open in this process, from the handshake on (LIMIT_CONCURRENCY).
    app.state.websockets = 0
    return app


def _drain_on_signals(node: Node, settings: Settings) -> Callable[[], None]:
    """On SIGTERM or SIGINT, drain the node's WebSockets, then hand the signal to the server.

    uvicorn answers SIGTERM by writing a 1012 close frame on each WebSocket and
    closing the TCP connection at once; a client that is still sending gets a
    reset, which can discard that frame unread, so it sees 1006 instead of 1012.
    Draining first closes each one through the closing handshake (new handshakes
    get 503 meanwhile); a second signal goes straight to the server. Returns a
    function that puts the server's own handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers belong to the main thread
    loop = asyncio.get_running_loop()
    timeout = min(settings.graceful_shutdown / 2, CLOSE_GRACE + 1)
    handlers: dict[int, Callable[[int, FrameType | None], Any]] = {}
    # The drain task, referenced so that it is not collected while it runs.
    running: set[asyncio.Task[None]] = set()

    async def drain_then(signum: int) -> None:
        try:
            await node.drain(timeout)
        finally:
            handlers[signum](signum, None)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if node.draining:
            handlers[signum](signum, frame)
            return
        node.draining = True
        loop.call_soon_threadsafe(lambda: running.add(asyncio.ensure_future(drain_then(signum))))

    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if callable(current):  # the server's handler (not SIG_DFL or SIG_IGN)
            handlers[sig] = current
            signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in handlers.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore


async def _connect_store(settings: Settings) -> Store:
    """Connect and migrate, waiting up to 30 s for PostgreSQL to come up."""
    delay = 0.1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            return await Store.connect(settings)
        except UNAVAILABLE_ERRORS as exc:
            if loop.time() > deadline:
                raise
            log.warning("waiting for postgresql", extra={"error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2)
