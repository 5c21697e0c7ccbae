"""Messages: send, edit, delete, read positions, typing and history.

The same use cases serve the WebSocket frames and the HTTP routes. A send
returns only once its message is durably stored; the store groups concurrent
sends into one commit. Live frames go through `fanout.py`.
"""

from __future__ import annotations

import time

from . import access, mentions, metrics
from .budgets import Budgets
from .config import Settings
from .errors import ChatError, forbidden, not_found
from .fanout import Fanout
from .groupcommit import GroupCommit
from .hub import Connection
from .notify import Notifier
from .protocol import (
    DeletedFrame,
    EditedFrame,
    Kind,
    Message,
    MessageFrame,
    TypingFrame,
    User,
    encode_text,
)
from .store import Draft, Store
from .threads import resolve_root


class Messages:
    """The message use cases of every room."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fanout: Fanout,
        budgets: Budgets,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        # Tells the people a stored message concerns (mentions, @room, DMs, followed threads).
        self.notifier = notifier
        # Per-user budgets: an HTTP post spends the same one as a WebSocket send.
        self.budgets = budgets
        self.store = store
        self.fanout = fanout
        # Concurrent sends share commits.
        self.commits = GroupCommit(store, settings)

    async def post(
        self,
        user: User,
        room: int,
        body: str,
        client_id: str | None,
        thread: int | None = None,
    ) -> Message:
        """`send` for the HTTP API: it spends the same per-user budget as the WebSocket."""
        if not self.budgets.of(user.id).sends.take():
            raise ChatError("rate_limited", "too many sends: slow down")
        return await self.send(user, room, body, client_id, thread)

    async def send(
        self,
        user: User,
        room: int,
        body: str,
        client_id: str | None,
        thread: int | None = None,
    ) -> Message:
        """Store a message and fan it out; returns it once it is durably stored."""
        root = None
        if thread is not None:
            # Checked before the group commit, so that a bad root never fails a batch.
            await access.require_member(self.store, room, user.id)
            root = await resolve_root(self.store, room, thread)
        found = mentions.find(body)
        draft = Draft(room, user, body, client_id, root, found.joined, found.room)
        result = await self.commits.insert(draft)
        if result is None:
            raise await access.refuse(self.store, room, user.id)
        message, created = result
        if created:
            metrics.MESSAGES_STORED.inc()
            text = encode_text(MessageFrame(room=room, message=message))
            await self.fanout.stored(room, message.seq, text)
            await self.notifier.stored(message)
        return message

    async def edit(self, user: User, room: int, message_id: int, body: str) -> Message:
        found = await access.require_member(self.store, room, user.id)
        sender, deleted = await self._target(room, message_id)
        if not deleted:
            access.check_edit(found, user.id, sender)
            # Mentions are found again; an edit sends no `notify`.
            parsed = mentions.find(body)
            message = await self.store.edit_message(
                room, message_id, body, parsed.joined, parsed.room
            )
        if deleted or message is None:  # a tombstone, or it became one meanwhile
            raise ChatError("conflict", "a deleted message cannot be edited")
        text = encode_text(EditedFrame(room=room, message=message))
        await self.fanout.broadcast(room, Kind.FRAME, text)
        return message

    async def delete(self, user: User, room: int, message_id: int) -> None:
        found = await access.require_member(self.store, room, user.id)
        sender, _ = await self._target(room, message_id)
        if access.check_delete(found, user.id, sender):
            # Someone else's message: a moderation act, audited with the delete.
            seq = await self.store.delete_message_by(room, user.id, message_id)
        else:
            seq = await self.store.delete_message(room, message_id)
        if seq is None:
            raise not_found("no such message in this room")
        text = encode_text(DeletedFrame(room=room, id=message_id, seq=seq))
        await self.fanout.broadcast(room, Kind.FRAME, text)

    async def _target(self, room: int, message_id: int) -> tuple[int, bool]:
        """(sender, deleted) of the message an edit or delete is about."""
        found = await self.store.message_author(room, message_id)
        if found is None:
            raise not_found("no such message in this room")
        return found

    async def read(self, user: User, room: int, seq: int) -> None:
        if await self.store.set_read(room, user.id, seq) is None:
            raise await access.refuse(self.store, room, user.id)

    async def typing(self, conn: Connection, room: int) -> None:
        now = time.monotonic()
        if now - conn.limits.last_typing < 1 / self.settings.typing_rate:
            return  # dropped silently, as the contract says
        conn.limits.last_typing = now
        if room not in conn.positions:
            raise forbidden("join the room before typing in it")
        text = encode_text(TypingFrame(room=room, user=conn.user))
        await self.fanout.broadcast(room, Kind.EPHEMERAL, text, exclude=conn.id)

    async def history(
        self, user: User, room: int, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        await access.require_member(self.store, room, user.id)
        if after is not None:
            messages = await self.store.messages_after(room, after, limit)
            if before is not None:
                messages = [m for m in messages if m.seq < before]
            return messages
        return await self.store.messages_before(
            room, before if before is not None else 2**62, limit
        )
