"""The WebSocket edge: the handshake checks, `hello`, and each socket's reader and writer.

A WebSocket gets two tasks: the reader decodes frames and awaits the node one
frame at a time, the writer drains the connection's bounded queue into the
socket; when either ends, the other is cancelled and the connection leaves
its rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from . import logs, metrics
from .api.common import error_response, node_of, settings_of
from .config import Settings
from .errors import ChatError, Close
from .hub import Connection
from .limits import AddressLimiter, Limits
from .node import Node
from .protocol import (
    ErrorFrame,
    FrameError,
    Hello,
    Welcome,
    decode_frame,
    encode_text,
    peek_ref,
)

log = logging.getLogger("chat.ws")

# Seconds a writer stuck on a client that stopped reading gets to send a close frame.
CLOSE_GRACE = 2.0


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...]) -> bool:
    """No Origin (a bot) is fine; a browser's must be ours or listed."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    host = websocket.headers.get("host", "").lower()
    if host and origin in (f"http://{host}", f"https://{host}"):
        return True
    return origin in allowed


async def websocket_endpoint(websocket: WebSocket) -> None:
    settings = settings_of(websocket)
    node = node_of(websocket)
    if node.draining:
        await _deny(websocket, "unavailable", "the server is restarting: connect again")
        return
    if not origin_allowed(websocket, settings.allowed_origins):
        log.info("websocket refused: origin not allowed")
        await _deny(websocket, "forbidden", "this origin may not open a WebSocket here")
        return
    client = websocket.client
    limiter: AddressLimiter = websocket.app.state.handshakes
    if client is not None and not limiter.allow(client.host):
        await _deny(websocket, "rate_limited", "too many WebSocket handshakes from this address")
        return
    # uvicorn's LIMIT_CONCURRENCY refuses requests but lets upgrades through: count here.
    state = websocket.app.state
    if state.websockets >= settings.limit_concurrency:
        await _deny(websocket, "unavailable", "this server is full; retry later or elsewhere")
        return
    state.websockets += 1
    try:
        await _serve_websocket(websocket, node, settings)
    finally:
        state.websockets -= 1


async def _serve_websocket(websocket: WebSocket, node: Node, settings: Settings) -> None:
    """Accept, wait for hello, then run the reader and the writer until either ends."""
    await websocket.accept()
    conn = await _hello(websocket, node, settings)
    if conn is None:
        return
    token = logs.context.set(f"conn-{conn.id}")
    reader = asyncio.create_task(_read(websocket, node, conn), name=f"read-{conn.id}")
    writer = asyncio.create_task(_write(websocket, conn), name=f"write-{conn.id}")
    loop = asyncio.get_running_loop()

    def unstick() -> None:
        # A writer blocked on a client that stopped reading never gets to send the
        # close frame: give it a moment, then cancel it and close from here.
        loop.call_later(CLOSE_GRACE, lambda: writer.done() or writer.cancel())

    conn.on_close = unstick
    try:
        await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        if conn.closing and not writer.done():
            # The server is closing it: the writer sends what is queued, then the close
            # code (the watchdog above cancels it if the client stopped reading).
            await asyncio.wait((writer,))
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        await node.detach(conn)
        if conn.close_code == Close.TRY_AGAIN:
            # Counted here, not in the writer: a writer stuck on the slow client never gets there.
            metrics.CLOSES.labels(str(Close.TRY_AGAIN)).inc()
        if conn.close_code is not None and not (writer.done() and not writer.cancelled()):
            await _close(websocket, conn.close_code, conn.close_reason)
        log.info("disconnected", extra={"code": conn.close_code})
        logs.context.reset(token)


async def _deny(websocket: WebSocket, code: str, message: str) -> None:
    """Refuse a handshake with an HTTP error body (403 if the server cannot send one)."""
    metrics.ERRORS.labels(code).inc()
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(code, message))
    else:
        await websocket.close(code=1008)


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason)


async def _hello(websocket: WebSocket, node: Node, settings: Settings) -> Connection | None:
    """Wait for `hello`; anything else (or nothing in time) closes with 4001."""
    try:
        msg = await asyncio.wait_for(websocket.receive(), settings.hello_timeout)
    except TimeoutError:
        await _close(websocket, Close.UNAUTHORIZED, "no hello in time")
        return None
    if msg["type"] == "websocket.disconnect":
        return None
    data: str | bytes = msg.get("text") or msg.get("bytes") or b""
    try:
        frame = decode_frame(data)
    except FrameError:
        frame = None
    if not isinstance(frame, Hello):
        await _close(websocket, Close.UNAUTHORIZED, "the first frame must be hello")
        return None
    try:
        identity = await node.accounts.identify(frame.token)
        user = identity.user
        client = websocket.client
        conn = Connection(
            user,
            identity.token_hash,
            limits=Limits(settings),
            max_frames=settings.outbound_queue_frames,
            max_bytes=settings.outbound_queue_bytes,
            send_timeout=settings.send_timeout,
            remote=f"{client.host}:{client.port}" if client else "",
        )
        node.attach(conn, identity.expires)
        try:
            await node.confirm(conn)
        except BaseException:
            await node.detach(conn)
            raise
    except ChatError as exc:
        with contextlib.suppress(Exception):
            await websocket.send_text(
                encode_text(ErrorFrame(ref=None, code=exc.code, message=exc.message))
            )
        code = {
            "unauthorized": Close.UNAUTHORIZED,
            "rate_limited": Close.TOO_MANY,
        }.get(exc.code, Close.TRY_AGAIN)
        await _close(websocket, code, exc.message)
        return None
    conn.push(encode_text(Welcome(user=user, heartbeat=settings.heartbeat)))
    log.info("connected", extra={"conn": conn.id, "user": user.id})
    return conn


async def _read(websocket: WebSocket, node: Node, conn: Connection) -> None:
    while not conn.closing:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            return
        data = msg.get("text")
        if data is None:
            data = msg.get("bytes") or b""
        ref: Any = None
        try:
            frame = decode_frame(data)
            ref = getattr(frame, "ref", None)
            metrics.FRAMES_IN.labels(type(frame).__name__.lower()).inc()
            await node.handle(conn, frame)
        except FrameError as exc:
            await _reply_error(conn, peek_ref(data), "invalid", str(exc))
        except ChatError as exc:
            await _reply_error(conn, ref, exc.code, exc.message)
        except Exception:
            log.exception("frame failed")
            await _reply_error(conn, ref, "internal", "the server failed; it has been logged")


async def _reply_error(conn: Connection, ref: Any, code: str, message: str) -> None:
    metrics.ERRORS.labels(code).inc()
    await conn.put(encode_text(ErrorFrame(ref=ref, code=code, message=message)))


async def _write(websocket: WebSocket, conn: Connection) -> None:
    send = websocket.send
    while True:
        await conn.wakeup.wait()
        conn.wakeup.clear()
        while (text := conn.pop()) is not None:
            await send({"type": "websocket.send", "text": text})
        if conn.close_code is not None:
            await _close(websocket, conn.close_code, conn.close_reason)
            return
