"""HTTP request and response bodies, and their decoder.

Part of `chat.protocol`: no I/O here, and nothing else of `chat` is imported.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from .types import (
    Body,
    ClientId,
    DirectoryRoom,
    FrameError,
    Id,
    Message,
    Password,
    Reaction,
    Room,
    RoomName,
    RoomSummary,
    User,
    Username,
    _surrogate_field,
    check_fields,
)

# -- HTTP bodies -----------------------------------------------------------


class SignUp(Struct):
    username: Username
    password: Password


class LogIn(Struct):
    # Log-in checks no format, so that a wrong guess costs the same as a right one.
    username: Annotated[str, Meta(max_length=256)]
    password: Annotated[str, Meta(max_length=256)]


class NewBot(Struct):
    username: Username


class NewRoom(Struct):
    name: RoomName
    private: bool = False


class AddMember(Struct):
    username: Annotated[str, Meta(min_length=1, max_length=256)]


class NewDm(Struct):
    username: Annotated[str, Meta(min_length=1, max_length=256)]


class NewMessage(Struct):
    body: Body
    client_id: ClientId | None = None
    thread: Id | None = None


Role = typing.Literal["owner", "moderator", "member"]
# Limits of the contract's moderation bodies.
MAX_TOPIC_CHARS = 500
MAX_SLOW_MODE = 21600
MAX_MUTE_SECONDS = 2592000
Topic = Annotated[str, Meta(max_length=MAX_TOPIC_CHARS)]
# Usernames in moderation bodies: any text up to 256, so that an unknown one is 404.
Target = Annotated[str, Meta(min_length=1, max_length=256)]


class RoomPatch(Struct, forbid_unknown_fields=True):
    """PATCH /api/rooms/{id}: only the fields given change."""

    name: RoomName | None = None
    topic: Topic | None = None
    slow_mode: Annotated[int, Meta(ge=0, le=MAX_SLOW_MODE)] | None = None


class RoleChange(Struct):
    role: typing.Literal["moderator", "member"]


class NewMute(Struct):
    username: Target
    seconds: Annotated[int, Meta(ge=1, le=MAX_MUTE_SECONDS)]


class NewBan(Struct):
    username: Target
    reason: Annotated[str, Meta(max_length=500)] = ""


class Member(Struct):
    user: User
    role: str


class Ban(Struct):
    user: User
    by: User
    reason: str
    ts: str


class AuditEntry(Struct):
    id: int
    ts: str
    actor: User
    action: str
    target: User | None
    detail: dict[str, Any]


class DirectoryOut(Struct):
    rooms: list[DirectoryRoom]


class MembersOut(Struct):
    members: list[Member]


class MemberOut(Struct):
    member: Member


class BansOut(Struct):
    bans: list[Ban]


class AuditOut(Struct):
    entries: list[AuditEntry]


class UserOut(Struct):
    user: User


class SessionOut(Struct):
    token: str
    user: User


class RoomOut(Struct):
    room: Room


class RoomsOut(Struct):
    rooms: list[RoomSummary]


class MessageOut(Struct):
    message: Message


class MessagesOut(Struct):
    messages: list[Message]


class ReactionsOut(Struct):
    reactions: list[Reaction]


class ThreadItem(Struct):
    room: int
    root: Message
    unread: int


class ThreadsOut(Struct):
    threads: list[ThreadItem]


class PresenceOut(Struct):
    online: list[User]


class UsersOut(Struct):
    users: list[User]


class ErrorBody(Struct):
    code: str
    message: str


class ErrorOut(Struct):
    error: ErrorBody


def decode_body(data: bytes, type_: type[Any]) -> Any:
    """Decode an HTTP body into `type_`; `FrameError` names the field at fault."""
    try:
        value = msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise FrameError(str(exc).replace("`$.", "`").replace("`$`", "the body")) from None
    except msgspec.DecodeError:
        # Only JSON that `is_json` let through gets here: a string with a lone surrogate.
        raise FrameError(_surrogate_field(data, "the body")) from None
    return check_fields(value)


# -- Outgoing webhooks (issue 15) ------------------------------------------


class WebhookIn(Struct):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]


class Webhook(Struct):
    url: str
    secret: str


class WebhookOut(Struct):
    webhook: Webhook


class Delivery(Struct):
    id: int
    room: int
    message_id: int
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None


class DeliveriesOut(Struct):
    deliveries: list[Delivery]


class WebhookEvent(Struct):
    """The body POSTed to a bot's webhook for a message."""

    event: str
    delivery: int
    bot: User
    room: Room
    message: Message


class WebhookAnswer(Struct):
    """What a webhook may answer: a reply the bot then sends to the room."""

    reply: str | None = None
