"""HTTP: full-text search over the messages the caller may read (`chat/search.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import search
from .common import current_user, endpoint, json_response, node_of, query_int


@endpoint
async def search_messages(request: Request) -> Response:
    user, _ = await current_user(request)
    room = query_int(request, "room", 1, 2**63 - 1)
    before = query_int(request, "before", 0, 2**62)
    limit = query_int(request, "limit", 1, 100) or 20
    q = request.query_params.get("q", "")
    hits = await search.search(node_of(request).store, user, q, room, before, limit)
    return json_response(search.HitsOut(messages=hits))


ROUTES = [Route("/api/search", search_messages, methods=["GET"])]
