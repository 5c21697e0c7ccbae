"""HTTP: rooms, their members, direct messages and presence."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import (
    AddMember,
    NewDm,
    NewRoom,
    PresenceOut,
    RoomOut,
    RoomsOut,
)
from .common import (
    current_user,
    endpoint,
    json_response,
    node_of,
    path_id,
    read_body,
)


@endpoint
async def create_room(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewRoom = await read_body(request, NewRoom)
    room = await node_of(request).rooms.create(user, body.name.strip(), body.private)
    return json_response(RoomOut(room=room), 201)


@endpoint
async def list_rooms(request: Request) -> Response:
    user, _ = await current_user(request)
    return json_response(RoomsOut(rooms=await node_of(request).rooms.of_user(user)))


@endpoint
async def join_room(request: Request) -> Response:
    user, _ = await current_user(request)
    room = await node_of(request).rooms.join(user, path_id(request))
    return json_response(RoomOut(room=room))


@endpoint
async def add_member(request: Request) -> Response:
    user, _ = await current_user(request)
    room_id = path_id(request)
    body: AddMember = await read_body(request, AddMember)
    room = await node_of(request).rooms.add_member(user, room_id, body.username)
    return json_response(RoomOut(room=room))


@endpoint
async def remove_member(request: Request) -> Response:
    user, _ = await current_user(request)
    await node_of(request).rooms.remove_member(
        user, path_id(request), request.path_params["username"]
    )
    return Response(status_code=204)


@endpoint
async def create_dm(request: Request) -> Response:
    user, _ = await current_user(request)
    body: NewDm = await read_body(request, NewDm)
    room = await node_of(request).rooms.dm(user, body.username)
    return json_response(RoomOut(room=room))


@endpoint
async def presence(request: Request) -> Response:
    user, _ = await current_user(request)
    online = await node_of(request).rooms.online(user, path_id(request))
    return json_response(PresenceOut(online=online))


ROUTES = [
    Route("/api/rooms", create_room, methods=["POST"]),
    Route("/api/rooms", list_rooms, methods=["GET"]),
    Route("/api/rooms/{room_id}/join", join_room, methods=["POST"]),
    Route("/api/rooms/{room_id}/members", add_member, methods=["POST"]),
    Route("/api/rooms/{room_id}/members/{username}", remove_member, methods=["DELETE"]),
    Route("/api/dms", create_dm, methods=["POST"]),
    Route("/api/rooms/{room_id}/presence", presence, methods=["GET"]),
]
