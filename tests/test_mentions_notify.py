"""Mentions and the personal stream across two processes: the contract's @name rule,
mention counts and lists, reserved names, `notify` and `room_added` on every socket."""

from __future__ import annotations

from typing import Any

import pytest

from chat import mentions

from .support import PASSWORD, Api, ServerProcess, Ws

Pair = tuple[ServerProcess, ServerProcess]


@pytest.mark.parametrize(
    ("body", "names", "room"),
    [
        ("@alice hi", ("alice",), False),
        ("hi @Alice and @alice", ("alice",), False),
        ("mail bob@example.com", (), False),
        ("x_@bob y9@bob é@bob", (), False),
        ("(@bob) -@carol, @dave.", ("bob", "carol", "dave"), False),
        ("@bob.smith @bob- @bob_ @bob...", ("bob.smith", "bob"), False),
        ("@room and @ROOM", (), True),
        ("@roomy", ("roomy",), False),
        ("@ @. @-", (), False),
        ("@" + "a" * 33, (), False),
    ],
)
def test_mention_rule(body: str, names: tuple[str, ...], room: bool) -> None:
    """The longest run of username characters after an @ that starts the body or follows
    no letter, digit or _, less trailing . - _; @room for everyone."""
    assert mentions.find(body) == mentions.Found(names, room)


async def rooms_of(api: Api) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in (await api.request("GET", "/api/rooms", 200))["rooms"]}


async def test_mentions_on_messages_counts_and_list(servers: Pair, alice: Api) -> None:
    """`mentions` lists members named (in order), a non-member mentions nobody, edits find
    them again; GET /api/rooms counts unread mentions; GET /api/mentions lists them."""
    a, b = servers
    bob = await Api.new_user(b.url, "bob")
    carol = await Api.new_user(a.url, "carol")
    outsider = await Api.new_user(a.url, "out")
    try:
        room = (await alice.create_room("mentions"))["id"]
        await bob.join(room)
        await carol.join(room)
        m1 = await alice.post(
            room,
            f"@{carol.username.upper()} @{bob.username} @{outsider.username} @{carol.username}",
        )
        assert m1["mentions"] == [carol.user["id"], bob.user["id"]]
        assert m1["mention_room"] is False
        m2 = await alice.post(room, "hey @room")
        assert m2["mentions"] == [] and m2["mention_room"] is True
        await alice.post(room, f"mail {bob.username}@example.com")
        assert (await rooms_of(bob))[room]["mentions"] == 2
        assert (await rooms_of(carol))[room]["mentions"] == 2
        assert (await rooms_of(alice))[room]["mentions"] == 0  # her own messages
        listed = (await bob.request("GET", "/api/mentions", 200))["messages"]
        assert [m["id"] for m in listed] == [m2["id"], m1["id"]]
        page = (await bob.request("GET", "/api/mentions", 200, params={"limit": 1}))["messages"]
        assert [m["id"] for m in page] == [m2["id"]]
        page = await bob.request("GET", "/api/mentions", 200, params={"before": m2["id"]})
        assert [m["id"] for m in page["messages"]] == [m1["id"]]
        assert (await outsider.request("GET", "/api/mentions", 200))["messages"] == []
        # An edit finds the mentions again.
        ws = await Ws.connect(b.ws_url, alice.token)
        edited = await ws.call(
            {"type": "edit", "room": room, "id": m1["id"], "body": f"only @{bob.username}"}
        )
        assert edited["message"]["mentions"] == [bob.user["id"]]
        assert (await rooms_of(carol))[room]["mentions"] == 1
        carol_list = (await carol.request("GET", "/api/mentions", 200))["messages"]
        assert [m["id"] for m in carol_list] == [m2["id"]]
        # Reading past them clears the count; a deleted message no longer counts.
        last = (await rooms_of(bob))[room]["last_seq"]
        bob_ws = await Ws.connect(a.ws_url, bob.token)
        ok = await bob_ws.call({"type": "read", "room": room, "seq": last})
        assert ok["type"] == "ok"
        assert (await rooms_of(bob))[room]["mentions"] == 0
        await ws.call({"type": "delete", "room": room, "id": m2["id"]})
        assert (await rooms_of(carol))[room]["mentions"] == 0
    finally:
        for api in (bob, carol, outsider):
            await api.close()


async def test_reserved_usernames_are_refused(servers: Pair, alice: Api) -> None:
    """room, here, everyone (any case) cannot be signed up or made bots: 422 invalid."""
    for name in ("room", "Here", "EVERYONE"):
        r = await alice.raw("POST", "/api/users", json={"username": name, "password": PASSWORD})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid"), r.text
        r = await alice.raw("POST", "/api/bots", json={"username": name})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid"), r.text


async def next_frame(ws: Ws, type_: str) -> dict[str, Any]:
    """The next frame of `type_`, passing over any others."""
    while True:
        frame = await ws.recv()
        if frame["type"] == type_:
            return frame


async def test_notify_reaches_every_socket_on_any_process(servers: Pair, alice: Api) -> None:
    """Sockets that joined nothing, on both processes, get one `notify` per message with the
    first reason in order (mention, room, dm, reply); the sender gets none."""
    a, b = servers
    bob = await Api.new_user(a.url, "bob")
    carol = await Api.new_user(a.url, "carol")
    try:
        room = (await alice.create_room("notify"))["id"]
        await bob.join(room)
        await carol.join(room)
        bob_sockets = [await Ws.connect(p.ws_url, bob.token) for p in (b, a)]
        carol_ws = await Ws.connect(b.ws_url, carol.token)
        alice_ws = await Ws.connect(b.ws_url, alice.token)

        async def told(ws: Ws) -> tuple[str, int]:
            frame = await next_frame(ws, "notify")
            assert frame["room"] == frame["message"]["room"]
            return frame["reason"], frame["message"]["id"]

        m = await alice.post(room, f"@{bob.username} look")
        for ws in bob_sockets:
            assert await told(ws) == ("mention", m["id"])
        m = await alice.post(room, f"@room and @{bob.username}")
        for ws in bob_sockets:
            assert await told(ws) == ("mention", m["id"])
        assert await told(carol_ws) == ("room", m["id"])
        # A thread bob follows (he replied): a reply tells him once, as a reply.
        root = await carol.post(room, "root")
        r = await bob.raw(
            "POST", f"/api/rooms/{room}/messages", json={"body": "me", "thread": root["id"]}
        )
        assert await told(carol_ws) == ("reply", r.json()["message"]["id"])
        r = await alice.raw(
            "POST", f"/api/rooms/{room}/messages", json={"body": "too", "thread": root["id"]}
        )
        reply_id = r.json()["message"]["id"]
        for ws in bob_sockets:
            assert await told(ws) == ("reply", reply_id)
        assert await told(carol_ws) == ("reply", reply_id)
        # A DM: the other person, whether or not they joined it.
        dm = await alice.request("POST", "/api/dms", 200, json={"username": bob.username})
        m = await alice.post(dm["room"]["id"], "psst")
        for ws in bob_sockets:
            assert await told(ws) == ("dm", m["id"])
        # The sender was told of nothing; a plain message tells nobody.
        plain = await alice.post(room, "plain")
        pong = await alice_ws.call({"type": "ping"})
        assert pong["type"] == "pong"
        while not alice_ws.frames.empty():
            assert alice_ws.frames.get_nowait()["type"] != "notify"
        # An edit that now names carol sends no notify.
        edited = await alice_ws.call(
            {"type": "edit", "room": room, "id": plain["id"], "body": f"@{carol.username} hi"}
        )
        assert edited["message"]["mentions"] == [carol.user["id"]]
        m = await alice.post(room, f"@{carol.username}")
        # Nothing for "plain" nor for its edit came first.
        assert await told(carol_ws) == ("mention", m["id"])
    finally:
        await bob.close()
        await carol.close()


async def test_room_added_on_every_socket(servers: Pair, alice: Api) -> None:
    """Creating, joining, being added and a DM opened by someone else each send `room_added`
    (the room as the user sees it) to every socket of that user, on any process."""
    a, b = servers
    bob = await Api.new_user(a.url, "bob")
    try:
        sockets = [await Ws.connect(p.ws_url, bob.token) for p in (a, b)]
        room = (await alice.create_room("added", private=True))["id"]
        await alice.add(room, bob.username)
        for ws in sockets:
            frame = await next_frame(ws, "room_added")
            assert frame["room"]["id"] == room and frame["room"]["private"] is True
        dm = (await alice.request("POST", "/api/dms", 200, json={"username": bob.username}))["room"]
        for ws in sockets:
            frame = await next_frame(ws, "room_added")
            assert frame["room"]["id"] == dm["id"]
            assert frame["room"]["dm"] == alice.user  # as bob sees it
        mine = await bob.create_room("mine")
        public = await alice.create_room("public")
        await bob.join(public["id"])
        for ws in sockets:
            assert (await next_frame(ws, "room_added"))["room"]["id"] == mine["id"]
            assert (await next_frame(ws, "room_added"))["room"]["id"] == public["id"]
        # Opening the DM again adds nobody: nothing more is sent.
        await alice.request("POST", "/api/dms", 200, json={"username": bob.username})
        other = await alice.create_room("last")
        await alice.add(other["id"], bob.username)
        for ws in sockets:
            assert (await next_frame(ws, "room_added"))["room"]["id"] == other["id"]
    finally:
        await bob.close()
