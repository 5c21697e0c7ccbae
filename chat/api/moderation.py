"""HTTP: the room directory, room settings, roles and moderation (`chat/moderation.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import invalid
from ..protocol import (
    AuditOut,
    BansOut,
    DirectoryOut,
    FrameError,
    MemberOut,
    MembersOut,
    NewBan,
    NewMute,
    RoleChange,
    RoomOut,
    RoomPatch,
    check_text,
)
from .common import current_user, endpoint, json_response, node_of, path_id, query_int, read_body

# The longest directory search: names are at most 100 characters, topics 500.
MAX_QUERY_CHARS = 500


@endpoint
async def directory(request: Request) -> Response:
    await current_user(request)
    q = request.query_params.get("q", "")
    if len(q) > MAX_QUERY_CHARS:
        raise invalid(f"`q` must be at most {MAX_QUERY_CHARS} characters")
    try:
        check_text(q, "q")
    except FrameError as exc:
        raise invalid(str(exc)) from None
    limit = query_int(request, "limit", 1, 100) or 50
    rooms = await node_of(request).moderation.directory(q.strip(), limit)
    return json_response(DirectoryOut(rooms=rooms))


@endpoint
async def update_room(request: Request) -> Response:
    user, _ = await current_user(request)
    room_id = path_id(request)
    body: RoomPatch = await read_body(request, RoomPatch)
    room = await node_of(request).moderation.update(user, room_id, body)
    return json_response(RoomOut(room=room))


@endpoint
async def list_members(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    after = query_int(request, "after", 0, 2**63 - 1) or 0
    limit = query_int(request, "limit", 1, 1000) or 200
    members = await node_of(request).moderation.members(user, room, after, limit)
    return json_response(MembersOut(members=members))


@endpoint
async def set_role(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    body: RoleChange = await read_body(request, RoleChange)
    member = await node_of(request).moderation.set_role(
        user, room, request.path_params["username"], body.role
    )
    return json_response(MemberOut(member=member))


@endpoint
async def mute(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    body: NewMute = await read_body(request, NewMute)
    await node_of(request).moderation.mute(user, room, body.username, body.seconds)
    return Response(status_code=204)


@endpoint
async def unmute(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).moderation.unmute(
        user, path_id(request), request.path_params["username"]
    )
    return Response(status_code=204)


@endpoint
async def ban(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    body: NewBan = await read_body(request, NewBan)
    await node_of(request).moderation.ban(user, room, body.username, body.reason)
    return Response(status_code=204)


@endpoint
async def unban(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).moderation.unban(user, path_id(request), request.path_params["username"])
    return Response(status_code=204)


@endpoint
async def list_bans(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    limit = query_int(request, "limit", 1, 1000) or 200
    return json_response(BansOut(bans=await node_of(request).moderation.bans(user, room, limit)))


@endpoint
async def audit(request: Request) -> Response:
    user, _ = await current_user(request)
    room = path_id(request)
    limit = query_int(request, "limit", 1, 200) or 50
    entries = await node_of(request).moderation.audit(user, room, limit)
    return json_response(AuditOut(entries=entries))


ROUTES = [
    # Before /api/rooms/{room_id}/...: "directory" is no room id.
    Route("/api/rooms/directory", directory, methods=["GET"]),
    Route("/api/rooms/{room_id}", update_room, methods=["PATCH"]),
    Route("/api/rooms/{room_id}/members", list_members, methods=["GET"]),
    Route("/api/rooms/{room_id}/members/{username}/role", set_role, methods=["PUT"]),
    Route("/api/rooms/{room_id}/mutes", mute, methods=["POST"]),
    Route("/api/rooms/{room_id}/mutes/{username}", unmute, methods=["DELETE"]),
    Route("/api/rooms/{room_id}/bans", ban, methods=["POST"]),
    Route("/api/rooms/{room_id}/bans", list_bans, methods=["GET"]),
    Route("/api/rooms/{room_id}/bans/{username}", unban, methods=["DELETE"]),
    Route("/api/rooms/{room_id}/audit", audit, methods=["GET"]),
]
