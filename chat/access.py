"""Who may do what in a room: the rules in one place, for HTTP and WebSocket alike.

Each rule takes what the store read (`Access`: the room's kind and creator,
and whether the user is a member) and either returns or raises the
contract's error. Handlers never decide these themselves.
"""

from __future__ import annotations

from .errors import ChatError, forbidden, not_found
from .store import Access, Store


async def room_access(store: Store, room: int, user: int) -> Access:
    """What `user` may do in `room`; `not_found` if there is no such room."""
    access = await store.access(room, user)
    if access is None:
        raise not_found("no such room")
    return access


async def require_member(store: Store, room: int, user: int) -> Access:
    """Reading or writing a room needs membership: `forbidden` otherwise."""
    access = await room_access(store, room, user)
    if not access.member:
        raise forbidden()
    return access


def check_join(access: Access) -> bool:
    """Whether joining makes the user a member (a public room); `forbidden` for a private one."""
    if access.member:
        return False
    if access.private:
        raise forbidden("this room is private: a member must add you")
    return True


def check_add(access: Access) -> None:
    """A member adds someone, except to a DM: it is the pair's room."""
    if access.dm:
        raise forbidden("a direct message is for its two people: make a room to add others")


def check_remove(access: Access, actor: int, target: int) -> None:
    """A member removes themself, or anyone if they created the room (not in a DM:
    a DM has no moderation, so whoever opened it has no power over the other)."""
    if target == actor:
        return
    if access.dm:
        raise forbidden("nobody removes the other person of a direct message")
    if access.created_by != actor:
        raise forbidden("only the room's creator removes someone else")


async def refuse(store: Store, room: int, user: int) -> ChatError:
    """Why a write that stored nothing was refused: the room is unknown, or not theirs."""
    try:
        await require_member(store, room, user)
    except ChatError as exc:
        return exc
    return forbidden()


def check_edit(actor: int, sender: int) -> None:
    """Only the sender edits a message."""
    if actor != sender:
        raise forbidden("only the sender edits a message")


def check_delete(access: Access, actor: int, sender: int) -> None:
    """The sender deletes a message, or the room's creator (not in a DM: no moderation there)."""
    if actor == sender:
        return
    if access.dm:
        raise forbidden("in a direct message only the sender deletes a message")
    if access.created_by != actor:
        raise forbidden("only the sender or the room's creator deletes a message")
