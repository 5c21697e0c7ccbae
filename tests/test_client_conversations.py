"""The SDK's conversations: replies, reactions, thread and mention views, and the personal
stream as typed events, with clients on two processes."""

from __future__ import annotations

import asyncio

from chat.client import (
    ChatClient,
    NotifyFrame,
    Reaction,
    ReactionsFrame,
    RoomAddedFrame,
)
from chat.client.frames import Event

from .support import HANG, Api, ServerProcess


async def next_of(client: ChatClient, kind: type[Event]) -> Event:
    """The client's next event of `kind`, passing over the others (bounded by HANG)."""

    async def wait() -> Event:
        async for event in client:
            if isinstance(event, kind):
                return event
        raise AssertionError("the client stopped")

    return await asyncio.wait_for(wait(), HANG)


async def test_sdk_threads_reactions_mentions_and_personal_stream(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """ChatClient and HttpApi cover replies, reactions, threads, mentions; NotifyFrame and
    RoomAddedFrame arrive on a client that joined nothing."""
    a, b = servers
    async with ChatClient(a.url, str(alice.token)) as ca, ChatClient(b.url, str(bob.token)) as cb:
        room = await ca.api.create_room("sdk conversations")
        await ca.api.add_member(room.id, bob.username)
        added = await next_of(cb, RoomAddedFrame)
        assert isinstance(added, RoomAddedFrame) and added.room.id == room.id
        await ca.join(room.id)
        root = await ca.send(room.id, f"hello @{bob.username}")
        assert root.mentions == [bob.user["id"]]
        told = await next_of(cb, NotifyFrame)
        assert isinstance(told, NotifyFrame)
        assert (told.reason, told.message.id) == ("mention", root.id)
        reply = await cb.api.post(room.id, "a reply", thread=root.id)
        assert reply.thread == root.id
        told = await next_of(ca, NotifyFrame)
        assert isinstance(told, NotifyFrame) and told.reason == "reply"
        assert [m.id for m in await ca.api.history(room.id, thread=root.id)] == [reply.id]
        threads = await ca.api.threads()
        assert [(t.root.id, t.unread) for t in threads] == [(root.id, 1)]
        await ca.read(room.id, reply.seq, thread=root.id)
        assert [t.unread for t in await ca.api.threads()] == [0]
        assert [m.id for m in await cb.api.mentions()] == [root.id]
        await ca.react(room.id, root.id, "🎉")
        frame = await next_of(ca, ReactionsFrame)
        assert isinstance(frame, ReactionsFrame) and frame.id == root.id
        assert frame.reactions == [Reaction(emoji="🎉", count=1, users=[alice.user["id"]])]
        now = await cb.api.react(room.id, root.id, "🎉")
        assert now[0].count == 2
        now = await cb.api.unreact(room.id, root.id, "🎉")
        assert now[0].count == 1
        await ca.unreact(room.id, root.id, "🎉")
        frame = await next_of(ca, ReactionsFrame)
        frame = await next_of(ca, ReactionsFrame)
        frame = await next_of(ca, ReactionsFrame)
        assert isinstance(frame, ReactionsFrame) and frame.reactions == []
