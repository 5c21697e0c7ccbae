"""The OpenAPI 3.1 document of the HTTP API, generated from the msgspec types.

Served at `/openapi.json`. The request and response schemas come from the same
Structs that decode and encode the bodies, so the document cannot drift from
what the server accepts; `OPERATIONS` lists each route once with its statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import protocol as p
from . import search


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    status: int
    response: type[Any] | None = None
    request: type[Any] | None = None
    auth: bool = True
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, int, int], ...] = ()
    params: tuple[str, ...] = field(default=())
    # Required text query parameters: (name, max length).
    text: tuple[tuple[str, int], ...] = ()
    # Optional string query parameters.
    strings: tuple[str, ...] = ()


_ROOM = ("room_id",)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/api/users", "Sign up", 201, p.UserOut, p.SignUp, False, (400, 409, 413, 422)
    ),
    Operation(
        "post", "/api/sessions", "Log in", 201, p.SessionOut, p.LogIn, False, (400, 401, 422)
    ),
    Operation("delete", "/api/sessions/current", "Log out: revoke this token", 204),
    Operation(
        "post", "/api/bots", "Create a bot you own", 201, p.SessionOut, p.NewBot, True, (409,)
    ),
    Operation(
        "post",
        "/api/bots/{username}/token",
        "Rotate a bot's token: a new one; the old ones end and their sockets close (4001)",
        201,
        p.SessionOut,
        params=("username",),
    ),
    Operation(
        "delete",
        "/api/bots/{username}/token",
        "Revoke every token of a bot you own; its sockets close (4001)",
        204,
        params=("username",),
    ),
    Operation(
        "put",
        "/api/bots/{username}/webhook",
        "Point a bot's outgoing webhook at a URL, with a new signing secret",
        200,
        p.WebhookOut,
        p.WebhookIn,
        True,
        (400, 403, 404, 413, 422),
        params=("username",),
    ),
    Operation(
        "delete",
        "/api/bots/{username}/webhook",
        "Remove a bot's webhook; its pending events fail",
        204,
        errors=(403, 404),
        params=("username",),
    ),
    Operation(
        "get",
        "/api/bots/{username}/deliveries",
        "A bot's webhook deliveries, newest first (the owner only)",
        200,
        p.DeliveriesOut,
        errors=(403, 404, 422),
        query=(("limit", 1, 200),),
        params=("username",),
    ),
    Operation("get", "/api/blocks", "The users you blocked", 200, p.UsersOut),
    Operation(
        "put",
        "/api/blocks/{username}",
        "Block someone: no DMs from them, no adding you to rooms",
        204,
        params=("username",),
    ),
    Operation("delete", "/api/blocks/{username}", "Unblock someone", 204, params=("username",)),
    Operation("post", "/api/rooms", "Create a room", 201, p.RoomOut, p.NewRoom),
    Operation("get", "/api/rooms", "Your rooms, with unread counts", 200, p.RoomsOut),
    Operation(
        "post", "/api/rooms/{room_id}/join", "Join a public room", 200, p.RoomOut, params=_ROOM
    ),
    Operation(
        "get",
        "/api/rooms/directory",
        "Public rooms whose name or topic contains q, most members first",
        200,
        p.DirectoryOut,
        query=(("limit", 1, 100),),
        strings=("q",),
    ),
    Operation(
        "patch",
        "/api/rooms/{room_id}",
        "Change the name, topic or slow mode (owner and moderators)",
        200,
        p.RoomOut,
        p.RoomPatch,
        params=_ROOM,
    ),
    Operation(
        "get",
        "/api/rooms/{room_id}/members",
        "The members and their roles, by user id (keyset: after)",
        200,
        p.MembersOut,
        query=(("after", 0, 2**63 - 1), ("limit", 1, 1000)),
        params=_ROOM,
    ),
    Operation(
        "put",
        "/api/rooms/{room_id}/members/{username}/role",
        "Make a member a moderator or a member again (the owner)",
        200,
        p.MemberOut,
        p.RoleChange,
        params=("room_id", "username"),
    ),
    Operation(
        "post",
        "/api/rooms/{room_id}/mutes",
        "Mute a member for some seconds (owner and moderators)",
        204,
        request=p.NewMute,
        params=_ROOM,
    ),
    Operation(
        "delete",
        "/api/rooms/{room_id}/mutes/{username}",
        "End a mute",
        204,
        params=("room_id", "username"),
    ),
    Operation(
        "post",
        "/api/rooms/{room_id}/bans",
        "Ban someone: removed, and kept out until unbanned (owner and moderators)",
        204,
        request=p.NewBan,
        params=_ROOM,
    ),
    Operation(
        "get",
        "/api/rooms/{room_id}/bans",
        "The room's bans, newest first",
        200,
        p.BansOut,
        query=(("limit", 1, 1000),),
        params=_ROOM,
    ),
    Operation(
        "delete",
        "/api/rooms/{room_id}/bans/{username}",
        "Lift a ban",
        204,
        params=("room_id", "username"),
    ),
    Operation(
        "get",
        "/api/rooms/{room_id}/audit",
        "The room's moderation log, newest first (owner and moderators)",
        200,
        p.AuditOut,
        query=(("limit", 1, 200),),
        params=_ROOM,
    ),
    Operation(
        "post",
        "/api/rooms/{room_id}/members",
        "Add a member",
        200,
        p.RoomOut,
        p.AddMember,
        params=_ROOM,
    ),
    Operation(
        "delete",
        "/api/rooms/{room_id}/members/{username}",
        "Remove a member (yourself, or anyone if you created the room)",
        204,
        params=("room_id", "username"),
    ),
    Operation("post", "/api/dms", "The direct-message room with someone", 200, p.RoomOut, p.NewDm),
    Operation(
        "get",
        "/api/rooms/{room_id}/messages",
        "History, ascending seq (keyset: before / after)",
        200,
        p.MessagesOut,
        query=(
            ("before", 0, 2**62),
            ("after", 0, 2**62),
            ("limit", 1, 200),
            ("thread", 1, p.MAX_ID),
        ),
        params=_ROOM,
    ),
    Operation(
        "post",
        "/api/rooms/{room_id}/messages",
        "Send a message (idempotent with client_id)",
        201,
        p.MessageOut,
        p.NewMessage,
        params=_ROOM,
    ),
    Operation(
        "get",
        "/api/rooms/{room_id}/presence",
        "Who is online in the room",
        200,
        p.PresenceOut,
        params=_ROOM,
    ),
    Operation(
        "get",
        "/api/search",
        "Search your rooms' messages, newest first (docs/protocol.md, Search)",
        200,
        search.HitsOut,
        query=(("room", 1, 2**63 - 1), ("before", 0, 2**62), ("limit", 1, 100)),
        text=(("q", search.MAX_QUERY_CHARS),),
    ),
    Operation(
        "put",
        "/api/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
        "React to a message (the emoji URL-encoded); the message's whole new list",
        200,
        p.ReactionsOut,
        errors=(409,),
        params=("room_id", "message_id", "emoji"),
    ),
    Operation(
        "delete",
        "/api/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
        "Take back a reaction; the message's whole new list",
        200,
        p.ReactionsOut,
        errors=(409,),
        params=("room_id", "message_id", "emoji"),
    ),
    Operation(
        "get",
        "/api/threads",
        "Followed threads with a reply, most recent reply first, with unread counts",
        200,
        p.ThreadsOut,
        query=(("limit", 1, 100),),
    ),
    Operation(
        "get",
        "/api/mentions",
        "Messages mentioning you (or @room), newest first (keyset: before a message id)",
        200,
        p.MessagesOut,
        query=(("before", 1, p.MAX_ID), ("limit", 1, 100)),
    ),
)


def _ecma_patterns(node: Any) -> None:
    """msgspec writes Python's end anchor `\\Z`; JSON Schema patterns are ECMA-262 (`$`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str) and value.endswith("\\Z"):
                node[key] = value[:-2] + "$"
            else:
                _ecma_patterns(value)
    elif isinstance(node, list):
        for item in node:
            _ecma_patterns(item)


_COMMON_ERRORS = (401, 403, 404, 405, 413, 422, 429, 500, 503)


def document() -> dict[str, Any]:
    """Build the OpenAPI document (cheap; the app caches the encoded bytes)."""
    types: list[Any] = [p.ErrorOut]
    for op in OPERATIONS:
        types += [t for t in (op.request, op.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, schemas, strict=True))
    error = {
        "description": "An error with one of the contract's codes",
        "content": {"application/json": {"schema": by_type[p.ErrorOut]}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        if op.response is None:
            responses[str(op.status)] = {"description": "Done"}
        else:
            responses[str(op.status)] = {
                "description": "Done",
                "content": {"application/json": {"schema": by_type[op.response]}},
            }
        statuses = set(op.errors) | set(_COMMON_ERRORS)
        if op.request is not None:
            statuses.add(400)  # a body that is not JSON
        for status in sorted(statuses):
            if status == 401 and not op.auth and 401 not in op.errors:
                continue
            responses[str(status)] = error
        spec: dict[str, Any] = {"summary": op.summary, "responses": responses}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in op.params
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": lo, "maximum": hi},
            }
            for name, lo, hi in op.query
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": True,
                "schema": {"type": "string", "maxLength": longest},
            }
            for name, longest in op.text
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in op.strings
        ]
        if parameters:
            spec["parameters"] = parameters
        if op.request is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[op.request]}},
            }
        if op.auth:
            spec["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method] = spec
    for path, summary in (("/healthz", "The process is up"), ("/readyz", "Backends reachable")):
        paths[path] = {
            "get": {
                "summary": summary,
                "responses": {"200": {"description": "OK"}, "503": error},
            }
        }
    _ecma_patterns(components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chat",
            "version": "1",
            "description": "The HTTP half of the chat contract; the WebSocket half is "
            "documented in docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
