"""The WebSocket half of the contract, frame by frame, across two server processes.

Most tests use the shared pair of processes (`servers`); those that need other
limits (hello timeout, replay limit, rate limit, allowed origins) use one more
process of the same service started with them (`tuned`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from .support import Api, ServerProcess, Ws, seed

ALLOWED = "https://chat.example.com"

Pair = tuple[ServerProcess, ServerProcess]


@pytest.fixture(scope="module")
async def tuned(server_env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """A third process of the service with small limits, so their tests run quickly."""
    proc = ServerProcess(
        {
            **server_env,
            "HELLO_TIMEOUT": "1",
            "REPLAY_LIMIT": "5",
            "SEND_RATE": "1",
            "SEND_BURST": "3",
            "RATE_LIMIT_CLOSE_AFTER": "5",
            "ALLOWED_ORIGINS": ALLOWED,
        },
        "tuned",
    )
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


async def settle(ws: Ws, timeout: float = 10) -> list[dict[str, Any]]:
    """Ping and return every frame that came before the pong (consuming them).

    The server handles a connection's frames in order and queues its replies in
    order, so whatever the earlier frames caused here is in the returned list.
    """
    ref = f"sync-{secrets.token_hex(3)}"
    await ws.send({"type": "ping", "ref": ref})
    before = []
    while True:
        frame = await ws.recv(timeout)
        if frame["type"] == "pong" and frame["ref"] == ref:
            return before
        before.append(frame)


def of_type(frames: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == type_]


async def on(api: Api, proc: ServerProcess, method: str, path: str, expect: int, **kw: Any) -> Any:
    """One request as `api`'s user, sent to another process."""
    other = api.on(proc.url)
    try:
        return await other.request(method, path, expect, **kw)
    finally:
        await other.close()


async def room_with(owner: Api, *others: Api, private: bool = False) -> int:
    """A new room of `owner` with `others` as members."""
    room = await owner.create_room(f"r-{secrets.token_hex(3)}", private=private)
    for other in others:
        await owner.add(room["id"], other.username)
    return int(room["id"])


# -- the first frame ------------------------------------------------------------


async def test_hello_welcome(servers: Pair, alice: Api) -> None:
    """`hello` with a good token gets `welcome` with the user and the heartbeat in seconds."""
    for proc in servers:
        ws = await Ws.connect(proc.ws_url, alice.token)
        try:
            assert ws.welcome["user"] == alice.user
            assert isinstance(ws.welcome["heartbeat"], int | float)
            assert ws.welcome["heartbeat"] > 0
        finally:
            await ws.close()


async def test_bad_token_unauthorized_4001(server: ServerProcess) -> None:
    """A bad token gets an `unauthorized` error, then close code 4001."""
    ws = await Ws.connect(server.ws_url)
    await ws.send({"type": "hello", "token": "not-a-token"})
    error = await ws.expect("error")
    assert error["code"] == "unauthorized"
    assert error["ref"] is None
    assert await ws.close_code() == 4001


async def test_no_hello_in_time_4001(tuned: ServerProcess) -> None:
    """A connection that sends nothing is closed with 4001 once the hello timeout passes."""
    ws = await Ws.connect(tuned.ws_url)
    assert await ws.close_code(timeout=5) == 4001


@pytest.mark.parametrize(
    "first",
    ['{"type": "ping", "ref": 1}', '{"type": "join", "room": 1}', "not json", '{"token": "x"}'],
)
async def test_anything_but_hello_first_4001(server: ServerProcess, first: str) -> None:
    """Another frame, or one that is not JSON, before `welcome` closes the connection with 4001."""
    ws = await Ws.connect(server.ws_url)
    await ws.send(first)
    assert await ws.close_code() == 4001
    frames = []
    while not ws.frames.empty():
        frames.append(ws.frames.get_nowait())
    assert not of_type(frames, "welcome")


async def test_second_hello_is_invalid(server: ServerProcess, alice: Api) -> None:
    """A second `hello` after `welcome` is an `invalid` error and the connection stays open."""
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        reply = await ws.call({"type": "hello", "token": alice.token})
        assert reply["type"] == "error" and reply["code"] == "invalid"
        assert (await ws.call({"type": "ping"}))["type"] == "pong"
    finally:
        await ws.close()


# -- join and leave -------------------------------------------------------------


async def test_join_ok_presence_then_replay(servers: Pair, alice: Api, bob: Api) -> None:
    """`ok` has the newest seq; `presence` comes right after it, then the replay oldest first."""
    _, b = servers
    room = await room_with(alice, bob)
    sent = [await alice.post(room, f"m{i}") for i in range(1, 5)]
    ws = await Ws.connect(b.ws_url, bob.token)
    try:
        ref = ws.ref()
        await ws.send({"type": "join", "ref": ref, "room": room, "since": 1})
        ok = await ws.recv()
        assert ok == {"type": "ok", "ref": ref, "room": room, "seq": 4, "truncated": False}
        presence = await ws.recv()
        assert presence["type"] == "presence" and presence["room"] == room
        assert bob.user in presence["online"]
        replay = [await ws.recv() for _ in range(3)]
        assert [f["type"] for f in replay] == ["message"] * 3
        assert [f["message"]["seq"] for f in replay] == [2, 3, 4]
        assert [f["message"]["id"] for f in replay] == [m["id"] for m in sent[1:]]
        assert replay[0]["message"]["body"] == "m2"
        assert not of_type(await settle(ws), "message")
    finally:
        await ws.close()


async def test_join_order_holds_live_frames_until_replayed(
    servers: Pair, database_url: str, alice: Api
) -> None:
    """Racing joins: each gets ok, presence, its whole replay, and only then live frames."""
    room = await room_with(alice)
    await seed(database_url, room, alice.user["id"], 300)
    users = [await Api.new_user(alice.base_url, "j") for _ in range(5)]
    try:
        for user in users:
            await user.join(room)
        for _ in range(3):
            sockets = [
                await Ws.connect(servers[i % 2].ws_url, api.token)
                for i, api in enumerate([alice, *users])
            ]
            try:

                async def join(ws: Ws) -> list[str]:
                    await ws.send({"type": "join", "ref": "j", "room": room, "since": 0})
                    types: list[str] = []
                    while types.count("message") < 300:
                        types.append((await ws.recv())["type"])
                    return types

                # Everyone replays 300 messages while the others' presence_diffs fly.
                for types in await asyncio.gather(*(join(ws) for ws in sockets)):
                    assert types[:2] == ["ok", "presence"], types[:5]
                    assert types[2:302] == ["message"] * 300, [t for t in types if t != "message"]
            finally:
                for ws in sockets:
                    await ws.close()
    finally:
        for user in users:
            await user.close()


async def test_join_without_since_replays_nothing(server: ServerProcess, alice: Api) -> None:
    """A join without `since` gets `ok` and `presence` and then only live messages."""
    room = await room_with(alice)
    await alice.post(room, "old")
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        ok = await ws.join(room)
        assert ok["seq"] == 1 and ok["truncated"] is False
        assert not of_type(await settle(ws), "message")
        await alice.post(room, "new")
        (live,) = await ws.messages(room, 1)
        assert live["seq"] == 2 and live["body"] == "new"
    finally:
        await ws.close()


async def test_join_empty_room_seq_zero(server: ServerProcess, alice: Api) -> None:
    """Joining a room with no messages answers seq 0; `since` 0 replays nothing."""
    room = await room_with(alice)
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        ok = await ws.join(room, since=0)
        assert ok["seq"] == 0 and ok["truncated"] is False
        assert not of_type(await settle(ws), "message")
    finally:
        await ws.close()


async def test_join_replay_truncated(tuned: ServerProcess, alice: Api) -> None:
    """More missed than REPLAY_LIMIT (5 here): only the newest 5 are replayed, with truncated."""
    room = await room_with(alice)
    for i in range(1, 9):
        await alice.post(room, f"m{i}")
    ws = await Ws.connect(tuned.ws_url, alice.token)
    try:
        ok = await ws.join(room, since=1)
        assert ok["seq"] == 8 and ok["truncated"] is True
        replay = await ws.messages(room, 5)
        assert [m["seq"] for m in replay] == [4, 5, 6, 7, 8]
        assert not of_type(await settle(ws), "message")
        ok = await ws.join(room, since=3)  # exactly the limit missed: not truncated
        assert ok["truncated"] is False
        assert [m["seq"] for m in await ws.messages(room, 5)] == [4, 5, 6, 7, 8]
    finally:
        await ws.close()


async def test_join_public_room_makes_member(servers: Pair, alice: Api, bob: Api) -> None:
    """Joining a public room over WebSocket makes the caller a member."""
    _, b = servers
    room = await room_with(alice)
    ws = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws.join(room)
        rooms = (await bob.request("GET", "/api/rooms", 200))["rooms"]
        assert room in [r["id"] for r in rooms]
        reply = await ws.call({"type": "send", "room": room, "body": "now a member"})
        assert reply["type"] == "ok", reply
    finally:
        await ws.close()


async def test_join_private_forbidden_unknown_not_found(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """A private room one is not a member of is `forbidden`; an unknown room is `not_found`."""
    room = await room_with(alice, private=True)
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        reply = await ws.call({"type": "join", "room": room})
        assert reply["type"] == "error" and reply["code"] == "forbidden"
        reply = await ws.call({"type": "join", "room": 2**62})
        assert reply["type"] == "error" and reply["code"] == "not_found"
        assert not of_type(await settle(ws), "presence")
        rooms = (await bob.request("GET", "/api/rooms", 200))["rooms"]
        assert room not in [r["id"] for r in rooms]
    finally:
        await ws.close()


async def test_leave_stops_frames(servers: Pair, alice: Api, bob: Api) -> None:
    """After `leave` answers `ok` no frame of that room reaches the connection; membership stays."""
    a, b = servers
    room = await room_with(alice, bob)
    leaver = await Ws.connect(b.ws_url, bob.token)
    witness = await Ws.connect(b.ws_url, alice.token)
    try:
        await leaver.join(room)
        await witness.join(room)
        await settle(leaver)  # the witness's presence_diff
        reply = await leaver.call({"type": "leave", "room": room})
        assert reply["type"] == "ok"
        await on(alice, a, "POST", f"/api/rooms/{room}/messages", 201, json={"body": "after"})
        await witness.messages(room, 1)  # delivered on b: the leaver would have it queued too
        frames = await settle(leaver)
        assert not [f for f in frames if f.get("room") == room], frames
        rooms = (await bob.request("GET", "/api/rooms", 200))["rooms"]
        assert room in [r["id"] for r in rooms]
    finally:
        await leaver.close()
        await witness.close()


# -- send, edit, delete ---------------------------------------------------------


async def test_send_ok_after_stored(servers: Pair, alice: Api, bob: Api) -> None:
    """`send` answers `ok` with the stored message; the sender's connection gets the frame too."""
    a, b = servers
    room = await room_with(alice, bob)
    sender = await Ws.connect(a.ws_url, alice.token)
    other = await Ws.connect(b.ws_url, bob.token)
    try:
        await sender.join(room)
        await other.join(room)
        reply = await sender.call(
            {"type": "send", "room": room, "body": "hello", "client_id": "c1"}
        )
        assert reply["type"] == "ok"
        message = reply["message"]
        assert message["seq"] == 1 and message["body"] == "hello"
        assert message["sender"] == alice.user and message["client_id"] == "c1"
        assert message["room"] == room and message["deleted"] is False
        assert message["edited_at"] is None and message["ts"].endswith("Z")
        # Stored by the time the ok arrived.
        assert await bob.history(room) == [message]
        (own,) = await sender.messages(room, 1)
        (theirs,) = await other.messages(room, 1)
        assert own == message and theirs == message
    finally:
        await sender.close()
        await other.close()


async def test_send_not_member_and_bad_body(server: ServerProcess, alice: Api, bob: Api) -> None:
    """`send` to a room one is not in is `forbidden`; an empty or blank body is `invalid`."""
    room = await room_with(alice, private=True)
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        reply = await ws.call({"type": "send", "room": room, "body": "intruder"})
        assert reply["type"] == "error" and reply["code"] == "forbidden"
        own = await room_with(bob)
        for body in ("", "   ", "a\x00b", "x" * 4001):
            reply = await ws.call({"type": "send", "room": own, "body": body})
            assert reply["type"] == "error" and reply["code"] == "invalid", (body, reply)
            assert "body" in reply["message"]
        assert await alice.history(room) == []
        assert await bob.history(own) == []
    finally:
        await ws.close()


async def test_send_idempotent_client_id(servers: Pair, alice: Api, bob: Api) -> None:
    """The same sender, room and client_id return the first message and store nothing new."""
    a, b = servers
    room = await room_with(alice, bob)
    on_a = await Ws.connect(a.ws_url, alice.token)
    on_b = await Ws.connect(b.ws_url, alice.token)
    watcher = await Ws.connect(b.ws_url, bob.token)
    try:
        await watcher.join(room)
        first = await on_a.call({"type": "send", "room": room, "body": "once", "client_id": "k-1"})
        again = await on_b.call({"type": "send", "room": room, "body": "twice", "client_id": "k-1"})
        assert first["type"] == again["type"] == "ok"
        assert again["message"] == first["message"]
        # Another user may use the same client_id: it is per sender.
        bobs = await watcher.call({"type": "send", "room": room, "body": "bob", "client_id": "k-1"})
        assert bobs["message"]["seq"] == 2
        history = await alice.history(room)
        assert [m["body"] for m in history] == ["once", "bob"]
        got = await watcher.messages(room, 2)
        assert [m["seq"] for m in got] == [1, 2]
        assert not of_type(await settle(watcher), "message")
    finally:
        for ws in (on_a, on_b, watcher):
            await ws.close()


async def test_edit(servers: Pair, alice: Api, bob: Api) -> None:
    """The sender edits; joined connections get `edited`; anyone else is `forbidden`."""
    a, b = servers
    room = await room_with(alice, bob)
    sender = await Ws.connect(a.ws_url, alice.token)
    other = await Ws.connect(b.ws_url, bob.token)
    try:
        await sender.join(room)
        await other.join(room)
        message = (await sender.call({"type": "send", "room": room, "body": "tpyo"}))["message"]
        await other.messages(room, 1)
        reply = await sender.call(
            {"type": "edit", "room": room, "id": message["id"], "body": "typo"}
        )
        assert reply["type"] == "ok"
        edited = reply["message"]
        assert edited["id"] == message["id"] and edited["seq"] == message["seq"]
        assert edited["body"] == "typo" and edited["edited_at"] is not None
        frame = await other.expect("edited", skip=("presence_diff",))
        assert frame == {"type": "edited", "room": room, "message": edited}
        refused = await other.call(
            {"type": "edit", "room": room, "id": message["id"], "body": "not mine"}
        )
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        (stored,) = await alice.history(room)
        assert stored["body"] == "typo" and stored["edited_at"] == edited["edited_at"]
        missing = await sender.call({"type": "edit", "room": room, "id": 2**62, "body": "x"})
        assert missing["type"] == "error" and missing["code"] == "not_found"
    finally:
        await sender.close()
        await other.close()


async def test_delete(servers: Pair, alice: Api, bob: Api) -> None:
    """The sender or the room's creator deletes; `deleted` goes out; history keeps a tombstone."""
    a, b = servers
    carol = await Api.new_user(a.url, "carol")
    room = await room_with(alice, bob, carol)
    by_alice = await Ws.connect(a.ws_url, alice.token)
    by_bob = await Ws.connect(b.ws_url, bob.token)
    by_carol = await Ws.connect(b.ws_url, carol.token)
    try:
        for ws in (by_alice, by_bob, by_carol):
            await ws.join(room)
        m1 = (await by_bob.call({"type": "send", "room": room, "body": "one"}))["message"]
        m2 = (await by_bob.call({"type": "send", "room": room, "body": "two"}))["message"]
        await by_alice.messages(room, 2)
        await by_carol.messages(room, 2)
        refused = await by_carol.call({"type": "delete", "room": room, "id": m1["id"]})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        # The sender deletes their own; the creator deletes someone else's.
        assert (await by_bob.call({"type": "delete", "room": room, "id": m1["id"]}))["type"] == "ok"
        frame = await by_alice.expect("deleted", skip=("presence_diff",))
        assert frame == {"type": "deleted", "room": room, "id": m1["id"], "seq": 1}
        ok = await by_alice.call({"type": "delete", "room": room, "id": m2["id"]})
        assert ok["type"] == "ok"
        frame = await by_carol.expect("deleted", skip=("presence_diff",))
        assert frame == {"type": "deleted", "room": room, "id": m1["id"], "seq": 1}
        frame = await by_carol.expect("deleted", skip=("presence_diff",))
        assert frame == {"type": "deleted", "room": room, "id": m2["id"], "seq": 2}
        history = await carol.history(room)
        assert [(m["seq"], m["body"], m["deleted"]) for m in history] == [
            (1, None, True),
            (2, None, True),
        ]
    finally:
        for ws in (by_alice, by_bob, by_carol):
            await ws.close()
        await carol.close()


# -- typing, read, ping ---------------------------------------------------------


async def test_typing(servers: Pair, alice: Api, bob: Api) -> None:
    """Others get `typing` (one a second at most), the typist does not, and nothing is stored."""
    a, b = servers
    room = await room_with(alice, bob)
    typist = await Ws.connect(a.ws_url, alice.token)
    near = await Ws.connect(a.ws_url, bob.token)
    far = await Ws.connect(b.ws_url, bob.token)
    try:
        for ws in (typist, near, far):
            await ws.join(room)
        await settle(typist)
        await typist.send({"type": "typing", "room": room})
        await typist.send({"type": "typing", "room": room})  # within the second: dropped
        assert not of_type(await settle(typist), "typing")
        frames = of_type(await settle(near), "typing")
        assert frames == [{"type": "typing", "room": room, "user": alice.user}]
        assert await far.expect("typing", skip=("presence_diff",)) == frames[0]
        # The far side got exactly one too: a message sent after both typings comes next.
        await typist.call({"type": "send", "room": room, "body": "done typing"})
        after = []
        while not (after and after[-1]["type"] == "message"):
            after.append(await far.recv())
        assert not of_type(after, "typing")
        assert [m["body"] for m in await alice.history(room)] == ["done typing"]
    finally:
        for ws in (typist, near, far):
            await ws.close()


async def test_typing_needs_join(server: ServerProcess, alice: Api) -> None:
    """`typing` in a room the connection has not joined gets an error and reaches nobody."""
    room = await room_with(alice)
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        await ws.send({"type": "typing", "room": room, "ref": "t"})
        frames = await settle(ws)
        assert [f["code"] for f in of_type(frames, "error")] == ["forbidden"]
    finally:
        await ws.close()


async def test_read_sets_unread(servers: Pair, alice: Api, bob: Api) -> None:
    """`read` answers `ok` and GET /api/rooms counts unread messages above it."""
    _, b = servers
    room = await room_with(alice, bob)
    for i in range(3):
        await alice.post(room, f"m{i}")
    ws = await Ws.connect(b.ws_url, bob.token)
    try:

        async def unread() -> int:
            rooms = (await bob.request("GET", "/api/rooms", 200))["rooms"]
            (found,) = [r for r in rooms if r["id"] == room]
            assert found["last_seq"] == 3
            return int(found["unread"])

        assert await unread() == 3
        reply = await ws.call({"type": "read", "room": room, "seq": 2})
        assert reply["type"] == "ok"
        assert await unread() == 1
        await ws.call({"type": "read", "room": room, "seq": 1})  # never moves back
        assert await unread() == 1
        await ws.call({"type": "read", "room": room, "seq": 3})
        assert await unread() == 0
        other = await room_with(alice, private=True)
        refused = await ws.call({"type": "read", "room": other, "seq": 1})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
    finally:
        await ws.close()


async def test_ping_pong(server: ServerProcess, alice: Api) -> None:
    """`ping` gets `pong` with the same ref, an integer or a string."""
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        for ref in (7, "abc"):
            await ws.send({"type": "ping", "ref": ref})
            assert await ws.recv() == {"type": "pong", "ref": ref}
    finally:
        await ws.close()


# -- errors and limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ("this is not json", None),
        ('{"ref": 5, "room": 1}', "type"),
        ('{"type": "teleport", "ref": 5}', "type"),
        ('{"type": "join", "ref": 5, "room": "lobby"}', "room"),
        ('{"type": "join", "ref": 5, "room": 1, "since": -1}', "since"),
        ('{"type": "join", "ref": 5}', "room"),
        ('{"type": "send", "ref": 5, "room": 1, "body": 42}', "body"),
        (
            '{"type": "send", "ref": 5, "room": 1, "body": "x", "client_id": "' + "c" * 65 + '"}',
            "client_id",
        ),
        ('{"type": "read", "ref": 5, "room": 1, "seq": "3"}', "seq"),
        ('{"type": "ping", "ref": [1]}', "ref"),
        ("[1, 2]", None),
    ],
)
async def test_invalid_frames_keep_connection(
    server: ServerProcess, alice: Api, frame: str, field: str | None
) -> None:
    """A frame that is not JSON, lacks `type` or has a wrong field gets `invalid`; it stays open."""
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        await ws.send(frame)
        error = await ws.expect("error")
        assert error["code"] == "invalid", error
        if field is not None:
            assert f"`{field}`" in error["message"] or field in error["message"], error
        try:
            expected_ref = json.loads(frame).get("ref") if frame.startswith("{") else None
        except ValueError:
            expected_ref = None
        if isinstance(expected_ref, int):
            assert error["ref"] == expected_ref
        assert (await ws.call({"type": "ping"}))["type"] == "pong"
    finally:
        await ws.close()


async def test_frame_over_64k_closes_1009(server: ServerProcess, alice: Api) -> None:
    """A frame over 64 KiB closes the connection with 1009."""
    ws = await Ws.connect(server.ws_url, alice.token)
    await ws.send({"type": "ping", "ref": "x" * (65 * 1024)})
    assert await ws.close_code() == 1009


async def test_frame_just_under_64k_is_fine(server: ServerProcess, alice: Api) -> None:
    """A frame just under the limit is read (and refused on its merits, not its size)."""
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        await ws.send({"type": "ping", "ref": 1, "pad": "x" * (60 * 1024)})
        assert await ws.recv() == {"type": "pong", "ref": 1}
    finally:
        await ws.close()


async def test_rate_limit_refuses_then_closes_4008(tuned: ServerProcess) -> None:
    """Beyond the burst, sends get `rate_limited` and store nothing; the 6th refusal closes 4008."""
    api = await Api.new_user(tuned.url, "fast")
    try:
        room = await room_with(api)
        ws = await Ws.connect(tuned.ws_url, api.token)
        for i in range(1, 21):  # sent at once, read afterwards
            await ws.send({"type": "send", "ref": i, "room": room, "body": f"n{i}"})
        assert await ws.close_code() == 4008
        frames = []
        while not ws.frames.empty():
            frames.append(ws.frames.get_nowait())
        oks = of_type(frames, "ok")
        errors = of_type(frames, "error")
        assert {e["code"] for e in errors} == {"rate_limited"}
        assert len(errors) == 5, frames
        assert 3 <= len(oks) <= 4, frames  # the burst, and at most one refilled token
        history = await api.history(room)
        assert [m["id"] for m in history] == [o["message"]["id"] for o in oks]
    finally:
        await api.close()


async def test_rate_limit_covers_edit_and_delete(
    tuned: ServerProcess, server: ServerProcess
) -> None:
    """`edit` and `delete` spend the same budget; a refused one changes nothing."""
    api = await Api.new_user(tuned.url, "editor")
    try:
        room = await room_with(api)
        # Posted on another process: a POST spends the user's send budget of the process
        # that takes it, and here only the edits and the delete are to spend tuned's.
        message = await on(
            api, server, "POST", f"/api/rooms/{room}/messages", 201, json={"body": "original"}
        )
        message = message["message"]
        ws = await Ws.connect(tuned.ws_url, api.token)
        try:
            replies = []
            for i in range(3):
                replies.append(
                    await ws.call(
                        {"type": "edit", "room": room, "id": message["id"], "body": f"e{i}"}
                    )
                )
            assert [r["type"] for r in replies] == ["ok"] * 3
            refused = await ws.call({"type": "delete", "room": room, "id": message["id"]})
            assert refused["type"] == "error" and refused["code"] == "rate_limited"
            (stored,) = await api.history(room)
            assert stored["deleted"] is False and stored["body"] == "e2"
        finally:
            await ws.close()
    finally:
        await api.close()


# -- presence -------------------------------------------------------------------


async def test_presence_across_processes(servers: Pair, alice: Api, bob: Api) -> None:
    """presence_diff reports joins and leaves from either process, not to the one who caused it."""
    a, b = servers
    room = await room_with(alice, bob)
    ws_alice = await Ws.connect(a.ws_url, alice.token)
    ws_bob = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_alice.join(room)
        ok = await ws_bob.call({"type": "join", "room": room})
        assert ok["type"] == "ok"
        presence = await ws_bob.expect("presence")
        assert sorted(u["id"] for u in presence["online"]) == sorted(
            [alice.user["id"], bob.user["id"]]
        )
        diff = await ws_alice.expect("presence_diff")
        assert diff == {"type": "presence_diff", "room": room, "joins": [bob.user], "leaves": []}
        assert not of_type(await settle(ws_bob), "presence_diff")

        for proc in servers:
            online = await on(alice, proc, "GET", f"/api/rooms/{room}/presence", 200)
            assert sorted(u["id"] for u in online["online"]) == sorted(
                [alice.user["id"], bob.user["id"]]
            )

        # A second connection of a user already present changes nothing.
        second = await Ws.connect(a.ws_url, bob.token)
        await second.join(room)
        await second.close()
        assert (await ws_bob.call({"type": "leave", "room": room}))["type"] == "ok"
        diff = await ws_alice.expect("presence_diff")
        assert diff == {"type": "presence_diff", "room": room, "joins": [], "leaves": [bob.user]}
        assert not of_type(await settle(ws_bob), "presence_diff")
        online = await bob.request("GET", f"/api/rooms/{room}/presence", 200)
        assert online["online"] == [alice.user]

        # A dropped connection leaves too.
        await ws_bob.join(room)
        assert (await ws_alice.expect("presence_diff"))["joins"] == [bob.user]
        await ws_bob.close()
        diff = await ws_alice.expect("presence_diff")
        assert diff["leaves"] == [bob.user] and diff["joins"] == []
    finally:
        await ws_alice.close()
        await ws_bob.close()


async def test_presence_needs_membership(server: ServerProcess, alice: Api, bob: Api) -> None:
    """GET presence of a private room is `forbidden` to a non-member."""
    room = await room_with(alice, private=True)
    r = await bob.raw("GET", f"/api/rooms/{room}/presence")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# -- security -------------------------------------------------------------------


async def test_origin_check(tuned: ServerProcess, alice: Api) -> None:
    """A foreign Origin gets HTTP 403; an allowed one, the server's own, or none is accepted."""
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(tuned.ws_url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    for origin in (ALLOWED, f"http://127.0.0.1:{tuned.port}", None):
        ws = await websockets.connect(tuned.ws_url, origin=origin)
        try:
            await ws.send(json.dumps({"type": "hello", "token": alice.token}))
            assert json.loads(await ws.recv())["type"] == "welcome"
        finally:
            await ws.close()


async def test_logout_closes_sockets_on_both_processes(servers: Pair, alice: Api) -> None:
    """DELETE /api/sessions/current closes that token's sockets on both processes with 4001."""
    a, b = servers
    other_session = await Api.new_user(a.url, "x")  # a bystander with a token of its own
    second = Api(a.url)
    body = await second.request(
        "POST",
        "/api/sessions",
        201,
        json={"username": alice.username, "password": "correct horse battery"},
    )
    second.token = body["token"]
    on_a = await Ws.connect(a.ws_url, alice.token)
    on_b = await Ws.connect(b.ws_url, alice.token)
    kept = await Ws.connect(b.ws_url, second.token)
    bystander = await Ws.connect(b.ws_url, other_session.token)
    try:
        await alice.request("DELETE", "/api/sessions/current", 204)
        assert await on_a.close_code() == 4001
        assert await on_b.close_code() == 4001
        for ws in (kept, bystander):
            assert (await ws.call({"type": "ping"}))["type"] == "pong"
        again = await Ws.connect(b.ws_url)
        await again.send({"type": "hello", "token": alice.token})
        assert (await again.expect("error"))["code"] == "unauthorized"
        assert await again.close_code() == 4001
    finally:
        for ws in (kept, bystander):
            await ws.close()
        await second.close()
        await other_session.close()


async def test_removed_member_stops_receiving(servers: Pair, alice: Api, bob: Api) -> None:
    """Removing a member stops their sockets on both processes from receiving the room."""
    a, b = servers
    room = await room_with(alice, bob, private=True)
    bob_a = await Ws.connect(a.ws_url, bob.token)
    bob_b = await Ws.connect(b.ws_url, bob.token)
    watch_a = await Ws.connect(a.ws_url, alice.token)
    watch_b = await Ws.connect(b.ws_url, alice.token)
    try:
        for ws in (bob_a, bob_b, watch_a, watch_b):
            await ws.join(room)
        await alice.post(room, "before")
        for ws in (bob_a, bob_b):
            assert [m["body"] for m in await ws.messages(room, 1)] == ["before"]
        await alice.request("DELETE", f"/api/rooms/{room}/members/{bob.username}", 204)
        await alice.post(room, "after")
        await on(alice, b, "POST", f"/api/rooms/{room}/messages", 201, json={"body": "from b"})
        for ws in (watch_a, watch_b):
            got = await ws.messages(room, 3)
            assert [m["body"] for m in got] == ["before", "after", "from b"]
        for ws in (bob_a, bob_b):
            frames = await settle(ws)
            assert not of_type(frames, "message"), frames
            assert not [f for f in frames if f["type"] in ("typing", "edited", "deleted")]
            refused = await ws.call({"type": "join", "room": room})
            assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert (await bob.raw("GET", f"/api/rooms/{room}/messages")).status_code == 403
    finally:
        for ws in (bob_a, bob_b, watch_a, watch_b):
            await ws.close()
