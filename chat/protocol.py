"""The wire format: msgspec types for every frame and HTTP body, and their codecs.

No I/O here and nothing else of `chat` is imported, so the whole protocol can be
tested with plain bytes. Client frames are one tagged union decoded by one
`Decoder`; a frame that does not decode raises `FrameError` naming the field.
New fields get defaults, so older clients keep working.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import typing
import unicodedata
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, field

# PostgreSQL's bigint: the largest id there can be.
MAX_ID = 2**63 - 1
# Ids are integers on the wire; a client may echo them back as digit strings. A
# 19-digit string can still exceed MAX_ID: `check_fields` refuses those.
Id = Annotated[int, Meta(ge=1, le=MAX_ID)] | Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,18}\Z")]
Ref = Annotated[int, Meta(ge=-(2**53), le=2**53)] | Annotated[str, Meta(max_length=128)] | None
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
ClientId = Annotated[str, Meta(min_length=1, max_length=64)]
# `\Z`, not `$`: in Python `$` also matches before a trailing newline.
Username = Annotated[str, Meta(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+\Z")]
Password = Annotated[str, Meta(min_length=8, max_length=256)]
# Bodies and room names are checked further by `check_fields` (not blank, no NUL).
Body = Annotated[str, Meta(min_length=1, max_length=4000)]
# 1-16 code points; `reactions.check_emoji` refuses white space and control characters.
Emoji = Annotated[str, Meta(min_length=1, max_length=16)]
RoomName = Annotated[str, Meta(min_length=1, max_length=100)]

MAX_BODY_CHARS = 4000

_T = typing.TypeVar("_T")


class FrameError(Exception):
    """A frame or body that does not decode; the message names the field."""


# ---------------------------------------------------------------------------
# Shared value types


class User(Struct, frozen=True):
    id: int
    username: str
    bot: bool = False


class Reaction(Struct):
    """One emoji on a message: how many reacted with it and the first 50 who did."""

    emoji: str
    count: int
    users: list[int]


class Message(Struct):
    id: int
    room: int
    seq: int
    sender: User
    body: str | None
    client_id: str | None
    ts: str
    edited_at: str | None = None
    deleted: bool = False
    # Part 2 (threads, reactions, mentions): defaults, so that older clients keep working.
    # The root's id for a reply, else None.
    thread: int | None = None
    # On a root: its replies so far and when the newest came.
    reply_count: int = 0
    last_reply_at: str | None = None
    reactions: list[Reaction] = field(default_factory=list)
    # The members mentioned by @name, in order of first appearance.
    mentions: list[int] = field(default_factory=list)
    mention_room: bool = False


class Room(Struct):
    id: int
    name: str
    private: bool
    created_by: User
    # The other person of a DM as the caller sees it; None for every other room.
    # Set by the server from the pair's key, so that no client guesses DMs from names.
    dm: User | None = None
    # Set by the owner and moderators (PATCH /api/rooms/{id}).
    topic: str = ""
    # Seconds a `member` waits between two messages of the room; 0 is off.
    slow_mode: int = 0


class RoomSummary(Struct):
    id: int
    name: str
    private: bool
    created_by: User
    last_seq: int
    unread: int
    dm: User | None = None
    topic: str = ""
    slow_mode: int = 0
    # The caller's role in the room: owner, moderator or member.
    role: str = "member"
    # Unread messages by others that mention the caller or @room.
    mentions: int = 0


class DirectoryRoom(Room):
    """A room of the directory: public, with its size (what it is ordered by)."""

    member_count: int = 0


def iso(ts: dt.datetime) -> str:
    """`2026-11-26T10:00:00.123Z`: ISO 8601 in UTC with milliseconds."""
    ts = ts.astimezone(dt.UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


# Default_Ignorable_Code_Point beyond category Cf (Unicode's DerivedCoreProperties):
# combining grapheme joiner, Hangul fillers, Khmer inherent vowels, variation
# selectors, and the reserved and tag planes. Each draws nothing on its own.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)


def _invisible(char: str) -> bool:
    if char.isspace() or unicodedata.category(char) == "Cf":
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in _IGNORABLE_RANGES)


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing, so that a body or room name made of it is refused.

    Blank is empty, or only white space, format characters (category Cf: zero-width
    space, joiners, BOM, soft hyphen) and the other default-ignorable code points
    (Hangul fillers, variation selectors): "\u200b" is blank, "a\u200bb" is not.
    """
    return all(_invisible(char) for char in text)


def check_text(text: str, name: str) -> str:
    """The rules of every string a client sends, in any field of any frame or body."""
    # PostgreSQL text cannot hold NUL, and no name, id, ref or body needs one.
    if "\x00" in text:
        raise FrameError(f"`{name}` must not contain a NUL character")
    if not _is_utf8(text):
        raise FrameError(f"`{name}` must not contain a lone surrogate")
    return text


def check_body(body: str, name: str = "body") -> str:
    """The rules of a message body (or room name) beyond the length bound msgspec checks."""
    if len(body) > MAX_BODY_CHARS:
        raise FrameError(f"`{name}` must be at most {MAX_BODY_CHARS} characters")
    if is_blank(body):
        # Zero-width and other invisible characters count as white space here.
        raise FrameError(f"`{name}` must not be empty or only white space")
    return check_text(body, name)


def as_id(value: int | str) -> int:
    """An id as an integer; `check_fields` made sure that it fits in a bigint."""
    return value if isinstance(value, int) else int(value)


def check_fields(value: _T) -> _T:
    """Every rule msgspec cannot express, for every field of a decoded frame or body.

    WebSocket frames and HTTP bodies both pass here, so that no path can hand a
    value to PostgreSQL that it refuses (one such value in a group commit would
    fail the batch): every string field gets `check_text`, every id field the
    bigint bound, every body and room name the not-blank rule.
    """
    fields = _checked_fields(type(value))
    for name in fields.strings:
        item = getattr(value, name)
        if isinstance(item, str):
            check_text(item, name)
    for name in fields.ids:
        item = getattr(value, name)
        if isinstance(item, str) and int(item) > MAX_ID:
            raise FrameError(f"`{name}` must be an id (a positive integer up to {MAX_ID})")
    for name in fields.texts:
        check_body(getattr(value, name), name)
    return value


class _Fields(typing.NamedTuple):
    """The fields of one Struct type that `check_fields` looks at."""

    strings: tuple[str, ...]
    ids: tuple[str, ...]
    texts: tuple[str, ...]


_fields_cache: dict[type, _Fields] = {}


def _checked_fields(cls: type) -> _Fields:
    # Found from the annotations once per type, so that a new `Id`, `Body` or
    # `RoomName` field is checked without being listed anywhere.
    fields = _fields_cache.get(cls)
    if fields is None:
        names: tuple[str, ...] = getattr(cls, "__struct_fields__", ())
        hints = typing.get_type_hints(cls, include_extras=True) if names else {}
        fields = _Fields(
            strings=names,
            ids=tuple(n for n in names if hints[n] in (Id, Id | None)),
            texts=tuple(n for n in names if hints[n] in (Body, RoomName)),
        )
        _fields_cache[cls] = fields
    return fields


# ---------------------------------------------------------------------------
# Client frames (WebSocket)


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


# ---------------------------------------------------------------------------
# Server frames (WebSocket)


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


# ---------------------------------------------------------------------------
# Between processes (the broker's payloads)


class Kind(enum.Enum):
    """What a publication carries."""

    MESSAGE = "m"  # a stored message's frame, with its seq: ordered by delivery.py
    FRAME = "f"  # a room frame without a seq (edited, deleted): to every joined connection
    EPHEMERAL = "e"  # typing, presence_diff: shed first from a full queue
    REMOVED = "r"  # `target` (a user id) was removed from the room
    LOGOUT = "k"  # `target` (a token hash, hex) was revoked: close its sockets
    PERSONAL = "p"  # a frame for every socket of the user whose channel carries it


class Envelope(Struct, array_like=True, omit_defaults=True):
    """One publication. `frame` is the client frame's JSON, encoded once by the process
    that made it and carried as-is (msgspec embeds and slices `Raw` without parsing)."""

    kind: Kind
    # The publishing process: a process skips its own publications.
    origin: str
    frame: msgspec.Raw = msgspec.Raw(b"0")
    seq: int = 0
    target: str = ""


_envelope_encoder = msgspec.json.Encoder()
_envelope_wire_decoder = msgspec.json.Decoder(Envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _envelope_encoder.encode(envelope)


def decode_envelope(payload: bytes) -> Envelope:
    """Decode a publication; `msgspec.DecodeError` if another process sent garbage."""
    return _envelope_wire_decoder.decode(payload)


# ---------------------------------------------------------------------------
# HTTP bodies


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _lenient_json(data: str | bytes) -> Any:
    """Parse with the standard library, which (unlike msgspec) keeps lone surrogates."""
    text = data if isinstance(data, str) else data.decode("utf-8")
    return json.loads(text, parse_constant=_reject_constant)


def _surrogate_field(data: str | bytes, what: str) -> str:
    try:
        value = _lenient_json(data)
    except (ValueError, RecursionError):
        return f"{what} is not valid JSON"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and not _is_utf8(item):
                return f"`{key}` must not contain a lone surrogate"
    return f"{what} must not contain a lone surrogate"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_json(data: str | bytes) -> bool:
    """Whether `data` parses as JSON at all (400 if not, 422 if it has the wrong shape)."""
    try:
        msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec refuses `"\ud800"`, a lone surrogate escape, which the JSON grammar
        # allows: such a body is JSON with a bad string (422), not garbage (400).
        try:
            _lenient_json(data)
        except (ValueError, RecursionError):
            return False
    return True


# ---------------------------------------------------------------------------
# Outgoing webhooks (issue 15)


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
