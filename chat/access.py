"""Who may do what in a room: one table of rules, used by HTTP and WebSocket alike.

`RULES` maps every `Action` to a `Rule`: which roles may take it (a non-member
counts as the role `outsider`), whether a muted member may, whether it exists
in a DM, and what a banned user or a private room means for it. `TARGETS` says
which roles may act on which (nobody acts on the owner; a moderator does not
remove another moderator; owner and moderators are never muted or banned).
Handlers read an `Access` from the store and call `check`; none decides these
themselves. tests/test_moderation.py walks the whole table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ChatError, forbidden, not_found
from .protocol import iso
from .store import Access, Store


class Action(enum.Enum):
    """Everything a user may try in a room."""

    READ = "read"  # history, presence, the member list, the read position
    JOIN = "join"
    SEND = "send"
    EDIT = "edit"  # one's own message
    DELETE_OWN = "delete_own"
    DELETE_ANY = "delete_any"  # someone else's message
    ADD = "add"
    LEAVE = "leave"  # removing oneself
    REMOVE = "remove"  # removing someone else
    UPDATE = "update"  # name, topic, slow mode
    SET_ROLE = "set_role"
    MUTE = "mute"  # and unmute
    BAN = "ban"  # and unban
    VIEW_BANS = "view_bans"
    VIEW_AUDIT = "view_audit"


OWNER, MODERATOR, MEMBER, OUTSIDER = "owner", "moderator", "member", "outsider"
MEMBERS = frozenset({OWNER, MODERATOR, MEMBER})
STAFF = frozenset({OWNER, MODERATOR})


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may take an action, and in which rooms."""

    # Roles that may (OUTSIDER: someone who is no member).
    roles: frozenset[str]
    # The refusal for everyone else.
    refusal: str
    # Whether a muted member still may.
    while_muted: bool = True
    # Whether it exists in a DM (a DM has no moderation).
    in_dm: bool = True
    # For outsiders: whether a private room or a ban stops them.
    public_only: bool = False
    # The refusal in a DM, for an action that does not exist there.
    dm_refusal: str = "a direct message has no moderation"


RULES: dict[Action, Rule] = {
    Action.READ: Rule(MEMBERS, "you are not a member of this room"),
    # A member's join is a no-op; an outsider joins a public room, unless banned.
    Action.JOIN: Rule(MEMBERS | {OUTSIDER}, "", public_only=True),
    Action.SEND: Rule(MEMBERS, "you are not a member of this room", while_muted=False),
    Action.EDIT: Rule(MEMBERS, "you are not a member of this room", while_muted=False),
    Action.DELETE_OWN: Rule(MEMBERS, "you are not a member of this room"),
    Action.DELETE_ANY: Rule(
        STAFF, "only the owner and moderators delete others' messages", in_dm=False
    ),
    Action.ADD: Rule(
        MEMBERS,
        "you are not a member of this room",
        in_dm=False,
        dm_refusal="a direct message is for its two people: make a room to add others",
    ),
    Action.LEAVE: Rule(MEMBERS, "you are not a member of this room"),
    Action.REMOVE: Rule(STAFF, "only the owner and moderators remove someone", in_dm=False),
    Action.UPDATE: Rule(STAFF, "only the owner and moderators change the room", in_dm=False),
    Action.SET_ROLE: Rule(frozenset({OWNER}), "only the owner sets roles", in_dm=False),
    Action.MUTE: Rule(STAFF, "only the owner and moderators mute", in_dm=False),
    Action.BAN: Rule(STAFF, "only the owner and moderators ban", in_dm=False),
    Action.VIEW_BANS: Rule(STAFF, "only the owner and moderators see the bans", in_dm=False),
    Action.VIEW_AUDIT: Rule(STAFF, "only the owner and moderators read the audit log", in_dm=False),
}

# For actions on another member: the target's role -> the actor roles that may.
# A role missing from an action's map may not be acted on at all (the owner).
TARGETS: dict[Action, dict[str, frozenset[str]]] = {
    Action.REMOVE: {MODERATOR: frozenset({OWNER}), MEMBER: STAFF},
    Action.MUTE: {MEMBER: STAFF},
    Action.BAN: {MEMBER: STAFF, OUTSIDER: STAFF},
    Action.SET_ROLE: {MODERATOR: frozenset({OWNER}), MEMBER: frozenset({OWNER})},
}


def role_of(access: Access) -> str:
    """The user's role, OUTSIDER for someone who is no member."""
    return access.role or MEMBER if access.member else OUTSIDER


def muted(access: Access) -> bool:
    return access.member and access.muted_until is not None


def check(access: Access, action: Action) -> None:
    """Return if the user may take `action` in the room, else raise the contract's error."""
    rule = RULES[action]
    role = role_of(access)
    if access.dm and not rule.in_dm:
        raise forbidden(rule.dm_refusal)
    if role == OUTSIDER and rule.public_only:
        if access.banned:
            raise forbidden("you are banned from this room")
        if access.private:
            raise forbidden("this room is private: a member must add you")
    if role not in rule.roles:
        raise forbidden(rule.refusal)
    if not rule.while_muted and muted(access):
        assert access.muted_until is not None
        raise forbidden(f"you are muted in this room until {iso(access.muted_until)}")


def allowed(access: Access, action: Action) -> bool:
    """`check` as a yes or no."""
    try:
        check(access, action)
    except ChatError:
        return False
    return True


def check_target(action: Action, actor: str, target: str) -> None:
    """Whether a user of role `actor` may take `action` on one of role `target`."""
    if target == OWNER:
        raise forbidden("nobody acts on the room's owner")
    may = TARGETS[action].get(target, frozenset())
    if actor not in may:
        if action in (Action.MUTE, Action.BAN):
            raise forbidden("the owner and moderators cannot be muted or banned")
        raise forbidden(f"a {actor} cannot do that to a {target}")


async def room_access(store: Store, room: int, user: int) -> Access:
    """What `user` may do in `room`; `not_found` if there is no such room."""
    access = await store.access(room, user)
    if access is None:
        raise not_found("no such room")
    return access


async def require(store: Store, room: int, user: int, action: Action) -> Access:
    """Read the user's access to the room and `check` the action; returns the access."""
    access = await room_access(store, room, user)
    check(access, action)
    return access


async def require_member(store: Store, room: int, user: int) -> Access:
    """Reading or writing a room needs membership: `forbidden` otherwise."""
    return await require(store, room, user, Action.READ)


def check_join(access: Access) -> bool:
    """Whether joining makes the user a member (a public room); `forbidden` for a
    private one or while banned."""
    check(access, Action.JOIN)
    return not access.member


def check_added(target: Access) -> None:
    """Whether someone may be added to the room (read as the target's access): never
    while banned from it."""
    if target.banned:
        raise forbidden("that user is banned from this room")


async def refuse(store: Store, room: int, user: int) -> ChatError:
    """Why a send that stored nothing was refused: no such room, not a member, muted
    (`forbidden`), or slow mode (`rate_limited`, with when to retry)."""
    try:
        access = await require(store, room, user, Action.SEND)
    except ChatError as exc:
        return exc
    if (
        access.slow_mode
        and role_of(access) == MEMBER
        and access.last_sent_at is not None
        and access.now is not None
    ):
        wait = access.slow_mode - (access.now - access.last_sent_at).total_seconds()
        if wait > 0:
            return ChatError(
                "rate_limited",
                f"slow mode: one message every {access.slow_mode} seconds",
                retry_after=wait,
            )
    # Muted or slow when the send ran, and no longer now; the send may be retried.
    return ChatError("rate_limited", "slow mode or a mute refused this message: retry")


def check_edit(access: Access, actor: int, sender: int) -> None:
    """Only the sender edits a message, and not while muted."""
    check(access, Action.EDIT)
    if actor != sender:
        raise forbidden("only the sender edits a message")


def check_delete(access: Access, actor: int, sender: int) -> bool:
    """The sender deletes their message; owner and moderators anyone's (not in a DM).
    Returns whether it is a moderation act (someone else's message)."""
    if actor == sender:
        check(access, Action.DELETE_OWN)
        return False
    check(access, Action.DELETE_ANY)
    return True


def check_remove(access: Access, actor: int, target: int, target_role: str) -> bool:
    """Oneself, or (owner and moderators) a member by TARGETS. Returns whether it is a
    moderation act (someone else)."""
    if target == actor:
        check(access, Action.LEAVE)
        return False
    check(access, Action.REMOVE)
    check_target(Action.REMOVE, role_of(access), target_role)
    return True
