"""Bot tokens: the owner rotates them (a new token, the old ones end) or revokes them all.

Ending a token here only changes PostgreSQL; the node closes the ended tokens'
sockets on every process, as it does for a log-out. A bot's tokens are its only
way in (it has no password), so rotation hands out the new one in the same
statement that ends the old ones.
"""

from __future__ import annotations

from .accounts import new_token
from .errors import forbidden, not_found
from .protocol import User
from .store import Store


class BotTokens:
    """The owner's control of a bot's tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def replace(
        self, owner: User, username: str, *, rotate: bool
    ) -> tuple[str | None, User, list[bytes]]:
        """End every token of the bot; with `rotate`, start a new one.

        Returns the new token (None when revoking), the bot, and the ended tokens'
        hashes. 404 for an unknown bot (a person's name included), 403 for anyone
        but the owner (the bot itself too).
        """
        found = await self.store.bot_by_username(username)
        if found is None:
            raise not_found(f"no bot named {username!r}")
        bot, owner_id = found
        if owner_id != owner.id:
            raise forbidden("only the bot's owner manages its tokens")
        token, token_hash = new_token() if rotate else (None, None)
        ended = await self.store.replace_sessions(bot.id, token_hash)
        return token, bot, ended
