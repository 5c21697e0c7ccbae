"""The HTTP rooms API: creating, listing, joining, members, direct messages and presence."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .support import PASSWORD, Api, ServerProcess, Ws


def error(response: httpx.Response) -> tuple[int, str]:
    """The status and contract error code of an error response (checking the body's shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


def room_shape(room: dict[str, Any]) -> None:
    assert set(room) == {"id", "name", "private", "created_by", "dm", "topic", "slow_mode"}, room
    assert set(room["created_by"]) == {"id", "username", "bot"}, room
    assert room["dm"] is None or set(room["dm"]) == {"id", "username", "bot"}, room


@pytest.fixture
async def carol(server: ServerProcess) -> AsyncIterator[Api]:
    api = await Api.new_user(server.url, "carol")
    yield api
    await api.close()


async def listed(api: Api) -> dict[Any, dict[str, Any]]:
    """The caller's rooms from GET /api/rooms, by id."""
    r = await api.raw("GET", "/api/rooms")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rooms"}
    return {room["id"]: room for room in body["rooms"]}


async def read(ws: Ws, room: Any, seq: int) -> None:
    reply = await ws.call({"type": "read", "room": room, "seq": seq})
    assert reply["type"] == "ok", reply


# -- creating and listing -----------------------------------------------------


async def test_create_room_shape(alice: Api) -> None:
    """POST /api/rooms is 201 {"room": {id, name, private, created_by}}; public by default."""
    r = await alice.raw("POST", "/api/rooms", json={"name": "general"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"room"}
    room_shape(body["room"])
    assert body["room"]["name"] == "general"
    assert body["room"]["private"] is False
    assert body["room"]["created_by"] == alice.user
    r = await alice.raw("POST", "/api/rooms", json={"name": "secret", "private": True})
    assert r.status_code == 201, r.text
    assert r.json()["room"]["private"] is True


async def test_creator_is_a_member(alice: Api) -> None:
    """The creator of a room, public or private, finds it listed and can post and read."""
    for private in (False, True):
        room = await alice.create_room("mine", private=private)
        rooms = await listed(alice)
        assert room["id"] in rooms
        await alice.post(room["id"], "first")
        assert [m["body"] for m in await alice.history(room["id"])] == ["first"]


@pytest.mark.parametrize(
    "payload",
    [
        {"name": ""},
        {"name": "   \t "},
        {"name": "n" * 101},
        {"name": 42},
        {"name": "bad", "private": "yes"},
        {"name": "nul\x00name"},
        {},
    ],
)
async def test_create_room_refuses_bad_input(alice: Api, payload: dict[str, Any]) -> None:
    """An empty, blank, over-long, NUL-bearing or wrongly typed name or flag is 422 invalid."""
    r = await alice.raw("POST", "/api/rooms", json=payload)
    assert error(r) == (422, "invalid"), r.text


async def test_wrong_type_names_the_field(alice: Api) -> None:
    """The 422 for a field of the wrong type names that field."""
    r = await alice.raw("POST", "/api/rooms", json={"name": "x", "private": "no"})
    assert error(r) == (422, "invalid")
    assert "private" in r.json()["error"]["message"]


async def test_list_rooms_shows_only_the_callers_rooms(alice: Api, bob: Api) -> None:
    """GET /api/rooms lists the caller's rooms, each with last_seq and unread, and no others."""
    mine = await alice.create_room("alice's")
    theirs = await bob.create_room("bob's")
    rooms = await listed(alice)
    assert mine["id"] in rooms
    assert theirs["id"] not in rooms
    entry = rooms[mine["id"]]
    assert set(entry) == {
        "id",
        "name",
        "private",
        "created_by",
        "dm",
        "topic",
        "slow_mode",
        "last_seq",
        "unread",
        "role",
        "mentions",  # Part 2: unread messages that mention the caller or @room
    }
    shared = ("id", "name", "private", "created_by", "dm", "topic", "slow_mode")
    assert {k: entry[k] for k in shared} == mine
    assert entry["last_seq"] == 0 and entry["unread"] == 0 and entry["mentions"] == 0


async def test_last_seq_and_unread_follow_the_read_position(
    alice: Api, bob: Api, server: ServerProcess
) -> None:
    """unread is last_seq minus the read position a WebSocket `read` frame stores."""
    room = await alice.create_room("unread")
    await bob.join(room["id"])
    for n in range(5):
        await alice.post(room["id"], f"m{n}")
    entry = (await listed(bob))[room["id"]]
    assert (entry["last_seq"], entry["unread"]) == (5, 5)
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        await read(ws, room["id"], 3)
        entry = (await listed(bob))[room["id"]]
        assert (entry["last_seq"], entry["unread"]) == (5, 2)
        await read(ws, room["id"], 1)  # a read position never moves back
        assert (await listed(bob))[room["id"]]["unread"] == 2
        await read(ws, room["id"], 99)  # nor past the newest message
        assert (await listed(bob))[room["id"]]["unread"] == 0
        await alice.post(room["id"], "one more")
        entry = (await listed(bob))[room["id"]]
        assert (entry["last_seq"], entry["unread"]) == (6, 1)
    finally:
        await ws.close()


async def test_own_messages_are_not_unread(
    alice: Api, bob: Api, servers: tuple[ServerProcess, ServerProcess]
) -> None:
    """A sender's own messages, single or group-committed, never count as unread for them."""
    room = await alice.create_room("own")
    await bob.join(room["id"])
    await bob.post(room["id"], "from bob")
    await alice.post(room["id"], "from alice")
    assert (await listed(alice))[room["id"]]["unread"] == 0
    assert (await listed(bob))[room["id"]]["unread"] == 1
    # Many at once on both processes go through group commit together.
    alice_b = alice.on(servers[1].url)
    try:
        await asyncio.gather(
            *(api.post(room["id"], f"burst {n}") for n in range(10) for api in (alice, alice_b))
        )
    finally:
        await alice_b.close()
    assert (await listed(alice))[room["id"]]["unread"] == 0
    assert (await listed(bob))[room["id"]]["unread"] == 21


async def test_history_before_joining_is_not_unread(alice: Api, bob: Api, carol: Api) -> None:
    """Who joins or is added to a room starts with it read: only later messages are unread."""
    public = await alice.create_room("old news")
    private = await alice.create_room("old secrets", private=True)
    for n in range(3):
        await alice.post(public["id"], f"p{n}")
        await alice.post(private["id"], f"s{n}")
    await bob.join(public["id"])
    await alice.add(private["id"], carol.username)
    assert (await listed(bob))[public["id"]]["unread"] == 0
    assert (await listed(carol))[private["id"]]["unread"] == 0
    await alice.post(public["id"], "news")
    await alice.post(private["id"], "secret")
    entry = (await listed(bob))[public["id"]]
    assert (entry["last_seq"], entry["unread"]) == (4, 1)
    assert (await listed(carol))[private["id"]]["unread"] == 1


async def test_read_by_a_non_member_is_forbidden(
    alice: Api, bob: Api, server: ServerProcess
) -> None:
    """A `read` frame for a room the caller is not in is refused and stores nothing."""
    room = await alice.create_room("not yours", private=True)
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        reply = await ws.call({"type": "read", "room": room["id"], "seq": 1})
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
    finally:
        await ws.close()


# -- joining ------------------------------------------------------------------


async def test_join_public_room(alice: Api, bob: Api) -> None:
    """POST /api/rooms/{id}/join on a public room is 200 {"room"} and makes the caller a member."""
    room = await alice.create_room("open")
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    r = await bob.raw("POST", f"/api/rooms/{room['id']}/join")
    assert r.status_code == 200, r.text
    assert r.json() == {"room": room}
    assert room["id"] in await listed(bob)
    await bob.post(room["id"], "hello")
    again = await bob.raw("POST", f"/api/rooms/{room['id']}/join")
    assert again.status_code == 200  # joining twice is harmless
    assert len(await bob.history(room["id"])) == 1


async def test_join_private_room_is_forbidden(alice: Api, bob: Api) -> None:
    """Joining a private room is 403 forbidden and does not make the caller a member."""
    room = await alice.create_room("closed", private=True)
    assert error(await bob.raw("POST", f"/api/rooms/{room['id']}/join")) == (403, "forbidden")
    assert room["id"] not in await listed(bob)
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")


@pytest.mark.parametrize(
    "room_id", ["999999999", "0", "abc", "-1", "1" * 30, "%C2%B2", "%D9%A1", "1.0", "+1"]
)
async def test_join_unknown_room_is_404(alice: Api, room_id: str) -> None:
    """Joining a room that does not exist (or an id that cannot be one) is 404 not_found."""
    await alice.create_room("room one exists")  # so that an Arabic-Indic 1 could find it
    assert error(await alice.raw("POST", f"/api/rooms/{room_id}/join")) == (404, "not_found")


# -- members ------------------------------------------------------------------


async def test_member_adds_someone_to_a_private_room(alice: Api, bob: Api, carol: Api) -> None:
    """A member adds another user (200 {"room"}); the added user then reads, writes and adds."""
    room = await alice.create_room("invite only", private=True)
    await alice.post(room["id"], "before bob")
    r = await alice.raw(
        "POST", f"/api/rooms/{room['id']}/members", json={"username": bob.username.upper()}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"room": room}
    assert room["id"] in await listed(bob)
    assert [m["body"] for m in await bob.history(room["id"])] == ["before bob"]
    await bob.post(room["id"], "thanks")
    await bob.add(room["id"], carol.username)  # any member may add
    assert room["id"] in await listed(carol)
    again = await alice.raw(
        "POST", f"/api/rooms/{room['id']}/members", json={"username": bob.username}
    )
    assert again.status_code == 200  # adding a member again is harmless


async def test_add_member_errors(alice: Api, bob: Api, carol: Api) -> None:
    """A non-member cannot add (403); an unknown user or room is 404; a bad body is 422."""
    room = await alice.create_room("guarded", private=True)
    path = f"/api/rooms/{room['id']}/members"
    r = await bob.raw("POST", path, json={"username": carol.username})
    assert error(r) == (403, "forbidden")
    assert room["id"] not in await listed(carol)
    r = await alice.raw("POST", path, json={"username": "nobody" + secrets.token_hex(4)})
    assert error(r) == (404, "not_found")
    r = await alice.raw("POST", "/api/rooms/999999999/members", json={"username": bob.username})
    assert error(r) == (404, "not_found")
    r = await alice.raw("POST", path, json={"username": 7})
    assert error(r) == (422, "invalid")
    assert "username" in r.json()["error"]["message"]
    r = await alice.raw("POST", path, json={"username": "nul\x00"})
    assert error(r) == (422, "invalid"), r.text


async def test_member_removes_themselves(alice: Api, bob: Api) -> None:
    """DELETE /api/rooms/{id}/members/{own name} is 204; the room is then closed to them."""
    room = await alice.create_room("leaving")
    await bob.join(room["id"])
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert room["id"] not in await listed(bob)
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    r = await bob.raw("POST", f"/api/rooms/{room['id']}/messages", json={"body": "still here?"})
    assert error(r) == (403, "forbidden")


async def test_creator_removes_anyone(alice: Api, bob: Api) -> None:
    """The room's creator removes another member (204); they can no longer read it."""
    room = await alice.create_room("moderated", private=True)
    await alice.add(room["id"], bob.username)
    r = await alice.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username.upper()}")
    assert r.status_code == 204, r.text
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    assert error(await bob.raw("POST", f"/api/rooms/{room['id']}/join")) == (403, "forbidden")


async def test_non_creator_cannot_remove_others(alice: Api, bob: Api, carol: Api) -> None:
    """A member who did not create the room cannot remove someone else: 403, nothing changes."""
    room = await alice.create_room("peers")
    await bob.join(room["id"])
    await carol.join(room["id"])
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{carol.username}")
    assert error(r) == (403, "forbidden")
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{alice.username}")
    assert error(r) == (403, "forbidden")
    assert room["id"] in await listed(carol)
    assert room["id"] in await listed(alice)


async def test_remove_member_errors(alice: Api, bob: Api, carol: Api) -> None:
    """Removing a non-member or an unknown user is 404; an outsider is 403; no room is 404."""
    room = await alice.create_room("removals")
    base = f"/api/rooms/{room['id']}/members"
    assert error(await alice.raw("DELETE", f"{base}/{bob.username}")) == (404, "not_found")
    ghost = "ghost" + secrets.token_hex(4)
    assert error(await alice.raw("DELETE", f"{base}/{ghost}")) == (404, "not_found")
    assert error(await carol.raw("DELETE", f"{base}/{alice.username}")) == (403, "forbidden")
    r = await alice.raw("DELETE", f"/api/rooms/999999999/members/{bob.username}")
    assert error(r) == (404, "not_found")
    r = await alice.raw("DELETE", f"{base}/nul%00name")
    assert error(r) == (404, "not_found"), r.text


async def test_removed_members_socket_stops_receiving_the_room(
    alice: Api, bob: Api, server: ServerProcess
) -> None:
    """After removal, the member's joined socket gets no further message of that room."""
    room = await alice.create_room("kicked")
    other = await alice.create_room("still in")
    await bob.join(room["id"])
    await bob.join(other["id"])
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        await ws.join(room["id"])
        await ws.join(other["id"])
        await alice.post(room["id"], "before")
        assert [m["body"] for m in await ws.messages(room["id"], 1)] == ["before"]
        r = await alice.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
        assert r.status_code == 204
        await alice.post(room["id"], "after the removal")
        marker = await alice.post(other["id"], "marker")
        # Everything up to the marker: no message of the room bob was removed from.
        seen: list[dict[str, Any]] = []
        while True:
            frame = await ws.recv()
            seen.append(frame)
            if frame["type"] == "message" and frame["message"]["id"] == marker["id"]:
                break
        assert not [f for f in seen if f["type"] == "message" and f["room"] == room["id"]], seen
    finally:
        await ws.close()


# -- direct messages ----------------------------------------------------------


async def test_dm_is_the_same_private_room_from_either_side(
    alice: Api, bob: Api, carol: Api
) -> None:
    """POST /api/dms is 200 {"room"}: private, the same room every time and from both sides."""
    r = await alice.raw("POST", "/api/dms", json={"username": bob.username})
    assert r.status_code == 200, r.text
    room = r.json()["room"]
    room_shape(room)
    assert room["private"] is True
    again = (await alice.raw("POST", "/api/dms", json={"username": bob.username.upper()})).json()
    back = (await bob.raw("POST", "/api/dms", json={"username": alice.username})).json()
    assert again["room"]["id"] == room["id"]
    assert back["room"]["id"] == room["id"]
    assert room["id"] in await listed(alice)
    assert room["id"] in await listed(bob)
    await alice.post(room["id"], "just us")
    assert [m["body"] for m in await bob.history(room["id"])] == ["just us"]
    assert error(await carol.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    assert error(await carol.raw("POST", f"/api/rooms/{room['id']}/join")) == (403, "forbidden")
    other = (await alice.raw("POST", "/api/dms", json={"username": carol.username})).json()
    assert other["room"]["id"] != room["id"]


async def test_reopening_a_dm_brings_back_whoever_left(alice: Api, bob: Api) -> None:
    """Who left a DM is back in it when they open it again themselves (not when the other
    side does): it stays the pair's room, history included."""
    room = (await alice.raw("POST", "/api/dms", json={"username": bob.username})).json()["room"]
    await alice.post(room["id"], "before you left")
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
    assert r.status_code == 204
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    again = (await alice.raw("POST", "/api/dms", json={"username": bob.username})).json()
    assert again["room"]["id"] == room["id"]
    await alice.post(room["id"], "are you there?")
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    back = (await bob.raw("POST", "/api/dms", json={"username": alice.username})).json()
    assert back["room"]["id"] == room["id"]
    assert [m["body"] for m in await bob.history(room["id"])] == [
        "before you left",
        "are you there?",
    ]
    # Like anyone who joins, he comes back with the room read.
    assert (await listed(bob))[room["id"]]["unread"] == 0


async def test_dm_errors(alice: Api) -> None:
    """A DM with an unknown user is 404, with yourself 422 (in any case), a bad body 422."""
    r = await alice.raw("POST", "/api/dms", json={"username": "nobody" + secrets.token_hex(4)})
    assert error(r) == (404, "not_found")
    r = await alice.raw("POST", "/api/dms", json={"username": alice.username})
    assert error(r) == (422, "invalid")
    r = await alice.raw("POST", "/api/dms", json={"username": alice.username.upper()})
    assert error(r) == (422, "invalid")
    r = await alice.raw("POST", "/api/dms", json={})
    assert error(r) == (422, "invalid")
    assert "username" in r.json()["error"]["message"]


async def test_dm_with_a_bot(alice: Api, server: ServerProcess) -> None:
    """A user opens a DM with a bot, and the bot answers in it with its token."""
    name = "dmbot" + secrets.token_hex(4)
    made = (await alice.raw("POST", "/api/bots", json={"username": name})).json()
    bot = Api(server.url, made["token"], made["user"])
    try:
        room = (await alice.raw("POST", "/api/dms", json={"username": name})).json()["room"]
        same = (await bot.raw("POST", "/api/dms", json={"username": alice.username})).json()
        assert same["room"]["id"] == room["id"]
        await bot.post(room["id"], "beep")
        assert [m["body"] for m in await alice.history(room["id"])] == ["beep"]
    finally:
        await bot.close()


# -- presence -----------------------------------------------------------------


async def test_presence_lists_joined_users(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """GET /api/rooms/{id}/presence lists users joined on any process; 200 {"online": [...]}."""
    _, b = servers
    room = await alice.create_room("who is here")
    await bob.join(room["id"])
    r = await alice.raw("GET", f"/api/rooms/{room['id']}/presence")
    assert r.status_code == 200, r.text
    assert r.json() == {"online": []}
    ws = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws.join(room["id"])
        online = (await alice.raw("GET", f"/api/rooms/{room['id']}/presence")).json()["online"]
        assert online == [bob.user]
    finally:
        await ws.close()


async def test_presence_needs_membership(alice: Api, bob: Api) -> None:
    """Presence of a room is 403 for a non-member, even of a public room, and 404 for no room."""
    public = await alice.create_room("public presence")
    private = await alice.create_room("private presence", private=True)
    for room in (public, private):
        r = await bob.raw("GET", f"/api/rooms/{room['id']}/presence")
        assert error(r) == (403, "forbidden")
    assert error(await bob.raw("GET", "/api/rooms/999999999/presence")) == (404, "not_found")


async def test_password_never_appears_in_answers(alice: Api, bob: Api) -> None:
    """No room, member or DM answer carries a password or its hash."""
    room = await alice.create_room("leaks")
    await alice.add(room["id"], bob.username)
    dm = await alice.raw("POST", "/api/dms", json={"username": bob.username})
    for text in ((await alice.raw("GET", "/api/rooms")).text, dm.text):
        assert PASSWORD not in text
        assert "argon2" not in text
        assert "password" not in text
