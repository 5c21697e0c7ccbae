"""What the client reads off the wire: server frames as msgspec types, with no I/O.

Server frames are one tagged union decoded by one `Decoder`. The contract's
three shapes of `ok` (join, send/edit, the rest) share the tag, so the client
decodes them as one `Ack` with optional fields. A frame of a type this client
does not know decodes to `None`, so the server may add types. The backoff
delay lives here too, so both can be tested with plain data.
"""

from __future__ import annotations

import random

import msgspec
from msgspec import Struct

from ..protocol import (
    DeletedFrame,
    EditedFrame,
    ErrorFrame,
    Message,
    MessageFrame,
    NotifyFrame,
    Pong,
    PresenceDiffFrame,
    PresenceFrame,
    ReactionsFrame,
    RemovedFrame,
    RoomAddedFrame,
    RoomUpdatedFrame,
    TypingFrame,
    Welcome,
)

__all__ = [
    "Ack",
    "Event",
    "ServerFrame",
    "backoff_delay",
    "decode_server_frame",
]


class Ack(Struct, tag="ok", tag_field="type"):
    """Any `ok`: a join's carries `room`, `seq` and `truncated`; a send's or edit's `message`."""

    ref: int | str | None = None
    room: int | None = None
    seq: int | None = None
    truncated: bool = False
    message: Message | None = None


# What `async for event in client` yields.
Event = (
    MessageFrame
    | EditedFrame
    | DeletedFrame
    | TypingFrame
    | PresenceFrame
    | PresenceDiffFrame
    | RemovedFrame
    | RoomUpdatedFrame
    | ReactionsFrame
    | NotifyFrame
    | RoomAddedFrame
)

ServerFrame = Welcome | Ack | Pong | ErrorFrame | Event

_KNOWN = frozenset(
    {
        "welcome",
        "ok",
        "pong",
        "error",
        "message",
        "edited",
        "deleted",
        "typing",
        "presence",
        "presence_diff",
        "removed",
        "room_updated",
        "reactions",
        "notify",
        "room_added",
    }
)


class _Envelope(Struct):
    type: object = None


_decoder = msgspec.json.Decoder(ServerFrame)
_envelope = msgspec.json.Decoder(_Envelope)


class MalformedFrame(ValueError):
    """A frame of a known type that does not have the contract's shape."""


def decode_server_frame(data: str | bytes) -> ServerFrame | None:
    """Decode one server frame; `None` for a type this client does not know.

    Raises `MalformedFrame` for a frame that is not JSON or a known type with a
    wrong shape: the server broke the contract, which callers log and skip.
    """
    try:
        frame: ServerFrame = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        try:
            kind = _envelope.decode(data).type
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise MalformedFrame(f"not a JSON object: {exc}") from None
        if isinstance(kind, str) and kind not in _KNOWN:
            return None
        raise MalformedFrame(f"{kind!r} frame: {exc}") from None
    return frame


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)].

    `attempt` counts failures so far, from 0. Full jitter spreads a crowd of
    clients that lost the same server over the whole window, so they don't
    come back in one wave.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return (rng or random).uniform(0, ceiling)
