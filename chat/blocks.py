"""Blocks: whom a user no longer lets open a DM with them or put them into rooms.

A block is one-way and silent beyond the refusal itself: the blocked user gets
403 when they try either, and nothing else changes (rooms they already share
stay shared; the blocker leaves those if they want to). Rules that depend on a
block are checked by the node through `check`.
"""

from __future__ import annotations

from .errors import forbidden, invalid, not_found
from .protocol import User
from .store import Store


class Blocks:
    """Block, unblock, list, and the check the node applies before making someone a member."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _other(self, user: User, username: str) -> User:
        other = await self.store.user_by_username(username)
        if other is None:
            raise not_found(f"no user named {username!r}")
        if other.id == user.id:
            raise invalid("you cannot block yourself")
        return other

    async def block(self, user: User, username: str) -> None:
        """Idempotent: blocking someone twice is one block."""
        await self.store.block(user.id, (await self._other(user, username)).id)

    async def unblock(self, user: User, username: str) -> None:
        """Idempotent: unblocking someone who is not blocked changes nothing."""
        await self.store.unblock(user.id, (await self._other(user, username)).id)

    async def blocked(self, user: User) -> list[User]:
        return await self.store.blocked_users(user.id)

    async def check(self, actor: User, target: User) -> None:
        """403 if `target` blocked `actor`: then `actor` may not make them a member."""
        if await self.store.is_blocked(target.id, actor.id):
            raise forbidden(f"{target.username} does not accept that from you")
