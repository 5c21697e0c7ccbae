"""WebSocket frames: the client's, decoded by one tagged-union decoder, and the server's.

Part of `chat.protocol`: no I/O here, and nothing else of `chat` is imported.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, field

from .types import (
    Body,
    ClientId,
    Emoji,
    FrameError,
    Id,
    Message,
    Reaction,
    Ref,
    Room,
    Seq,
    User,
    _is_utf8,
    _lenient_json,
    _surrogate_field,
    check_fields,
    is_json,
)

# -- Client frames (WebSocket) ---------------------------------------------


# A token of up to 4,096 characters: the server's own are 43, an RS256 JWT is ~650.
Token = Annotated[str, Meta(max_length=4096)]


class Hello(Struct, tag="hello", tag_field="type"):
    token: Token
    # Like every client frame: a second `hello` is refused with this ref.
    ref: Ref = None


class Join(Struct, tag="join", tag_field="type"):
    room: Id
    ref: Ref = None
    since: Seq | None = None


class Leave(Struct, tag="leave", tag_field="type"):
    room: Id
    ref: Ref = None


class Send(Struct, tag="send", tag_field="type"):
    room: Id
    body: Body
    ref: Ref = None
    client_id: ClientId | None = None
    # A reply: the root's id (or a reply's, which belongs to the same root).
    thread: Id | None = None


class Edit(Struct, tag="edit", tag_field="type"):
    room: Id
    id: Id
    body: Body
    ref: Ref = None


class Delete(Struct, tag="delete", tag_field="type"):
    room: Id
    id: Id
    ref: Ref = None


class Typing(Struct, tag="typing", tag_field="type"):
    room: Id
    ref: Ref = None


class Read(Struct, tag="read", tag_field="type"):
    room: Id
    seq: Seq
    ref: Ref = None
    # Moves the read position of this thread instead of the room's.
    thread: Id | None = None


class React(Struct, tag="react", tag_field="type"):
    room: Id
    id: Id
    emoji: Emoji
    ref: Ref = None


class Unreact(Struct, tag="unreact", tag_field="type"):
    room: Id
    id: Id
    emoji: Emoji
    ref: Ref = None


class Ping(Struct, tag="ping", tag_field="type"):
    ref: Ref = None


class Refresh(Struct, tag="refresh", tag_field="type"):
    """A fresh JWT of the same user for a socket opened with a JWT, before the old one expires."""

    token: Token
    ref: Ref = None


ClientFrame = (
    Hello | Join | Leave | Send | Edit | Delete | Typing | Read | React | Unreact | Ping | Refresh
)

_CLIENT_TYPES = (
    "hello",
    "join",
    "leave",
    "send",
    "edit",
    "delete",
    "typing",
    "read",
    "react",
    "unreact",
    "ping",
    "refresh",
)


class _Envelope(Struct):
    """Just enough of a frame to answer it: its type and ref."""

    type: Any = None
    ref: Any = None


_frame_decoder = msgspec.json.Decoder(ClientFrame)
_envelope_decoder = msgspec.json.Decoder(_Envelope)


def peek_ref(data: str | bytes) -> int | str | None:
    """The `ref` of a frame that failed to decode, when it has a usable one."""
    try:
        ref = _envelope_decoder.decode(data).ref
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec refuses the whole frame for a lone surrogate in any string: the
        # standard library still finds the ref, so that the error answers it.
        try:
            frame = _lenient_json(data)
        except (ValueError, RecursionError):
            return None
        ref = frame.get("ref") if isinstance(frame, dict) else None
        if isinstance(ref, str) and not _is_utf8(ref):
            return None
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int) and abs(ref) <= 2**53:
        return ref
    if isinstance(ref, str) and len(ref) <= 128:
        return ref
    return None


def decode_frame(data: str | bytes) -> ClientFrame:
    """Decode one client frame, or raise `FrameError` saying what is wrong."""
    try:
        frame: ClientFrame = _frame_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise FrameError(_explain(str(exc), data)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # JSON with a lone surrogate escape in a string is refused by name, as over HTTP.
        if is_json(data):
            raise FrameError(_surrogate_field(data, "the frame")) from None
        raise FrameError("the frame is not a JSON object") from None
    return check_fields(frame)


def _explain(message: str, data: str | bytes) -> str:
    # msgspec says "Expected `object`, got `array`" or "Invalid value 'x' - at `$.type`";
    # name the missing or unknown type plainly, keep the field path for the rest.
    if "`$.type`" in message or "Object missing required field `type`" in message:
        try:
            kind = _envelope_decoder.decode(data).type
        except (msgspec.DecodeError, UnicodeDecodeError):
            kind = None
        if kind is None:
            return "the frame has no `type`"
        return f"unknown frame type {kind!r}; expected one of {', '.join(_CLIENT_TYPES)}"
    field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else None
    if field and "matching regex '^[1-9]" in message:
        return f"`{field}` must be an id (a positive integer)"
    return message.replace("`$.", "`").replace("`$`", "the frame")


# -- Server frames (WebSocket) ---------------------------------------------


class Welcome(Struct, tag="welcome", tag_field="type"):
    user: User
    heartbeat: float


class OkJoin(Struct, tag="ok", tag_field="type"):
    ref: Ref
    room: int
    seq: int
    truncated: bool = False


class OkMessage(Struct, tag="ok", tag_field="type"):
    ref: Ref
    message: Message


class Ok(Struct, tag="ok", tag_field="type"):
    ref: Ref


class Pong(Struct, tag="pong", tag_field="type"):
    ref: Ref


class ErrorFrame(Struct, tag="error", tag_field="type"):
    ref: Ref
    code: str
    message: str


class MessageFrame(Struct, tag="message", tag_field="type"):
    room: int
    message: Message


class EditedFrame(Struct, tag="edited", tag_field="type"):
    room: int
    message: Message


class DeletedFrame(Struct, tag="deleted", tag_field="type"):
    room: int
    id: int
    seq: int


class TypingFrame(Struct, tag="typing", tag_field="type"):
    room: int
    user: User


class PresenceFrame(Struct, tag="presence", tag_field="type"):
    room: int
    online: list[User]


class PresenceDiffFrame(Struct, tag="presence_diff", tag_field="type"):
    room: int
    joins: list[User] = field(default_factory=list)
    leaves: list[User] = field(default_factory=list)


class RemovedFrame(Struct, tag="removed", tag_field="type"):
    """Sent when the connection's user was removed from a room it had joined."""

    room: int


class ReactionsFrame(Struct, tag="reactions", tag_field="type"):
    """A message's whole new list of reactions, after every change."""

    room: int
    id: int
    seq: int
    reactions: list[Reaction]


class NotifyFrame(Struct, tag="notify", tag_field="type"):
    """To every socket of a user: a message that concerns them (`mention`, `room`, `dm`,
    `reply`), whether or not the socket joined the room."""

    reason: str
    room: int
    message: Message


class RoomAddedFrame(Struct, tag="room_added", tag_field="type"):
    """To every socket of a user who just became a member of a room."""

    room: Room


class RoomUpdatedFrame(Struct, tag="room_updated", tag_field="type"):
    """A room's name, topic or slow mode changed."""

    room: Room


_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def encode_text(obj: Any) -> str:
    """Encode a frame once as the text that every recipient is sent."""
    return _encoder.encode(obj).decode()
