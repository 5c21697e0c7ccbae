"""The client SDK (chat.client) against real server processes.

Restart tests run their own `ServerProcess`, so the shared `servers` fixture is
never disturbed; a small TCP relay in front of a server holds back replies or
cuts connections where a test needs a reply lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat.client import (
    ChatClient,
    ClientClosed,
    ConnectionStopped,
    DeletedFrame,
    EditedFrame,
    HttpApi,
    Message,
    MessageFrame,
    NotifyFrame,
    PresenceFrame,
    RoomAddedFrame,
    ServerError,
    TypingFrame,
    backoff_delay,
    create_bot,
    create_room,
    decode_server_frame,
    history,
    log_in,
    sign_up,
)
from chat.client.frames import Ack, MalformedFrame
from chat.client.http import http_base, ws_url

from .support import PASSWORD, Api, ServerProcess, Ws

ROOT = Path(__file__).resolve().parent.parent
# Fast reconnects for tests: the server is back within seconds.
FAST = {"backoff_base": 0.05, "backoff_cap": 0.5}


async def take(client: ChatClient, room: int, count: int, timeout: float = 20) -> list[Message]:
    """The next `count` messages of `room` the client yields, skipping other events."""
    out: list[Message] = []
    async with asyncio.timeout(timeout):
        async for event in client:
            if isinstance(event, MessageFrame) and event.room == room:
                out.append(event.message)
                if len(out) == count:
                    break
    return out


async def own_server(env: dict[str, str], name: str, **extra: str) -> ServerProcess:
    return await ServerProcess({**env, **extra}, name).start()


class Relay:
    """A TCP relay in front of a server: it can drop the server's bytes and cut every link."""

    def __init__(self, port: int) -> None:
        # The server's port.
        self.port = port
        # While True, bytes from the server are dropped: replies get lost.
        self.mute = False
        # Links made so far (each a client connection).
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _link(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {down_w, up_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await r.read(65536):
                    if upstream and self.mute:
                        continue
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pump(down_r, up_w, False), pump(up_r, down_w, True))
        self._writers -= {down_w, up_w}

    def cut(self) -> None:
        """Drop every link at once, as a network failure would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def relay(server: ServerProcess) -> AsyncIterator[Relay]:
    relay = Relay(server.port)
    yield relay
    await relay.close()


@pytest.fixture(scope="module")
async def tight(server_env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """A server process with tiny limits: replays of 3 messages, 2 sends then 4008."""
    proc = await own_server(
        server_env,
        "tight",
        REPLAY_LIMIT="3",
        SEND_RATE="0.1",
        SEND_BURST="2",
        RATE_LIMIT_CLOSE_AFTER="3",
    )
    yield proc
    await proc.stop()


# -- without a server ---------------------------------------------------------


def test_decoder_types_known_frames_and_ignores_unknown_ones() -> None:
    """Server frames decode to protocol types; an unknown type is None; a bad known one raises."""
    frame = decode_server_frame(
        b'{"type":"message","room":3,"message":{"id":9,"room":3,"seq":1,'
        b'"sender":{"id":1,"username":"al","bot":false},"body":"hi","client_id":null,'
        b'"ts":"2026-11-26T10:00:00.123Z","edited_at":null,"deleted":false,"new_field":1}}'
    )
    assert isinstance(frame, MessageFrame) and frame.message.body == "hi"
    joined = decode_server_frame(b'{"type":"ok","ref":1,"room":3,"seq":7,"truncated":true}')
    assert isinstance(joined, Ack) and joined.seq == 7 and joined.truncated
    assert isinstance(
        decode_server_frame(b'{"type":"typing","room":3,"user":{"id":1,"username":"al"}}'),
        TypingFrame,
    )
    assert decode_server_frame(b'{"type":"reaction","room":3,"emoji":"+1"}') is None
    with pytest.raises(MalformedFrame):
        decode_server_frame(b'{"type":"message","room":"three"}')
    with pytest.raises(MalformedFrame):
        decode_server_frame(b"not json")


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """Delays are uniform in [0, min(cap, base * 2**attempt)]: spread out, never over the cap."""
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2
    assert backoff_delay(10_000, 0.1, 2.0, rng) <= 2.0


def test_urls_accept_http_and_ws_forms() -> None:
    """http(s):// and ws(s)://.../ws name the same server; anything else is refused."""
    assert http_base("http://h:1/") == "http://h:1"
    assert http_base("wss://h/ws") == "https://h"
    assert ws_url("http://h:1") == "ws://h:1/ws"
    assert ws_url("https://h/chat") == "wss://h/chat/ws"
    with pytest.raises(ValueError):
        ws_url("ftp://h")


# -- against the shared servers -----------------------------------------------


async def test_http_helpers(server: ServerProcess) -> None:
    """sign_up, log_in, create_bot, create_room and history work; a bot connects with its token."""
    name = f"sdk{random.randrange(16**8):08x}"
    user = await sign_up(server.url, name, PASSWORD)
    assert user.username == name and not user.bot
    session = await log_in(server.url, name.upper(), PASSWORD)
    assert session.user == user
    bot = await create_bot(server.url, session.token, name + "-bot")
    assert bot.user.bot
    room = await create_room(server.url, session.token, "sdk room")
    assert room.created_by == user
    async with ChatClient(server.url, bot.token) as client:
        assert client.user == bot.user
        await client.join(room.id)
        sent = await client.send(room.id, "from the bot")
    assert await history(server.url, session.token, room.id) == [sent]
    with pytest.raises(ServerError) as info:
        await sign_up(server.url, name, PASSWORD)
    assert (info.value.code, info.value.status) == ("conflict", 409)


async def test_send_and_receive_between_two_clients(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """A send returns the stored message, which both clients (on two processes) receive."""
    a, b = servers
    room = (await alice.create_room("two clients"))["id"]
    async with ChatClient(a.url, str(alice.token)) as ca, ChatClient(b.url, str(bob.token)) as cb:
        await ca.join(room)
        joined = await cb.join(room)
        assert joined.seq == 0 and not joined.truncated
        sent = await ca.send(room, "hello bob")
        assert sent.seq == 1 and sent.body == "hello bob" and sent.sender == ca.user
        assert sent.client_id is not None
        stored = await ca.api.history(room)
        assert stored == [sent]
        assert await take(cb, room, 1) == [sent]
        assert await take(ca, room, 1) == [sent]
        reply = await cb.send(room, "hi alice", client_id="mine-1")
        assert reply.client_id == "mine-1" and reply.seq == 2
        assert await take(ca, room, 1) == [reply]


async def test_edits_deletes_typing_and_presence_are_events(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """Edited, deleted, typing and presence frames come out as their protocol types."""
    a, b = servers
    room = (await alice.create_room("events"))["id"]
    async with ChatClient(a.url, str(alice.token)) as ca, ChatClient(b.url, str(bob.token)) as cb:
        await ca.join(room)
        await cb.join(room)
        sent = await ca.send(room, "first")
        edited = await ca.edit(room, sent.id, "second")
        assert edited.body == "second" and edited.edited_at is not None
        await ca.delete(room, sent.id)
        await ca.typing(room)
        seen: list[Any] = []
        async with asyncio.timeout(20):
            async for event in cb:
                if isinstance(event, RoomAddedFrame | NotifyFrame):
                    continue  # the personal stream (bob's join made him a member)
                seen.append(event)
                if isinstance(event, TypingFrame):
                    break
        assert isinstance(seen[0], PresenceFrame) and seen[0].room == room
        assert [type(e) for e in seen[1:]] == [MessageFrame, EditedFrame, DeletedFrame, TypingFrame]
        assert seen[-1].user == ca.user


async def test_forbidden_join_and_bad_body_raise(
    alice: Api, bob: Api, server: ServerProcess
) -> None:
    """A private room's join raises ServerError(forbidden); an empty body is refused locally."""
    room = (await alice.create_room("private", private=True))["id"]
    async with ChatClient(server.url, str(bob.token)) as client:
        with pytest.raises(ServerError) as info:
            await client.join(room)
        assert info.value.code == "forbidden"
        assert client.rooms == []
        with pytest.raises(ValueError):
            await client.send(room, "   ")
    with pytest.raises(ClientClosed):
        await client.send(room, "closed")


async def test_slow_reader_gets_every_message_from_history(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """A reader far behind sheds messages past max_buffer and gets them again, once, in order."""
    room = (await alice.create_room("slow"))["id"]
    await bob.join(room)
    async with ChatClient(server.url, str(bob.token), max_buffer=4) as client:
        await client.join(room)
        posted = [await alice.post(room, f"m{i}") for i in range(20)]
        # Its ok follows its own message frame, which follows the 20 before it.
        mine = await client.send(room, "mine")
        assert client.buffered <= 4  # shed rather than buffered
        got = await take(client, room, 21)
    assert [m.seq for m in got] == list(range(1, 22))
    assert [m.id for m in got] == [p["id"] for p in posted] + [mine.id]


async def test_lost_ok_is_retried_without_a_duplicate(
    relay: Relay, server: ServerProcess, alice: Api, bob: Api
) -> None:
    """A send whose ok is lost in a dropped connection is retried and stored exactly once."""
    url = await relay.start()
    room = (await alice.create_room("lost ok"))["id"]
    await bob.join(room)
    observer = await Ws.connect(server.ws_url, alice.token)
    try:
        await observer.join(room)
        async with ChatClient(url, str(bob.token), **FAST) as client:
            relay.mute = True
            sending = asyncio.create_task(client.send(room, "exactly once"))
            (stored,) = await observer.messages(room, 1)
            assert not sending.done()  # stored, but its ok was dropped
            relay.cut()
            relay.mute = False
            message = await asyncio.wait_for(sending, 20)
            assert message.id == stored["id"] and client.reconnects == 1
        marker = await alice.post(room, "marker")
        (after,) = await observer.messages(room, 1)
        assert after["id"] == marker["id"]
        assert [m["body"] for m in await alice.all_messages(room)] == ["exactly once", "marker"]
    finally:
        await observer.close()


async def test_revoked_token_stops_without_reconnecting(relay: Relay, bob: Api) -> None:
    """After 4001 (token revoked) the client raises ConnectionStopped and never reconnects."""
    url = await relay.start()
    room = (await bob.create_room("revoked"))["id"]
    async with ChatClient(url, str(bob.token), **FAST) as client:
        await client.join(room)
        await bob.request("DELETE", "/api/sessions/current", 204)
        with pytest.raises(ConnectionStopped) as info:
            async with asyncio.timeout(15):
                async for _ in client:
                    pass
        assert info.value.code == 4001
        assert "log in again" in str(info.value)
        assert not client.connected and relay.accepted == 1
        with pytest.raises(ConnectionStopped):
            await client.send(room, "after")


async def test_bad_token_fails_at_start(server: ServerProcess) -> None:
    """A token the server refuses makes `async with` raise ConnectionStopped(4001) at once."""
    client = ChatClient(server.url, "not-a-token", **FAST)
    with pytest.raises(ConnectionStopped) as info:
        async with client:
            pass
    assert info.value.code == 4001 and info.value.reason  # the server's own words
    assert "log in again" in str(info.value)


# -- against servers of their own ---------------------------------------------


async def test_truncated_replay_is_filled_from_history(
    tight: ServerProcess, alice: Api, bob: Api
) -> None:
    """A join whose replay is truncated still yields every message above `since`, in order."""
    room = (await alice.create_room("truncated"))["id"]
    posted = [await alice.post(room, f"m{i}") for i in range(10)]
    async with ChatClient(tight.url, str(bob.token)) as client:
        joined = await client.join(room, since=2)
        assert joined.truncated and joined.seq == 10
        got = await take(client, room, 8)
        assert [m.seq for m in got] == list(range(3, 11))
        assert [m.id for m in got] == [p["id"] for p in posted[2:]]
        live = await alice.post(room, "live")
        assert [m.id for m in await take(client, room, 1)] == [live["id"]]


async def test_rate_limit_close_stops_the_client(tight: ServerProcess, bob: Api) -> None:
    """After 4008 (too many refused sends) pending sends fail and the client stops."""
    room = (await bob.create_room("flood"))["id"]
    async with ChatClient(tight.url, str(bob.token), **FAST) as client:
        results = await asyncio.gather(
            *(client.send(room, f"flood {i}") for i in range(10)), return_exceptions=True
        )
        assert sum(isinstance(r, Message) for r in results) == 2
        assert any(isinstance(r, ServerError) and r.code == "rate_limited" for r in results)
        assert any(isinstance(r, ConnectionStopped) and r.code == 4008 for r in results)
        with pytest.raises(ConnectionStopped) as info:
            async with asyncio.timeout(15):
                async for _ in client:
                    pass
        assert info.value.code == 4008 and "slow down" in str(info.value)
        assert client.reconnects == 0


@pytest.mark.faults
async def test_bot_sees_every_message_once_across_a_restart(
    server_env: dict[str, str], server: ServerProcess, alice: Api, bob: Api
) -> None:
    """Messages posted before, during and after its server's restart reach a bot once, in order."""
    own = await own_server(server_env, "restart")
    room = (await alice.create_room("restart"))["id"]
    await bob.join(room)
    try:
        async with ChatClient(own.url, str(bob.token), **FAST) as client:
            await client.join(room)
            posted = [await alice.post(room, f"before {i}") for i in range(3)]
            got = await take(client, room, 3)
            await own.stop()
            posted += [await alice.post(room, f"during {i}") for i in range(5)]
            await own.start()
            posted += [await alice.post(room, f"after {i}") for i in range(3)]
            got += await take(client, room, 8)
            assert [m.seq for m in got] == list(range(1, 12))
            assert [m.body for m in got] == [p["body"] for p in posted]
            assert client.reconnects == 1
            # Nothing is repeated after the eleven: the next message is the next one posted.
            marker = await alice.post(room, "marker")
            assert [m.id for m in await take(client, room, 1)] == [marker["id"]]
    finally:
        await own.stop()


@pytest.mark.faults
async def test_send_while_server_down_completes_once(
    server_env: dict[str, str], alice: Api, bob: Api
) -> None:
    """A send made while the server is down completes after it is back, stored exactly once."""
    own = await own_server(server_env, "down")
    room = (await alice.create_room("down"))["id"]
    await bob.join(room)
    try:
        async with ChatClient(own.url, str(bob.token), **FAST) as client:
            await client.join(room)
            await own.stop()
            sending = asyncio.create_task(client.send(room, "sent while down"))
            await own.start()
            message = await asyncio.wait_for(sending, 30)
            assert message.body == "sent while down" and message.seq == 1
            assert [m.id for m in await take(client, room, 1)] == [message.id]
        stored = await alice.all_messages(room)
        assert [m["id"] for m in stored] == [message.id]
    finally:
        await own.stop()


async def test_echo_bot_example_answers(server: ServerProcess, alice: Api, bob: Api) -> None:
    """examples/echo_bot.py, given a bot token and a room, answers a message with its echo."""
    room = (await alice.create_room("echo"))["id"]
    bot = await create_bot(server.url, str(bob.token), f"echo{random.randrange(16**8):08x}")
    async with HttpApi(server.url, bot.token) as api:
        await api.join_room(room)
    observer = await Ws.connect(server.ws_url, alice.token)
    await observer.join(room)
    env = {
        **os.environ,
        "CHAT_URL": server.url,
        "BOT_TOKEN": bot.token,
        "CHAT_ROOM": str(room),
        "PYTHONPATH": str(ROOT),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "echo_bot.py"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # The bot is in the room once presence says so; from then on it hears what is said.
        while True:
            frame = await observer.recv(timeout=20)
            if frame["type"] == "presence_diff" and bot.user.id in [
                u["id"] for u in frame["joins"]
            ]:
                break
        await alice.post(room, "ping?")
        said, echoed = await observer.messages(room, 2)
        assert said["body"] == "ping?"
        assert echoed["body"] == "echo: ping?" and echoed["sender"]["id"] == bot.user.id
    finally:
        proc.terminate()
        await proc.wait()
        await observer.close()
