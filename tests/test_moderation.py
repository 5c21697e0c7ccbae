"""Rooms people find and run (issue 13): directory, settings, roles, mutes, bans, audit.

Every test runs over the two processes of the `servers` fixture: the act on one,
its effect checked on the other. `test_access_matrix` walks every actor against
every action over HTTP and WebSocket and compares with the contract's answers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from .support import HANG, Api, ServerProcess, Ws

Servers = tuple[ServerProcess, ServerProcess]


def error(response: httpx.Response) -> tuple[int, str]:
    """The status and contract error code of an error response."""
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


@pytest.fixture
async def carol(server: ServerProcess) -> AsyncIterator[Api]:
    api = await Api.new_user(server.url, "carol")
    yield api
    await api.close()


async def listed(api: Api) -> dict[Any, dict[str, Any]]:
    body = await api.request("GET", "/api/rooms", 200)
    return {room["id"]: room for room in body["rooms"]}


async def set_role(owner: Api, room: int, username: str, role: str) -> None:
    await owner.request(
        "PUT", f"/api/rooms/{room}/members/{username}/role", 200, json={"role": role}
    )


async def mute(api: Api, room: int, username: str, seconds: int = 3600) -> None:
    await api.request(
        "POST", f"/api/rooms/{room}/mutes", 204, json={"username": username, "seconds": seconds}
    )


async def ban(api: Api, room: int, username: str, reason: str = "") -> None:
    await api.request(
        "POST", f"/api/rooms/{room}/bans", 204, json={"username": username, "reason": reason}
    )


async def audit(api: Api, room: int) -> list[dict[str, Any]]:
    return list((await api.request("GET", f"/api/rooms/{room}/audit", 200))["entries"])


async def directory(api: Api, **params: Any) -> list[dict[str, Any]]:
    return list((await api.request("GET", "/api/rooms/directory", 200, params=params))["rooms"])


# -- the directory --------------------------------------------------------------


async def test_directory_lists_public_rooms_by_size(alice: Api, bob: Api, carol: Api) -> None:
    """Public rooms matching q (any case, in name or topic), most members first; never
    private rooms or DMs."""
    tag = secrets.token_hex(4)
    small = await alice.create_room(f"Small {tag}")
    big = await alice.create_room(f"big {tag}")
    await bob.join(big["id"])
    await carol.join(big["id"])
    hidden = await alice.create_room(f"hidden {tag}", private=True)
    await alice.request("POST", "/api/dms", 200, json={"username": bob.username})
    by_topic = await alice.create_room("no tag in this name")
    await alice.request("PATCH", f"/api/rooms/{by_topic['id']}", 200, json={"topic": f"x{tag}x"})
    await bob.join(by_topic["id"])
    found = await directory(carol, q=tag.upper())
    assert [r["id"] for r in found] == [big["id"], by_topic["id"], small["id"]]
    assert [r["member_count"] for r in found] == [3, 2, 1]
    assert hidden["id"] not in [r["id"] for r in found]
    assert found[0]["topic"] == "" and found[0]["slow_mode"] == 0 and found[0]["dm"] is None
    assert [r["id"] for r in await directory(carol, q=tag, limit=1)] == [big["id"]]
    # Leaving moves a room down: member_count follows removals too.
    for api in (bob, carol):
        await api.request("DELETE", f"/api/rooms/{big['id']}/members/{api.username}", 204)
    found = await directory(carol, q=tag)
    assert (found[0]["id"], found[0]["member_count"]) == (by_topic["id"], 2)


async def test_directory_takes_wildcards_literally(alice: Api) -> None:
    """`%` and `_` in q match themselves, not anything."""
    tag = secrets.token_hex(4)
    plain = await alice.create_room(f"{tag}ab")
    odd = await alice.create_room(f"{tag}_%")
    assert [r["id"] for r in await directory(alice, q=f"{tag}_%")] == [odd["id"]]
    assert [r["id"] for r in await directory(alice, q=f"{tag}a")] == [plain["id"]]


async def test_directory_bad_input(alice: Api, anon: Api) -> None:
    """limit out of range is 422, a NUL in q is 422, no token is 401."""
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"q": "a\x00b"}):
        assert error(await alice.raw("GET", "/api/rooms/directory", params=params)) == (
            422,
            "invalid",
        )
    assert error(await anon.raw("GET", "/api/rooms/directory")) == (401, "unauthorized")


# -- settings -------------------------------------------------------------------


async def test_owner_and_moderators_change_settings_live_everywhere(
    servers: Servers, alice: Api, bob: Api, carol: Api
) -> None:
    """PATCH by the owner or a moderator answers the room and sends `room_updated` to
    joined connections on the other process; a member gets 403 and nothing changes."""
    _, b = servers
    room = (await alice.create_room("settings"))["id"]
    await bob.join(room)
    await carol.join(room)
    await set_role(alice, room, bob.username, "moderator")
    ws = await Ws.connect(b.ws_url, carol.token)
    await ws.join(room)
    body = await alice.request(
        "PATCH", f"/api/rooms/{room}", 200, json={"topic": "plans", "slow_mode": 30}
    )
    assert body["room"]["topic"] == "plans" and body["room"]["slow_mode"] == 30
    frame = await ws.expect("room_updated", skip=("presence_diff",))
    assert frame["room"]["id"] == room and frame["room"]["topic"] == "plans"
    await bob.request("PATCH", f"/api/rooms/{room}", 200, json={"name": "renamed"})
    frame = await ws.expect("room_updated", skip=("presence_diff",))
    assert frame["room"]["name"] == "renamed" and frame["room"]["slow_mode"] == 30
    r = await carol.raw("PATCH", f"/api/rooms/{room}", json={"topic": "mine now"})
    assert error(r) == (403, "forbidden")
    mine = (await listed(carol))[room]
    assert (mine["name"], mine["topic"], mine["slow_mode"], mine["role"]) == (
        "renamed",
        "plans",
        30,
        "member",
    )
    assert (await listed(alice))[room]["role"] == "owner"
    assert (await listed(bob))[room]["role"] == "moderator"


@pytest.mark.parametrize(
    "payload",
    [
        {"slow_mode": -1},
        {"slow_mode": 21601},
        {"slow_mode": "5"},
        {"topic": "x" * 501},
        {"topic": "a\x00"},
        {"name": "   "},
        {"name": ""},
        {},
        {"private": True},
    ],
)
async def test_settings_bad_input_changes_nothing(alice: Api, payload: dict[str, Any]) -> None:
    """Out-of-range or malformed settings are 422 and the room stays as it was."""
    room = (await alice.create_room("strict"))["id"]
    assert error(await alice.raw("PATCH", f"/api/rooms/{room}", json=payload)) == (422, "invalid")
    mine = (await listed(alice))[room]
    assert (mine["name"], mine["topic"], mine["slow_mode"]) == ("strict", "", 0)
    assert await audit(alice, room) == []


# -- roles ----------------------------------------------------------------------


async def test_member_list_and_roles(servers: Servers, alice: Api, bob: Api, carol: Api) -> None:
    """The member list pages by user id with roles; only the owner sets roles; nobody
    changes the owner's; unknown users and non-members are 404."""
    _, b = servers
    room = (await alice.create_room("roles"))["id"]
    await bob.join(room)
    await carol.join(room)
    on_b = carol.on(b.url)
    try:
        await set_role(alice, room, bob.username, "moderator")
        body = await on_b.request("GET", f"/api/rooms/{room}/members", 200)
        roles = {m["user"]["username"]: m["role"] for m in body["members"]}
        assert roles == {
            alice.username: "owner",
            bob.username: "moderator",
            carol.username: "member",
        }
        ids = [m["user"]["id"] for m in body["members"]]
        assert ids == sorted(ids)
        page = await on_b.request(
            "GET", f"/api/rooms/{room}/members", 200, params={"after": ids[0], "limit": 1}
        )
        assert [m["user"]["id"] for m in page["members"]] == [ids[1]]
        path = f"/api/rooms/{room}/members/{{}}/role"
        moderator = {"role": "moderator"}
        r = await bob.raw("PUT", path.format(carol.username), json=moderator)
        assert error(r) == (403, "forbidden")
        r = await alice.raw("PUT", path.format(alice.username), json={"role": "member"})
        assert error(r) == (403, "forbidden")
        r = await alice.raw("PUT", path.format("nobody-" + secrets.token_hex(3)), json=moderator)
        assert error(r) == (404, "not_found")
        r = await alice.raw("PUT", path.format(carol.username), json={"role": "owner"})
        assert error(r) == (422, "invalid")
        assert error(await alice.raw("GET", f"/api/rooms/{room}/members?limit=1001")) == (
            422,
            "invalid",
        )
        outsider = await Api.new_user(alice.base_url, "out")
        try:
            r = await alice.raw("PUT", path.format(outsider.username), json=moderator)
            assert error(r) == (404, "not_found")
            r = await outsider.raw("GET", f"/api/rooms/{room}/members")
            assert error(r) == (403, "forbidden")
        finally:
            await outsider.close()
        await set_role(alice, room, bob.username, "member")
        entries = await audit(alice, room)
        assert [(e["action"], e["target"]["username"], e["detail"]) for e in entries] == [
            ("role", bob.username, {"role": "member"}),
            ("role", bob.username, {"role": "moderator"}),
        ]
    finally:
        await on_b.close()


# -- mutes ----------------------------------------------------------------------


async def test_mute_refuses_send_and_edit_everywhere(
    servers: Servers, alice: Api, bob: Api
) -> None:
    """A muted member's send (WebSocket on the other process, and HTTP) and edit get
    `forbidden` and store nothing; unmuting lets them send again."""
    _, b = servers
    room = (await alice.create_room("mutes"))["id"]
    await bob.join(room)
    before = await bob.post(room, "before the mute")
    await mute(alice, room, bob.username, 600)
    ws = await Ws.connect(b.ws_url, bob.token)
    reply = await ws.call({"type": "send", "room": room, "body": "muted?"})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
    reply = await ws.call({"type": "edit", "room": room, "id": before["id"], "body": "changed"})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
    r = await bob.raw("POST", f"/api/rooms/{room}/messages", json={"body": "muted?"})
    assert error(r) == (403, "forbidden")
    assert [m["body"] for m in await alice.history(room)] == ["before the mute"]
    # Reading and deleting one's own message are no sending.
    reply = await ws.call({"type": "delete", "room": room, "id": before["id"]})
    assert reply["type"] == "ok", reply
    await alice.request("DELETE", f"/api/rooms/{room}/mutes/{bob.username}", 204)
    reply = await ws.call({"type": "send", "room": room, "body": "back"})
    assert reply["type"] == "ok", reply
    actions = [(e["action"], e["target"]["username"]) for e in await audit(alice, room)]
    assert actions == [("unmute", bob.username), ("mute", bob.username)]


async def test_mute_ends_by_itself(alice: Api, bob: Api) -> None:
    """A mute of one second no longer refuses once its end time has passed."""
    room = (await alice.create_room("short mute"))["id"]
    await bob.join(room)
    await mute(alice, room, bob.username, 1)
    r = await bob.raw("POST", f"/api/rooms/{room}/messages", json={"body": "too soon"})
    assert error(r) == (403, "forbidden")
    deadline = asyncio.get_running_loop().time() + HANG
    while True:
        r = await bob.raw("POST", f"/api/rooms/{room}/messages", json={"body": "later"})
        if r.status_code == 201 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)  # polling a clock-based end, no event to await
    assert r.status_code == 201, r.text


async def test_mute_bad_input_changes_nothing(alice: Api, bob: Api) -> None:
    """Out-of-range seconds are 422, unknown users 404, the owner and moderators 403,
    a DM 403; nobody is muted afterwards."""
    room = (await alice.create_room("mute input"))["id"]
    await bob.join(room)
    path = f"/api/rooms/{room}/mutes"
    for seconds in (0, -5, 2592001, "60", None):
        r = await alice.raw("POST", path, json={"username": bob.username, "seconds": seconds})
        assert error(r) == (422, "invalid"), seconds
    r = await alice.raw(
        "POST", path, json={"username": "ghost-" + secrets.token_hex(3), "seconds": 9}
    )
    assert error(r) == (404, "not_found")
    r = await alice.raw("POST", path, json={"username": alice.username, "seconds": 60})
    assert error(r) == (403, "forbidden")
    await set_role(alice, room, bob.username, "moderator")
    r = await alice.raw("POST", path, json={"username": bob.username, "seconds": 60})
    assert error(r) == (403, "forbidden")
    r = await bob.raw("POST", path, json={"username": alice.username, "seconds": 60})
    assert error(r) == (403, "forbidden")
    dm = (await alice.request("POST", "/api/dms", 200, json={"username": bob.username}))["room"]
    r = await alice.raw(
        "POST", f"/api/rooms/{dm['id']}/mutes", json={"username": bob.username, "seconds": 60}
    )
    assert error(r) == (403, "forbidden")
    await bob.post(room, "still speaking")
    await bob.post(dm["id"], "and here")
    assert [e["action"] for e in await audit(alice, room)] == ["role"]


# -- bans -----------------------------------------------------------------------


async def test_ban_removes_everywhere_and_keeps_out(
    servers: Servers, alice: Api, bob: Api, carol: Api
) -> None:
    """A ban sends `removed` to the member's sockets on both processes, and joining
    (HTTP or WebSocket) or being added is forbidden until unbanned."""
    a, b = servers
    room = (await alice.create_room("bans"))["id"]
    await bob.join(room)
    await carol.join(room)
    here, there = await Ws.connect(a.ws_url, bob.token), await Ws.connect(b.ws_url, bob.token)
    await here.join(room)
    await there.join(room)
    await ban(alice, room, bob.username, "spam")
    for ws in (here, there):
        assert (await ws.expect("removed", skip=("presence_diff",)))["room"] == room
    assert room not in await listed(bob)
    assert error(await bob.raw("POST", f"/api/rooms/{room}/join")) == (403, "forbidden")
    reply = await there.call({"type": "join", "room": room})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
    r = await carol.raw("POST", f"/api/rooms/{room}/members", json={"username": bob.username})
    assert error(r) == (403, "forbidden")
    bans = (await alice.request("GET", f"/api/rooms/{room}/bans", 200))["bans"]
    assert [(x["user"]["id"], x["by"]["id"], x["reason"]) for x in bans] == [
        (bob.user["id"], alice.user["id"], "spam")
    ]
    assert error(await carol.raw("GET", f"/api/rooms/{room}/bans")) == (403, "forbidden")
    await alice.request("DELETE", f"/api/rooms/{room}/bans/{bob.username}", 204)
    assert error(await alice.raw("DELETE", f"/api/rooms/{room}/bans/{bob.username}")) == (
        404,
        "not_found",
    )
    await bob.join(room)
    assert (await listed(bob))[room]["role"] == "member"
    entries = await audit(alice, room)
    assert [(e["action"], e["detail"]) for e in entries] == [
        ("unban", {}),
        ("ban", {"reason": "spam"}),
    ]
    assert all(e["actor"]["id"] == alice.user["id"] for e in entries)


async def test_a_join_racing_a_ban_is_refused(database_url: str, alice: Api, bob: Api) -> None:
    """A join that read "not banned" before a ban committed, and waited on the room's lock
    meanwhile, is refused once the ban commits: a banned user never becomes a member."""
    room = (await alice.create_room("ban race"))["id"]
    conn = await asyncpg.connect(database_url)
    try:
        ban = conn.transaction()
        await ban.start()
        # What store.ban does, held open: the room's lock, then the ban row.
        await conn.execute("SELECT id FROM rooms WHERE id = $1 FOR UPDATE", room)
        await conn.execute(
            "INSERT INTO bans (room_id, user_id, by_id) VALUES ($1, $2, $3)",
            room,
            bob.user["id"],
            alice.user["id"],
        )
        join = asyncio.create_task(bob.raw("POST", f"/api/rooms/{room}/join"))
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO members%'"
        )
        # Another connection: inside a transaction pg_stat_activity is read once.
        watcher = await asyncpg.connect(database_url)
        try:
            for _ in range(int(HANG / 0.02)):
                if await watcher.fetchval(waiting):
                    break
                await asyncio.sleep(0.02)  # polling PostgreSQL's lock table: no event to await
            else:
                raise AssertionError("the join never waited on the room's lock")
        finally:
            await watcher.close()
        await ban.commit()
        assert error(await join) == (403, "forbidden")
    finally:
        await conn.close()
    assert room not in await listed(bob)
    members = (await alice.request("GET", f"/api/rooms/{room}/members", 200))["members"]
    assert [m["user"]["id"] for m in members] == [alice.user["id"]]


async def test_ban_bad_input_changes_nothing(alice: Api, bob: Api, carol: Api) -> None:
    """Nobody bans the owner or a moderator (403), an unknown user is 404, a member
    cannot ban (403), a DM has no bans (403): nobody leaves."""
    room = (await alice.create_room("ban input"))["id"]
    await bob.join(room)
    await carol.join(room)
    await set_role(alice, room, bob.username, "moderator")
    path = f"/api/rooms/{room}/bans"
    assert error(await bob.raw("POST", path, json={"username": alice.username})) == (
        403,
        "forbidden",
    )
    assert error(await alice.raw("POST", path, json={"username": bob.username})) == (
        403,
        "forbidden",
    )
    assert error(await carol.raw("POST", path, json={"username": bob.username})) == (
        403,
        "forbidden",
    )
    r = await alice.raw("POST", path, json={"username": "ghost-" + secrets.token_hex(3)})
    assert error(r) == (404, "not_found")
    r = await alice.raw("POST", path, json={"username": carol.username, "reason": "x" * 501})
    assert error(r) == (422, "invalid")
    dm = (await alice.request("POST", "/api/dms", 200, json={"username": carol.username}))["room"]
    r = await alice.raw("POST", f"/api/rooms/{dm['id']}/bans", json={"username": carol.username})
    assert error(r) == (403, "forbidden")
    r = await alice.raw("DELETE", f"/api/rooms/{dm['id']}/members/{carol.username}")
    assert error(r) == (403, "forbidden")
    members = (await alice.request("GET", f"/api/rooms/{room}/members", 200))["members"]
    assert len(members) == 3
    assert dm["id"] in await listed(carol)
    assert [e["action"] for e in await audit(alice, room)] == ["role"]


# -- removals and deletes ---------------------------------------------------------


async def test_moderators_remove_and_delete(
    servers: Servers, alice: Api, bob: Api, carol: Api
) -> None:
    """A moderator deletes anyone's message (`deleted` on the other process) and removes
    a member, not another moderator nor the owner; both acts are audited."""
    _, b = servers
    room = (await alice.create_room("mods"))["id"]
    await bob.join(room)
    await carol.join(room)
    await set_role(alice, room, bob.username, "moderator")
    dave = await Api.new_user(alice.base_url, "dave")
    try:
        await dave.join(room)
        await set_role(alice, room, dave.username, "moderator")
        said = await carol.post(room, "rude")
        watcher = await Ws.connect(b.ws_url, alice.token)
        await watcher.join(room)
        moderator = await Ws.connect(b.ws_url, bob.token)
        reply = await moderator.call({"type": "delete", "room": room, "id": said["id"]})
        assert reply["type"] == "ok", reply
        frame = await watcher.expect("deleted", skip=("presence_diff",))
        assert (frame["id"], frame["seq"]) == (said["id"], said["seq"])
        path = f"/api/rooms/{room}/members/{{}}"
        assert error(await bob.raw("DELETE", path.format(dave.username))) == (403, "forbidden")
        assert error(await bob.raw("DELETE", path.format(alice.username))) == (403, "forbidden")
        assert error(await carol.raw("DELETE", path.format(bob.username))) == (403, "forbidden")
        await bob.request("DELETE", path.format(carol.username), 204)
        await alice.request("DELETE", path.format(dave.username), 204)
        entries = await audit(bob, room)
        assert [(e["action"], e["actor"]["id"], e["target"]["id"]) for e in entries[:3]] == [
            ("remove", alice.user["id"], dave.user["id"]),
            ("remove", bob.user["id"], carol.user["id"]),
            ("delete", bob.user["id"], carol.user["id"]),
        ]
        assert entries[2]["detail"] == {"id": said["id"], "seq": said["seq"]}
    finally:
        await dave.close()


async def test_dm_has_no_moderation(alice: Api, bob: Api) -> None:
    """Both people of a DM are members: neither deletes the other's messages, changes
    settings or reads an audit log."""
    dm = (await alice.request("POST", "/api/dms", 200, json={"username": bob.username}))["room"]
    room = dm["id"]
    said = await bob.post(room, "mine")
    ws = await Ws.connect(alice.base_url.replace("http", "ws") + "/ws", alice.token)
    reply = await ws.call({"type": "delete", "room": room, "id": said["id"]})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
    assert error(await alice.raw("PATCH", f"/api/rooms/{room}", json={"topic": "x"})) == (
        403,
        "forbidden",
    )
    assert error(await alice.raw("GET", f"/api/rooms/{room}/audit")) == (403, "forbidden")
    assert {
        m["role"]
        for m in (await alice.request("GET", f"/api/rooms/{room}/members", 200))["members"]
    } == {"member"}
    assert (await listed(alice))[room]["role"] == "member"
    assert [m["body"] for m in await alice.history(room)] == ["mine"]


# -- slow mode --------------------------------------------------------------------


async def test_slow_mode_refuses_fast_members_only(servers: Servers, alice: Api, bob: Api) -> None:
    """Under slow mode a member's second message is `rate_limited` (with Retry-After over
    HTTP, and over WebSocket on the other process) and nothing is stored; the owner is
    exempt."""
    _, b = servers
    room = (await alice.create_room("slow"))["id"]
    await bob.join(room)
    await alice.request("PATCH", f"/api/rooms/{room}", 200, json={"slow_mode": 3600})
    await bob.post(room, "one")
    r = await bob.raw("POST", f"/api/rooms/{room}/messages", json={"body": "two"})
    assert error(r) == (429, "rate_limited")
    assert 3500 < int(r.headers["retry-after"]) <= 3600
    ws = await Ws.connect(b.ws_url, bob.token)
    reply = await ws.call({"type": "send", "room": room, "body": "three"})
    assert (reply["type"], reply["code"]) == ("error", "rate_limited"), reply
    await alice.post(room, "owner a")
    await alice.post(room, "owner b")
    assert [m["body"] for m in await alice.history(room)] == ["one", "owner a", "owner b"]


async def test_retries_stay_idempotent_under_slow_mode_and_mutes(alice: Api, bob: Api) -> None:
    """A retried send (same client_id) gets its first message back under slow mode and
    after a mute, and stores nothing new."""
    room = (await alice.create_room("retries"))["id"]
    await bob.join(room)
    await alice.request("PATCH", f"/api/rooms/{room}", 200, json={"slow_mode": 3600})
    first = await bob.post(room, "once", client_id="c-1")
    assert await bob.post(room, "once", client_id="c-1") == first
    await mute(alice, room, bob.username)
    assert await bob.post(room, "once", client_id="c-1") == first
    r = await bob.raw(
        "POST", f"/api/rooms/{room}/messages", json={"body": "new", "client_id": "c-2"}
    )
    assert error(r) == (403, "forbidden")
    assert [m["id"] for m in await alice.history(room)] == [first["id"]]


async def test_slow_mode_holds_under_racing_sends(servers: Servers, alice: Api, bob: Api) -> None:
    """Twenty sends of one member racing on both processes (batched and single inserts)
    store exactly one message under slow mode."""
    a, b = servers
    room = (await alice.create_room("race"))["id"]
    await bob.join(room)
    await alice.request("PATCH", f"/api/rooms/{room}", 200, json={"slow_mode": 3600})
    sockets = [await Ws.connect(url, bob.token) for url in (a.ws_url, b.ws_url) * 2]

    async def send(ws: Ws, n: int) -> str:
        reply = await ws.call({"type": "send", "room": room, "body": f"m{n}"})
        return "ok" if reply["type"] == "ok" else str(reply["code"])

    results = await asyncio.gather(*(send(sockets[n % 4], n) for n in range(20)))
    assert sorted(results) == ["ok"] + ["rate_limited"] * 19, results
    assert len(await alice.history(room)) == 1


async def test_mute_racing_sends_lets_nothing_through_after_it(
    servers: Servers, alice: Api, bob: Api
) -> None:
    """Sends flooding in from both processes while the member is muted: once the mute's
    204 is back, every send that starts afterwards is refused (at most the one in
    flight on each socket may still be stored)."""
    a, b = servers
    room = (await alice.create_room("mute race"))["id"]
    await bob.join(room)
    sockets = [await Ws.connect(url, bob.token) for url in (a.ws_url, b.ws_url)]
    muted = asyncio.Event()
    # Per socket: the replies that arrived after the mute's 204.
    after: list[list[dict[str, Any]]] = [[] for _ in sockets]

    async def flood(ws: Ws, replies: list[dict[str, Any]]) -> None:
        n = 0
        while len(replies) < 6:
            reply = await ws.call({"type": "send", "room": room, "body": f"f{n}"})
            if muted.is_set():
                replies.append(reply)
            n += 1

    floods = [asyncio.create_task(flood(ws, out)) for ws, out in zip(sockets, after, strict=True)]
    await bob.post(room, "first")
    await mute(alice, room, bob.username)
    muted.set()
    await asyncio.gather(*floods)
    for replies in after:
        # The first may be a send that was in flight when the 204 came back.
        assert [(r["type"], r.get("code")) for r in replies[1:]] == [("error", "forbidden")] * 5
    r = await bob.raw("POST", f"/api/rooms/{room}/messages", json={"body": "after"})
    assert error(r) == (403, "forbidden")


# -- the access matrix ------------------------------------------------------------

ACTORS = ("owner", "moderator", "member", "muted", "banned", "outsider")
OK, NO = "ok", "forbidden"
# The contract's answer for each action (rows) and actor (columns, in ACTORS order).
EXPECTED: dict[str, tuple[str, ...]] = {
    "read": (OK, OK, OK, OK, NO, NO),
    "presence": (OK, OK, OK, OK, NO, NO),
    "members": (OK, OK, OK, OK, NO, NO),
    "join": (OK, OK, OK, OK, NO, OK),
    "ws_join": (OK, OK, OK, OK, NO, OK),
    "send": (OK, OK, OK, NO, NO, NO),
    "ws_send": (OK, OK, OK, NO, NO, NO),
    "ws_read": (OK, OK, OK, OK, NO, NO),
    "ws_edit": (OK, OK, OK, NO, NO, NO),
    "ws_delete_own": (OK, OK, OK, OK, NO, NO),
    "ws_delete_any": (OK, OK, NO, NO, NO, NO),
    "add": (OK, OK, OK, OK, NO, NO),
    "leave": (OK, OK, OK, OK, NO, NO),
    "remove": (OK, OK, NO, NO, NO, NO),
    "update": (OK, OK, NO, NO, NO, NO),
    "set_role": (OK, NO, NO, NO, NO, NO),
    "mute": (OK, OK, NO, NO, NO, NO),
    "unmute": (OK, OK, NO, NO, NO, NO),
    "ban": (OK, OK, NO, NO, NO, NO),
    "unban": (OK, OK, NO, NO, NO, NO),
    "bans": (OK, OK, NO, NO, NO, NO),
    "audit": (OK, OK, NO, NO, NO, NO),
}


@dataclass
class Cell:
    """One room set up for one actor and one action."""

    room: int
    # Each member's message in the room, by cast name.
    said: dict[str, int]


async def test_access_matrix(servers: Servers, server: ServerProcess) -> None:
    """Every actor (owner, moderator, member, muted member, banned user, non-member)
    against every action, over HTTP and WebSocket (on the other process): the
    contract's answer, and a refusal's code is `forbidden`."""
    _, b = servers
    names = (*ACTORS, "victim", "newcomer")
    cast = {name: await Api.new_user(server.url, name[:5]) for name in names}
    sockets = {name: await Ws.connect(b.ws_url, cast[name].token) for name in ACTORS}
    gate = asyncio.Semaphore(6)
    try:

        async def setup() -> Cell:
            owner = cast["owner"]
            room = (await owner.create_room("matrix"))["id"]
            for name in ("moderator", "member", "muted", "banned", "victim"):
                await cast[name].join(room)
            await set_role(owner, room, cast["moderator"].username, "moderator")
            said = {}
            for name in ("owner", "moderator", "member", "muted", "victim"):
                said[name] = (await cast[name].post(room, f"by {name}"))["id"]
            await mute(owner, room, cast["muted"].username)
            await ban(owner, room, cast["banned"].username)
            return Cell(room, said)

        def http(method: str, path: str, **kw: Any) -> Callable[[Api, Cell], Awaitable[str]]:
            async def run(api: Api, cell: Cell) -> str:
                r = await api.raw(method, path.format(room=cell.room, **usernames), **kw)
                if r.status_code < 300:
                    return OK
                return str(r.json()["error"]["code"])

            return run

        def ws(
            frame: Callable[[str, Cell], dict[str, Any]],
        ) -> Callable[[str, Cell], Awaitable[str]]:
            async def run(actor: str, cell: Cell) -> str:
                reply = await sockets[actor].call(frame(actor, cell))
                if reply["type"] == "ok":
                    if frame(actor, cell)["type"] == "join":
                        await sockets[actor].call({"type": "leave", "room": cell.room})
                    return OK
                return str(reply["code"])

            return run

        usernames = {f"{k}_name": v.username for k, v in cast.items()}
        own = {"ws_edit", "ws_delete_own"}
        actions: dict[str, Any] = {
            "read": http("GET", "/api/rooms/{room}/messages"),
            "presence": http("GET", "/api/rooms/{room}/presence"),
            "members": http("GET", "/api/rooms/{room}/members"),
            "join": http("POST", "/api/rooms/{room}/join"),
            "send": http("POST", "/api/rooms/{room}/messages", json={"body": "hi"}),
            "add": http(
                "POST", "/api/rooms/{room}/members", json={"username": cast["newcomer"].username}
            ),
            "remove": http("DELETE", "/api/rooms/{room}/members/{victim_name}"),
            "update": http("PATCH", "/api/rooms/{room}", json={"topic": "t"}),
            "set_role": http(
                "PUT", "/api/rooms/{room}/members/{victim_name}/role", json={"role": "moderator"}
            ),
            "mute": http(
                "POST",
                "/api/rooms/{room}/mutes",
                json={"username": cast["victim"].username, "seconds": 60},
            ),
            "unmute": http("DELETE", "/api/rooms/{room}/mutes/{muted_name}"),
            "ban": http(
                "POST", "/api/rooms/{room}/bans", json={"username": cast["victim"].username}
            ),
            "unban": http("DELETE", "/api/rooms/{room}/bans/{banned_name}"),
            "bans": http("GET", "/api/rooms/{room}/bans"),
            "audit": http("GET", "/api/rooms/{room}/audit"),
            "ws_join": ws(lambda a, c: {"type": "join", "room": c.room}),
            "ws_send": ws(lambda a, c: {"type": "send", "room": c.room, "body": "hi"}),
            "ws_read": ws(lambda a, c: {"type": "read", "room": c.room, "seq": 1}),
            "ws_edit": ws(
                lambda a, c: {"type": "edit", "room": c.room, "id": c.said[a], "body": "e"}
            ),
            "ws_delete_own": ws(lambda a, c: {"type": "delete", "room": c.room, "id": c.said[a]}),
            "ws_delete_any": ws(
                lambda a, c: {"type": "delete", "room": c.room, "id": c.said["victim"]}
            ),
        }
        assert set(actions) | {"leave"} == set(EXPECTED)

        async def one(action: str, index: int, actor: str) -> tuple[str, str, str, str]:
            async with gate:
                cell = await setup()
                if action in own and actor not in cell.said:
                    cell.said[actor] = cell.said["victim"]  # they have none: try someone's
                if action == "leave":
                    name = cast[actor].username
                    got = await http("DELETE", f"/api/rooms/{{room}}/members/{name}")(
                        cast[actor], cell
                    )
                elif action.startswith("ws_"):
                    got = await actions[action](actor, cell)
                else:
                    got = await actions[action](cast[actor], cell)
                return action, actor, EXPECTED[action][index], got

        results = await asyncio.gather(
            *(
                one(action, index, actor)
                for action in EXPECTED
                for index, actor in enumerate(ACTORS)
            )
        )
        wrong = [r for r in results if r[2] != r[3]]
        assert not wrong, "\n".join(
            f"{a} by {who}: expected {e}, got {g}" for a, who, e, g in wrong
        )
    finally:
        for api in cast.values():
            await api.close()


# -- the SDK ------------------------------------------------------------------------


async def test_sdk_runs_a_room(servers: Servers, alice: Api, bob: Api) -> None:
    """HttpApi's moderation calls return typed values, and ChatClient yields `room_updated`."""
    from chat.client import ChatClient, HttpApi, RoomUpdatedFrame, ServerError

    a, b = servers
    owner = HttpApi(a.url, alice.token)
    member = HttpApi(b.url, bob.token)
    client = ChatClient(b.ws_url, bob.token)
    try:
        tag = secrets.token_hex(4)
        room = await owner.create_room(f"sdk {tag}")
        await member.join_room(room.id)
        await client.__aenter__()
        await client.join(room.id)
        updated = await owner.update_room(room.id, topic="typed", slow_mode=5)
        assert (updated.topic, updated.slow_mode) == ("typed", 5)
        while not isinstance(
            event := await asyncio.wait_for(anext(client), HANG), RoomUpdatedFrame
        ):
            pass
        assert event.room.topic == "typed"
        [found] = await member.directory(tag)
        assert (found.id, found.member_count) == (room.id, 2)
        moderator = await owner.set_role(room.id, bob.username, "moderator")
        assert (moderator.user.id, moderator.role) == (bob.user["id"], "moderator")
        assert [m.role for m in await member.members(room.id)] == ["owner", "moderator"]
        await owner.set_role(room.id, bob.username, "member")
        await owner.mute(room.id, bob.username, 60)
        with pytest.raises(ServerError) as refused:
            await member.post(room.id, "muted")
        assert refused.value.code == "forbidden"
        await owner.unmute(room.id, bob.username)
        await owner.ban(room.id, bob.username, "bye")
        assert [(x.user.id, x.reason) for x in await owner.bans(room.id)] == [
            (bob.user["id"], "bye")
        ]
        await owner.unban(room.id, bob.username)
        entries = await owner.audit(room.id)
        assert [e.action for e in entries] == [
            "unban",
            "ban",
            "unmute",
            "mute",
            "role",
            "role",
            "update",
        ]
    finally:
        await client.__aexit__(None, None, None)
        await owner.aclose()
        await member.aclose()
