"""Between processes: the broker's typed publications, the frame carried as-is.

Part of `chat.protocol`: no I/O here, and nothing else of `chat` is imported.
"""

from __future__ import annotations

import enum

import msgspec
from msgspec import Struct

# -- Between processes (the broker's payloads) -----------------------------


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
