"""Clients that try what they may not: forged senders, other people's messages and rooms,
SQL and HTML in bodies. Each gets the contract's error and nothing is stored that should not be."""

from __future__ import annotations

from .support import Api, ServerProcess, Ws

NASTY = [
    "'); DROP TABLE messages; --",
    "1 OR 1=1; SELECT * FROM users WHERE '' = ''",
    "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "$1 $2 %s %(x)s {0} \\x00 \\u0000",
]


async def test_forged_sender_fields_are_ignored(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """Extra `sender`/`user` fields in a send frame or POST body do not change the sender."""
    room = (await alice.create_room("forge"))["id"]
    await bob.join(room)
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        reply = await ws.call(
            {"type": "send", "room": room, "body": "who am i", "sender": bob.user, "user": bob.user}
        )
        assert reply["type"] == "ok" and reply["message"]["sender"]["id"] == alice.user["id"]
    finally:
        await ws.close()
    posted = await alice.request(
        "POST",
        f"/api/rooms/{room}/messages",
        201,
        json={"body": "me again", "sender": bob.user, "sender_id": bob.user["id"]},
    )
    assert posted["message"]["sender"]["id"] == alice.user["id"]
    assert {m["sender"]["id"] for m in await bob.history(room)} == {alice.user["id"]}


async def test_sql_and_html_bodies_are_stored_verbatim(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """SQL and HTML in bodies are data: stored and returned byte for byte, tables intact."""
    room = (await alice.create_room("'; DROP TABLE rooms; -- <b>x</b>"))["id"]
    await bob.join(room)
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        await ws.join(room)
        for body in NASTY:
            await alice.post(room, body)
        live = await ws.messages(room, len(NASTY))
    finally:
        await ws.close()
    assert [m["body"] for m in live] == NASTY
    assert [m["body"] for m in await bob.history(room)] == NASTY
    rooms = await bob.request("GET", "/api/rooms", 200)
    assert any(r["name"] == "'; DROP TABLE rooms; -- <b>x</b>" for r in rooms["rooms"])


async def test_non_member_cannot_send_edit_delete_or_read(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """Someone outside a private room gets `forbidden` for every frame and changes nothing."""
    room = (await alice.create_room("private", private=True))["id"]
    mine = await alice.post(room, "original")
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        for frame in (
            {"type": "send", "room": room, "body": "intruder"},
            {"type": "edit", "room": room, "id": mine["id"], "body": "defaced"},
            {"type": "delete", "room": room, "id": mine["id"]},
            {"type": "read", "room": room, "seq": 1},
            {"type": "join", "room": room},
        ):
            reply = await ws.call(frame)
            assert (reply["type"], reply["code"]) == ("error", "forbidden"), (frame, reply)
        reply = await ws.call({"type": "typing", "room": room})
        assert reply["code"] == "forbidden"
    finally:
        await ws.close()
    history = await alice.history(room)
    assert [(m["body"], m["edited_at"], m["deleted"]) for m in history] == [
        ("original", None, False)
    ]


async def test_member_cannot_edit_or_delete_anothers_message(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """A member who is neither the sender nor the creator cannot edit or delete a message."""
    room = (await alice.create_room("others"))["id"]
    await bob.join(room)
    mine = await alice.post(room, "alice's words")
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        edit = await ws.call({"type": "edit", "room": room, "id": mine["id"], "body": "bob's now"})
        delete = await ws.call({"type": "delete", "room": room, "id": mine["id"]})
        assert (edit["code"], delete["code"]) == ("forbidden", "forbidden")
        # An id from another room is not found here, whoever owns it.
        other = (await bob.create_room("bob's"))["id"]
        theirs = await bob.post(other, "elsewhere")
        moved = await ws.call({"type": "edit", "room": room, "id": theirs["id"], "body": "x"})
        assert moved["code"] == "not_found"
    finally:
        await ws.close()
    (stored,) = await alice.history(room)
    assert (stored["body"], stored["deleted"]) == ("alice's words", False)
