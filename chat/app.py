"""The edge: Starlette routes, the lifespan, and each WebSocket's reader and writer.

Only this module knows Starlette. HTTP handlers decode a body into a msgspec
type, call the node and encode its answer; every `ChatError` becomes the
contract's error body. A WebSocket gets two tasks: the reader decodes frames
and awaits the node one frame at a time, the writer drains the connection's
bounded queue into the socket; when either ends, the other is cancelled and
the connection leaves its rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from . import logs, metrics, openapi
from .broker import create_backends
from .config import Settings
from .errors import FINAL_CLOSES, HTTP_STATUS, ChatError, Close, close_codes, invalid
from .hub import Connection
from .limits import AddressLimiter, Limits
from .node import Node, new_origin
from .protocol import (
    MAX_ID,
    AddMember,
    ErrorBody,
    ErrorFrame,
    ErrorOut,
    FrameError,
    Hello,
    LogIn,
    MessageOut,
    MessagesOut,
    NewBot,
    NewDm,
    NewMessage,
    NewRoom,
    PresenceOut,
    ReactionsOut,
    RoomOut,
    RoomsOut,
    SessionOut,
    SignUp,
    ThreadsOut,
    User,
    UserOut,
    UsersOut,
    Welcome,
    as_id,
    decode_body,
    decode_frame,
    encode,
    encode_text,
    is_json,
    peek_ref,
)
from .store import UNAVAILABLE_ERRORS, Store

log = logging.getLogger("chat.app")

STATIC = Path(__file__).parent / "static"
# Headers of the browser client's files: revalidate after a deploy, run only our scripts.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class ClientFiles(StaticFiles):
    """The browser client's files, with PAGE_HEADERS."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


# Seconds a writer stuck on a client that stopped reading gets to send a close frame.
CLOSE_GRACE = 2.0


def json_response(body: Any, status: int = 200) -> Response:
    return Response(encode(body), status_code=status, media_type="application/json")


def error_response(
    code: str, message: str, status: int | None = None, retry_after: float | None = None
) -> Response:
    body = ErrorOut(error=ErrorBody(code=code, message=message))
    response = json_response(body, status or HTTP_STATUS[code])
    if retry_after is not None:
        # Whole seconds, rounded up: a client retrying then must not be refused again.
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _node(request: Request | WebSocket) -> Node:
    node: Node = request.app.state.node
    return node


def _settings(request: Request | WebSocket) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def read_body(request: Request, type_: type[Any]) -> Any:
    """Read and decode a JSON body: 413 over the limit, 400 not JSON, 422 wrong shape."""
    limit = _settings(request).max_http_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ChatError("too_large", f"the body is over {limit} bytes")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ChatError("too_large", f"the body is over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went, or the body deadline (chat/handshake.py) cut it off: nobody
        # is left to answer, and it is no server fault to log.
        raise invalid("the body did not arrive", status=408) from None
    data = b"".join(chunks)
    if not is_json(data):
        raise invalid("the body is not JSON", status=400)
    try:
        return decode_body(data, type_)
    except FrameError as exc:
        raise invalid(str(exc)) from None


def _address(request: Request | WebSocket) -> str:
    """The client's address, for the per-address limits ("" when unknown)."""
    return request.client.host if request.client is not None else ""


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ChatError("unauthorized", "send `Authorization: Bearer TOKEN`")
    return token.strip()


async def current_user(request: Request) -> tuple[User, bytes]:
    return await _node(request).accounts.authenticate(_bearer(request))


def _id(request: Request, name: str = "room_id", missing: str = "no such room") -> int:
    raw = request.path_params[name]
    # isascii: superscripts and other scripts' digits pass str.isdigit, but are no room ids.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or raw.startswith("0"):
        raise ChatError("not_found", missing)
    return int(raw)


def _query_int(request: Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise invalid(f"`{name}` must be an integer between {lo} and {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise invalid(f"`{name}` must be between {lo} and {hi}")
    return value


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(handler: Handler) -> Handler:
    """Run a handler with a request id in the logs and the contract's errors."""

    async def run(request: Request) -> Response:
        token = logs.context.set("req-" + secrets.token_hex(4))
        try:
            response = await handler(request)
        except ChatError as exc:
            metrics.ERRORS.labels(exc.code).inc()
            response = error_response(exc.code, exc.message, exc.status, exc.retry_after)
        except ClientDisconnect:
            # The client went away before its body was in: nothing failed here, and no
            # answer can reach it. 499, as nginx counts it, keeps it out of the 5xx.
            log.info("client went away", extra={"path": request.url.path})
            response = Response(status_code=499)
        except Exception:
            log.exception("request failed", extra={"path": request.url.path})
            response = error_response("internal", "the server failed; it has been logged")
        finally:
            logs.context.reset(token)
        route = request.scope.get("route")
        metrics.HTTP_REQUESTS.labels(getattr(route, "path", "?"), str(response.status_code)).inc()
        return response

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


# -- accounts -----------------------------------------------------------------


@endpoint
async def sign_up(request: Request) -> Response:
    body: SignUp = await read_body(request, SignUp)
    user = await _node(request).accounts.sign_up(body.username, body.password, _address(request))
    return json_response(UserOut(user=user), 201)


@endpoint
async def log_in(request: Request) -> Response:
    body: LogIn = await read_body(request, LogIn)
    token, user = await _node(request).accounts.log_in(
        body.username, body.password, _address(request)
    )
    return json_response(SessionOut(token=token, user=user), 201)


@endpoint
async def log_out(request: Request) -> Response:
    _, token_hash = await current_user(request)
    await _node(request).log_out(token_hash)
    return Response(status_code=204)


@endpoint
async def create_bot(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewBot = await read_body(request, NewBot)
    token, bot = await _node(request).accounts.create_bot(user, body.username)
    return json_response(SessionOut(token=token, user=bot), 201)


@endpoint
async def rotate_bot_token(request: Request) -> Response:
    user, _ = await current_user(request)
    token, bot = await _node(request).replace_bot_tokens(
        user, request.path_params["username"], rotate=True
    )
    assert token is not None
    return json_response(SessionOut(token=token, user=bot), 201)


@endpoint
async def revoke_bot_tokens(request: Request) -> Response:
    user, _ = await current_user(request)
    await _node(request).replace_bot_tokens(user, request.path_params["username"], rotate=False)
    return Response(status_code=204)


@endpoint
async def list_blocks(request: Request) -> Response:
    user, _ = await current_user(request)
    return json_response(UsersOut(users=await _node(request).blocks.blocked(user)))


@endpoint
async def block(request: Request) -> Response:
    user, _ = await current_user(request)
    await _node(request).blocks.block(user, request.path_params["username"])
    return Response(status_code=204)


@endpoint
async def unblock(request: Request) -> Response:
    user, _ = await current_user(request)
    await _node(request).blocks.unblock(user, request.path_params["username"])
    return Response(status_code=204)


# -- rooms --------------------------------------------------------------------


@endpoint
async def create_room(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewRoom = await read_body(request, NewRoom)
    room = await _node(request).rooms.create(user, body.name.strip(), body.private)
    return json_response(RoomOut(room=room), 201)


@endpoint
async def list_rooms(request: Request) -> Response:
    user, _ = await current_user(request)
    return json_response(RoomsOut(rooms=await _node(request).rooms.of_user(user)))


@endpoint
async def join_room(request: Request) -> Response:
    user, _ = await current_user(request)
    room = await _node(request).rooms.join(user, _id(request))
    return json_response(RoomOut(room=room))


@endpoint
async def add_member(request: Request) -> Response:
    user, _ = await current_user(request)
    room_id = _id(request)
    body: AddMember = await read_body(request, AddMember)
    room = await _node(request).rooms.add_member(user, room_id, body.username)
    return json_response(RoomOut(room=room))


@endpoint
async def remove_member(request: Request) -> Response:
    user, _ = await current_user(request)
    await _node(request).rooms.remove_member(user, _id(request), request.path_params["username"])
    return Response(status_code=204)


@endpoint
async def create_dm(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewDm = await read_body(request, NewDm)
    room = await _node(request).rooms.dm(user, body.username)
    return json_response(RoomOut(room=room))


@endpoint
async def history(request: Request) -> Response:
    user, _ = await current_user(request)
    room = _id(request)
    before = _query_int(request, "before", 0, 2**62)
    after = _query_int(request, "after", 0, 2**62)
    limit = _query_int(request, "limit", 1, 200) or 50
    thread = _query_int(request, "thread", 1, MAX_ID)
    node = _node(request)
    if thread is not None:
        messages = await node.threads.history(user, room, thread, before, after, limit)
    else:
        messages = await node.messages.history(user, room, before, after, limit)
    return json_response(MessagesOut(messages=messages))


@endpoint
async def post_message(request: Request) -> Response:
    user, _ = await current_user(request)
    room = _id(request)
    body: NewMessage = await read_body(request, NewMessage)
    thread = None if body.thread is None else as_id(body.thread)
    message = await _node(request).messages.post(user, room, body.body, body.client_id, thread)
    return json_response(MessageOut(message=message), 201)


async def _react(request: Request, *, add: bool) -> Response:
    user, _ = await current_user(request)
    room = _id(request)
    message = _id(request, "message_id", "no such message")
    node = _node(request)
    # Reactions spend the same per-user budget as sends.
    if not node.budgets.of(user.id).sends.take():
        raise ChatError("rate_limited", "too many sends: slow down")
    emoji = request.path_params["emoji"]
    reactions = await node.reactions.change(user, room, message, emoji, add=add)
    return json_response(ReactionsOut(reactions=reactions))


@endpoint
async def put_reaction(request: Request) -> Response:
    return await _react(request, add=True)


@endpoint
async def delete_reaction(request: Request) -> Response:
    return await _react(request, add=False)


@endpoint
async def list_threads(request: Request) -> Response:
    user, _ = await current_user(request)
    limit = _query_int(request, "limit", 1, 100) or 20
    return json_response(ThreadsOut(threads=await _node(request).threads.followed(user, limit)))


@endpoint
async def list_mentions(request: Request) -> Response:
    user, _ = await current_user(request)
    before = _query_int(request, "before", 1, MAX_ID) or MAX_ID
    limit = _query_int(request, "limit", 1, 100) or 20
    messages = await _node(request).store.mentions_of_user(user.id, before, limit)
    return json_response(MessagesOut(messages=messages))


@endpoint
async def presence(request: Request) -> Response:
    user, _ = await current_user(request)
    online = await _node(request).rooms.online(user, _id(request))
    return json_response(PresenceOut(online=online))


# -- operations ---------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    node = _node(request)
    db_ok, broker_ok = await asyncio.gather(node.store.ping(), node.broker.ping())
    down = [name for name, ok in (("postgresql", db_ok), ("broker", broker_ok)) if not ok]
    if down:
        return error_response("unavailable", "down: " + ", ".join(down))
    return JSONResponse({"status": "ready"})


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = encode(openapi.document())
    return Response(request.app.state.openapi, media_type="application/json")


async def close_codes_js(request: Request) -> Response:
    """The close codes for the browser client, generated from `chat.errors` (one source)."""
    text = (
        "// Generated by the server from chat/errors.py: the WebSocket close codes.\n"
        f"export const CLOSE = Object.freeze({encode(close_codes()).decode()});\n"
        f"export const FINAL_CLOSES = Object.freeze({encode(sorted(FINAL_CLOSES)).decode()});\n"
    )
    return Response(text, media_type="text/javascript", headers=PAGE_HEADERS)


async def index(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return Response("chat server: the browser client is not installed", media_type="text/plain")
    return FileResponse(page, headers=PAGE_HEADERS)


# -- WebSocket ----------------------------------------------------------------


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
    settings = _settings(websocket)
    node = _node(websocket)
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
        user, token_hash = await node.accounts.authenticate(frame.token)
        client = websocket.client
        conn = Connection(
            user,
            token_hash,
            limits=Limits(settings),
            max_frames=settings.outbound_queue_frames,
            max_bytes=settings.outbound_queue_bytes,
            send_timeout=settings.send_timeout,
            remote=f"{client.host}:{client.port}" if client else "",
        )
        node.attach(conn)
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


# -- the application ----------------------------------------------------------


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

    routes = [
        Route("/api/users", sign_up, methods=["POST"]),
        Route("/api/sessions", log_in, methods=["POST"]),
        Route("/api/sessions/current", log_out, methods=["DELETE"]),
        Route("/api/bots", create_bot, methods=["POST"]),
        Route("/api/bots/{username}/token", rotate_bot_token, methods=["POST"]),
        Route("/api/bots/{username}/token", revoke_bot_tokens, methods=["DELETE"]),
        Route("/api/blocks", list_blocks, methods=["GET"]),
        Route("/api/blocks/{username}", block, methods=["PUT"]),
        Route("/api/blocks/{username}", unblock, methods=["DELETE"]),
        Route("/api/rooms", create_room, methods=["POST"]),
        Route("/api/rooms", list_rooms, methods=["GET"]),
        Route("/api/rooms/{room_id}/join", join_room, methods=["POST"]),
        Route("/api/rooms/{room_id}/members", add_member, methods=["POST"]),
        Route("/api/rooms/{room_id}/members/{username}", remove_member, methods=["DELETE"]),
        Route("/api/dms", create_dm, methods=["POST"]),
        Route("/api/rooms/{room_id}/messages", history, methods=["GET"]),
        Route("/api/rooms/{room_id}/messages", post_message, methods=["POST"]),
        Route("/api/rooms/{room_id}/presence", presence, methods=["GET"]),
        Route(
            "/api/rooms/{room_id}/messages/{message_id}/reactions/{emoji:path}",
            put_reaction,
            methods=["PUT"],
        ),
        Route(
            "/api/rooms/{room_id}/messages/{message_id}/reactions/{emoji:path}",
            delete_reaction,
            methods=["DELETE"],
        ),
        Route("/api/threads", list_threads, methods=["GET"]),
        Route("/api/mentions", list_mentions, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/static/js/closes.js", close_codes_js, methods=["GET"]),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
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
