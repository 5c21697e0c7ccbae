"""Reactions: adding and removing an emoji on a message, for WebSocket and HTTP alike.

The store changes one reaction under the message's row lock and writes the
contract's aggregate onto the message, so a history read costs nothing more
and two processes reacting to one message at once end with the right counts.
After every change the room's joined connections get the whole new list.
"""

from __future__ import annotations

import unicodedata

from . import access
from .errors import invalid
from .fanout import Fanout
from .protocol import (
    MAX_ID,
    FrameError,
    Kind,
    Reaction,
    ReactionsFrame,
    User,
    check_text,
    encode_text,
)
from .store import Store

MAX_EMOJI_CHARS = 16


def check_emoji(emoji: str) -> str:
    """1-16 code points, no white space or control characters ("👍", "+1", ":ship:")."""
    try:
        check_text(emoji, "emoji")  # no NUL, no lone surrogate, as every string
    except FrameError as exc:
        raise invalid(str(exc)) from None
    if not 1 <= len(emoji) <= MAX_EMOJI_CHARS:
        raise invalid(f"an emoji is 1-{MAX_EMOJI_CHARS} characters")
    for char in emoji:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Zs", "Zl", "Zp"):
            raise invalid("an emoji has no white space or control characters")
    return emoji


class Reactions:
    """The reaction use cases."""

    def __init__(self, store: Store, fanout: Fanout) -> None:
        self.store = store
        self.fanout = fanout

    async def change(
        self, user: User, room: int, message: int, emoji: str, *, add: bool
    ) -> list[Reaction]:
        """Add (or remove) `user`'s `emoji` on a message; the message's whole new list.

        Reacting twice, or removing a reaction one does not have, changes nothing and
        sends nothing.
        """
        check_emoji(emoji)
        if message > MAX_ID:
            raise invalid("no such message id")
        await access.require_member(self.store, room, user.id)
        seq, reactions, changed = await self.store.react(room, message, user.id, emoji, add)
        if changed:
            frame = ReactionsFrame(room=room, id=message, seq=seq, reactions=reactions)
            await self.fanout.broadcast(room, Kind.FRAME, encode_text(frame))
        return reactions
