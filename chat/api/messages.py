"""HTTP: a room's history, and posting to it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import (
    MessageOut,
    MessagesOut,
    NewMessage,
)
from .common import (
    current_user,
    endpoint,
    json_response,
    node_of,
    path_id,
    query_int,
    read_body,
)


@endpoint
async def history(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    before = query_int(request, "before", 0, 2**62)
    after = query_int(request, "after", 0, 2**62)
    limit = query_int(request, "limit", 1, 200) or 50
    messages = await node_of(request).messages.history(user, room, before, after, limit)
    return json_response(MessagesOut(messages=messages))


@endpoint
async def post_message(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    body: NewMessage = await read_body(request, NewMessage)
    message = await node_of(request).messages.post(user, room, body.body, body.client_id)
    return json_response(MessageOut(message=message), 201)


ROUTES = [
    Route("/api/rooms/{room_id}/messages", history, methods=["GET"]),
    Route("/api/rooms/{room_id}/messages", post_message, methods=["POST"]),
]
