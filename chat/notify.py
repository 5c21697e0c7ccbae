"""The personal stream: frames for every socket of a user, on any process.

Each user has a channel, `PREFIX:user:ID`. A process subscribes it while it
holds at least one socket of that user (the hub's per-user count: the first
attach subscribes, the last detach unsubscribes), so a publication reaches
exactly the processes that must deliver it, and a message costs one
publication per user it concerns: a mention costs one, `@room` one per
member. Frames on it (`notify`, `room_added`) go to every socket of the user,
joined to the room or not. Like presence they are live only: a process whose
broker link dropped has missed them, and clients read `GET /api/rooms` and
`/api/threads` after a reconnect.

`Notifier` decides who is told about a stored message, with the contract's
reasons in its order: `mention`, `room`, `dm`, `reply`, one frame per user.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .broker import Broker
from .errors import ChatError
from .fanout import Fanout
from .hub import Hub
from .protocol import Kind, Message, NotifyFrame, Room, RoomAddedFrame, encode_text
from .store import Store

log = logging.getLogger("chat.notify")

# Rooms whose kind (DM or not) this process remembers; a room's kind never changes.
PAIR_CACHE = 100_000


class Personal:
    """Per-user channels: subscribed while a user has a socket here, published to by anyone."""

    def __init__(self, hub: Hub, broker: Broker, fanout: Fanout) -> None:
        self.hub = hub
        self.broker = broker
        # Publishes with this process's origin, so that it skips its own frames.
        self.fanout = fanout

    def channel(self, user: int) -> str:
        return f"{self.fanout.prefix}:user:{user}"

    async def attached(self, user: int) -> None:
        """A socket of `user` was attached: the first one here subscribes their channel."""
        if self.hub.per_user.get(user) == 1:
            await self.broker.subscribe(self.channel(user))

    async def detached(self, user: int) -> None:
        """A socket of `user` went: after the last one here, their channel is let go."""
        if user not in self.hub.per_user:
            try:
                await self.broker.unsubscribe(self.channel(user))
            except Exception:  # the link is down: its reconnect subscribes only what is wanted
                log.debug("unsubscribe failed", extra={"user": user})

    def local(self, user: int, text: str) -> None:
        """A personal frame to this process's sockets of `user`."""
        for conn in self.hub.sockets_of(user):
            conn.push(text)

    async def send(self, users: Iterable[int], text: str) -> None:
        """A frame, encoded once, to every socket of each user, here and on every process."""
        for user in users:
            self.local(user, text)
            await self.fanout.publish(self.channel(user), Kind.PERSONAL, text)

    async def room_added(self, rooms: dict[int, Room]) -> None:
        """`room_added` for users who just became members: {user: the room as they see it}."""
        for user, room in rooms.items():
            await self.send([user], encode_text(RoomAddedFrame(room=room)))


class Notifier:
    """Who a stored message concerns, and the `notify` frames that tell them."""

    def __init__(self, store: Store, personal: Personal) -> None:
        self.store = store
        self.personal = personal
        # Room id -> its DM pair (None: not a DM). Read once per room and process.
        self._pairs: dict[int, tuple[int, int] | None] = {}

    async def _pair(self, room: int) -> tuple[int, int] | None:
        if room in self._pairs:
            return self._pairs[room]
        pair = await self.store.room_pair(room)
        if len(self._pairs) >= PAIR_CACHE:
            self._pairs.clear()
        self._pairs[room] = pair
        return pair

    async def stored(self, message: Message) -> None:
        """Tell everyone a just-stored message concerns. Live only: a failure to read who
        is concerned (PostgreSQL away) loses the frames, never the stored message."""
        try:
            await self._stored(message)
        except ChatError as exc:
            log.warning("notify skipped", extra={"room": message.room, "error": exc.code})

    async def _stored(self, message: Message) -> None:
        sender = message.sender.id
        room = message.room
        told: dict[int, str] = {}
        for user in message.mentions:
            told.setdefault(user, "mention")
        if message.mention_room:
            for user in await self.store.room_member_ids(room):
                told.setdefault(user, "room")
        pair = await self._pair(room)
        if pair is not None:
            for user in pair:
                told.setdefault(user, "dm")
        if message.thread is not None:
            for user in await self.store.thread_followers(message.thread):
                told.setdefault(user, "reply")
        told.pop(sender, None)
        if not told:
            return
        by_reason: dict[str, list[int]] = {}
        for user, reason in told.items():
            by_reason.setdefault(reason, []).append(user)
        for reason, users in by_reason.items():
            text = encode_text(NotifyFrame(reason=reason, room=room, message=message))
            await self.personal.send(users, text)
