"""What the client's two halves share: its requests in flight, its rooms, the type aliases.

A part of `chat.client` (`core.py`, `link.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..protocol import (
    Delete,
    Edit,
    FrameError,
    Leave,
    React,
    Read,
    Refresh,
    Send,
    Unreact,
    check_body,
)

log = logging.getLogger("chat.client")

Kind = Literal["join", "leave", "send", "edit", "delete", "read", "react", "unreact", "refresh"]
Request = Send | Edit | Delete | Read | Leave | React | Unreact | Refresh
# Supplies a fresh JWT of the same user (from the bot's identity provider).
TokenSource = Callable[[], Awaitable[str]]

# Messages fetched per history request when a room's hole is filled.
FILL_PAGE = 200
# Largest frame accepted from the server; the server is trusted, so only a sanity bound.
MAX_FRAME = 64 * 1024 * 1024


class _Op:
    """A request waiting for its reply; sent again on each new connection until it gets one."""

    __slots__ = ("attempts", "frame", "future", "kind", "ref", "room", "sent_on")

    def __init__(
        self,
        ref: int,
        kind: Kind,
        room: int,
        frame: Request | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        # Unique for the client's life, so a reply is never taken for another request's.
        self.ref = ref
        self.kind = kind
        self.room = room
        # The frame to send; None for a join, whose `since` is taken when it is sent.
        self.frame = frame
        # Resolved with the reply's result; None for the client's own rejoins.
        self.future = future
        # The connection (its generation) it was last sent on; 0: not sent on this one.
        self.sent_on = 0
        # `unavailable` replies so far, for its backoff.
        self.attempts = 0


class _Room:
    """What the client knows of a joined room's message stream."""

    __slots__ = ("behind", "filler", "id", "seen", "wire")

    def __init__(self, room: int, since: int | None) -> None:
        self.id = room
        # The last seq accepted into the buffer; None until the first join's `ok`.
        self.seen = since
        # The highest seq seen on the wire, so a fill knows when it has caught up.
        self.wire = since or 0
        # A hole was found: live messages are dropped until the fill from history catches up.
        self.behind = False
        # The task filling the hole, while there is one.
        self.filler: asyncio.Task[None] | None = None


def _resolve(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def jwt_expiry(token: str) -> float | None:
    """The `exp` of a JWT (UNIX seconds), read without checking it; None for other tokens.

    The client only schedules its refresh by it: the server is the one that checks.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _check(body: str) -> str:
    # A body the server must refuse is refused here, before it is retried forever.
    try:
        return check_body(body)
    except FrameError as exc:
        raise ValueError(str(exc)) from None
