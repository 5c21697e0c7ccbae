"""Mentions: the contract's `@name` rule, applied to a body; no I/O.

A name is the longest run of username characters (ASCII letters, digits,
`_ . -`) after an `@`, less any trailing `.`, `-` or `_`; the `@` starts the
body or follows a character that is not a letter, digit or `_`, so an e-mail
address mentions nobody. `@room` (any case) mentions every member. The names
found here are resolved to members by the statement that stores the message
(`sql/queries/messages.sql`), in the same snapshot as the membership check.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Names nobody may register: they mean (or may one day mean) a group.
RESERVED = frozenset({"room", "here", "everyone"})

_RUN = re.compile(r"@([A-Za-z0-9_.\-]+)")
# No username is longer, so a longer name mentions nobody.
_MAX_NAME = 32


class Found(NamedTuple):
    """What a body mentions: lower-cased names (first appearance first) and @room."""

    names: tuple[str, ...]
    room: bool

    @property
    def joined(self) -> str | None:
        """The names as the SQL takes them: space-separated, or None for none."""
        return " ".join(self.names) if self.names else None


NOTHING = Found((), False)


def find(body: str) -> Found:
    """The mentions of a body, by the contract's rule."""
    if "@" not in body:
        return NOTHING  # the common case costs one scan
    names: list[str] = []
    seen: set[str] = set()
    room = False
    for match in _RUN.finditer(body):
        start = match.start()
        if start > 0:
            before = body[start - 1]
            if before.isalnum() or before == "_":
                continue
        name = match.group(1).rstrip(".-_").lower()
        if not name or len(name) > _MAX_NAME:
            continue
        if name == "room":
            room = True
        elif name not in seen:
            seen.add(name)
            names.append(name)
    return Found(tuple(names), room)


def reserved(username: str) -> bool:
    """Whether a username is one of the group words no account may take."""
    return username.lower() in RESERVED
