"""HTTP: a room's history, and posting to it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import (
    MAX_ID,
    MessageOut,
    MessagesOut,
    NewMessage,
    as_id,
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
    thread = query_int(request, "thread", 1, MAX_ID)
    node = node_of(request)
    if thread is not None:
        messages = await node.threads.history(user, room, thread, before, after, limit)
    else:
        messages = await node.messages.history(user, room, before, after, limit)
    return json_response(MessagesOut(messages=messages))


@endpoint
async def post_message(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    body: NewMessage = await read_body(request, NewMessage)
    thread = None if body.thread is None else as_id(body.thread)
    message = await node_of(request).messages.post(user, room, body.body, body.client_id, thread)
    return json_response(MessageOut(message=message), 201)


ROUTES = [
    Route("/api/rooms/{room_id}/messages", history, methods=["GET"]),
    Route("/api/rooms/{room_id}/messages", post_message, methods=["POST"]),
]
