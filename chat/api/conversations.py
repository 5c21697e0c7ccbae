"""HTTP: reactions, followed threads and mentions (`reactions.py`, `threads.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ChatError
from ..protocol import MAX_ID, MessagesOut, ReactionsOut, ThreadsOut
from .common import current_user, endpoint, json_response, node_of, path_id, query_int


async def _react(request: Request, *, add: bool) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    message = path_id(request, "message_id", "no such message")
    node = node_of(request)
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
    limit = query_int(request, "limit", 1, 100) or 20
    return json_response(ThreadsOut(threads=await node_of(request).threads.followed(user, limit)))


@endpoint
async def list_mentions(request: Request) -> Response:
    user, _ = await current_user(request)
    before = query_int(request, "before", 1, MAX_ID) or MAX_ID
    limit = query_int(request, "limit", 1, 100) or 20
    messages = await node_of(request).store.mentions_of_user(user.id, before, limit)
    return json_response(MessagesOut(messages=messages))


REACTION = "/api/rooms/{room_id}/messages/{message_id}/reactions/{emoji:path}"

ROUTES = [
    Route(REACTION, put_reaction, methods=["PUT"]),
    Route(REACTION, delete_reaction, methods=["DELETE"]),
    Route("/api/threads", list_threads, methods=["GET"]),
    Route("/api/mentions", list_mentions, methods=["GET"]),
]
