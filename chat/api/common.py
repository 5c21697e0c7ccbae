"""What every HTTP handler shares: JSON in and out, the contract's errors, the caller.

`endpoint` wraps a handler with a request id in the logs and turns every
`ChatError` into the contract's error body (with `Retry-After` when known).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from .. import logs, metrics
from ..config import Settings
from ..errors import HTTP_STATUS, ChatError, invalid
from ..node import Node
from ..protocol import (
    ErrorBody,
    ErrorOut,
    FrameError,
    User,
    decode_body,
    encode,
    is_json,
)

log = logging.getLogger("chat.api")


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


def node_of(request: Request | WebSocket) -> Node:
    node: Node = request.app.state.node
    return node


def settings_of(request: Request | WebSocket) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def read_body(request: Request, type_: type[Any]) -> Any:
    """Read and decode a JSON body: 413 over the limit, 400 not JSON, 422 wrong shape."""
    limit = settings_of(request).max_http_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ChatError("too_large", f"the body is over {limit} bytes")
    chunks = []
    size = 0
    # A client that goes, or that the body deadline (handshake.py) cuts off, raises
    # ClientDisconnect here: `endpoint` counts it as 499 with one INFO line.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ChatError("too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not is_json(data):
        raise invalid("the body is not JSON", status=400)
    try:
        return decode_body(data, type_)
    except FrameError as exc:
        raise invalid(str(exc)) from None


def client_address(request: Request | WebSocket) -> str:
    """The client's address, for the per-address limits ("" when unknown)."""
    return request.client.host if request.client is not None else ""


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ChatError("unauthorized", "send `Authorization: Bearer TOKEN`")
    return token.strip()


async def current_user(request: Request) -> tuple[User, bytes]:
    return await node_of(request).accounts.authenticate(bearer(request))


def path_id(request: Request, name: str = "room_id", missing: str = "no such room") -> int:
    raw = request.path_params[name]
    # isascii: superscripts and other scripts' digits pass str.isdigit, but are no room ids.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or raw.startswith("0"):
        raise ChatError("not_found", missing)
    return int(raw)


def query_int(request: Request, name: str, lo: int, hi: int) -> int | None:
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
