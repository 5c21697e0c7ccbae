"""The values every wire type shares: ids, users, messages, rooms, and the text rules.

Part of `chat.protocol`: no I/O here, and nothing else of `chat` is imported.
"""

from __future__ import annotations

import datetime as dt
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


# -- Shared value types ----------------------------------------------------


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
