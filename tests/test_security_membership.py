"""Membership without consent and rooms that pose as DMs (issue 10: F5, F13, bot tokens).

The server says which rooms are DMs (`dm`, from the pair's key, never the name);
DMs have no powers over the other person; who may put someone in a room is
capped per target across processes and refused to anyone they blocked; a DM
someone left stays left; a bot's owner rotates or revokes its token everywhere.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chat.client import HttpApi, ServerError

from .support import Api, ServerProcess, Ws, processes

# The per-target cap of the `capped` processes: small, so the tests reach it quickly.
CAP = 5


def error(response: httpx.Response) -> tuple[int, str]:
    """The status and contract error code of an error response."""
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


async def listed(api: Api) -> dict[Any, dict[str, Any]]:
    """The caller's rooms from GET /api/rooms, by id."""
    body = await api.request("GET", "/api/rooms", 200)
    return {room["id"]: room for room in body["rooms"]}


async def open_dm(api: Api, username: str) -> dict[str, Any]:
    body = await api.request("POST", "/api/dms", 200, json={"username": username})
    return dict(body["room"])


@pytest.fixture
async def carol(server: ServerProcess) -> AsyncIterator[Api]:
    api = await Api.new_user(server.url, "carol")
    yield api
    await api.close()


@pytest.fixture(scope="module")
async def capped(server_env: dict[str, str]) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two more processes of the service whose per-target add cap is CAP an hour."""
    env = {**server_env, "MEMBER_ADDS_PER_HOUR": str(CAP)}
    async with processes(env, "capped-a", "capped-b") as (a, b):
        yield a, b


# -- F5: a room can pose as a DM ------------------------------------------------


async def test_a_room_named_like_a_dm_is_no_dm(alice: Api, bob: Api) -> None:
    """A private room named "alice & bob" has `dm: null` everywhere a room is returned."""
    made = await alice.request(
        "POST",
        "/api/rooms",
        201,
        json={"name": f"{alice.username} & {bob.username}", "private": True},
    )
    assert made["room"]["dm"] is None
    added = await alice.request(
        "POST", f"/api/rooms/{made['room']['id']}/members", 200, json={"username": bob.username}
    )
    assert added["room"]["dm"] is None
    assert (await listed(bob))[made["room"]["id"]]["dm"] is None
    public = await alice.create_room(f"{alice.username} & {bob.username}")
    joined = await bob.request("POST", f"/api/rooms/{public['id']}/join", 200)
    assert public["dm"] is None and joined["room"]["dm"] is None


async def test_a_real_dm_names_the_other_person_for_each_side(alice: Api, bob: Api) -> None:
    """POST /api/dms and GET /api/rooms give each side `dm` = the other person."""
    room = await open_dm(alice, bob.username)
    assert room["dm"] == bob.user
    assert (await open_dm(bob, alice.username))["dm"] == alice.user
    assert (await listed(alice))[room["id"]]["dm"] == bob.user
    assert (await listed(bob))[room["id"]]["dm"] == alice.user


# -- F13 (b): DMs have no moderation ---------------------------------------------


async def test_nobody_removes_the_other_person_from_a_dm(alice: Api, bob: Api) -> None:
    """The one who opened a DM cannot remove the other (403); each can leave it themselves."""
    room = await open_dm(alice, bob.username)
    r = await alice.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
    assert error(r) == (403, "forbidden")
    assert room["id"] in await listed(bob)
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{alice.username}")
    assert error(r) == (403, "forbidden")
    r = await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
    assert r.status_code == 204


async def test_nobody_deletes_the_others_message_in_a_dm(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """In a DM the opener cannot delete the other's message (403), only their own."""
    room = await open_dm(alice, bob.username)
    theirs = await bob.post(room["id"], "mine, not yours")
    mine = await alice.post(room["id"], "my own")
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        reply = await ws.call({"type": "delete", "room": room["id"], "id": theirs["id"]})
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        reply = await ws.call({"type": "delete", "room": room["id"], "id": mine["id"]})
        assert reply["type"] == "ok", reply
    finally:
        await ws.close()
    bodies = [m["body"] for m in await bob.history(room["id"])]
    assert bodies == ["mine, not yours", None]


async def test_nobody_adds_a_third_person_to_a_dm(alice: Api, bob: Api, carol: Api) -> None:
    """A DM stays the pair's: adding someone to it is 403 and they cannot read it."""
    room = await open_dm(alice, bob.username)
    r = await alice.raw(
        "POST", f"/api/rooms/{room['id']}/members", json={"username": carol.username}
    )
    assert error(r) == (403, "forbidden")
    assert error(await carol.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")


# -- F13 (c): blocks --------------------------------------------------------------


async def test_block_unblock_and_list(alice: Api, bob: Api, carol: Api, anon: Api) -> None:
    """PUT and DELETE /api/blocks/{username} are 204 and idempotent; GET lists the blocked."""
    assert (await alice.raw("PUT", f"/api/blocks/{bob.username.upper()}")).status_code == 204
    assert (await alice.raw("PUT", f"/api/blocks/{bob.username}")).status_code == 204
    assert (await alice.raw("PUT", f"/api/blocks/{carol.username}")).status_code == 204
    got = await alice.request("GET", "/api/blocks", 200)
    assert sorted(got["users"], key=lambda u: u["id"]) == [bob.user, carol.user]
    assert (await bob.request("GET", "/api/blocks", 200)) == {"users": []}
    assert (await alice.raw("DELETE", f"/api/blocks/{bob.username}")).status_code == 204
    assert (await alice.raw("DELETE", f"/api/blocks/{bob.username}")).status_code == 204
    assert (await alice.request("GET", "/api/blocks", 200)) == {"users": [carol.user]}
    nobody = "nobody" + secrets.token_hex(4)
    assert error(await alice.raw("PUT", f"/api/blocks/{nobody}")) == (404, "not_found")
    assert error(await alice.raw("DELETE", f"/api/blocks/{nobody}")) == (404, "not_found")
    assert error(await alice.raw("PUT", f"/api/blocks/{alice.username}")) == (422, "invalid")
    assert error(await anon.raw("GET", "/api/blocks")) == (401, "unauthorized")
    assert error(await anon.raw("PUT", f"/api/blocks/{bob.username}")) == (401, "unauthorized")


async def test_a_blocked_user_cannot_open_a_dm_or_add_the_blocker(
    alice: Api, bob: Api, carol: Api
) -> None:
    """Once bob blocks alice, her POST /api/dms and her adds of bob are 403; others are not."""
    assert (await bob.raw("PUT", f"/api/blocks/{alice.username}")).status_code == 204
    assert error(await alice.raw("POST", "/api/dms", json={"username": bob.username})) == (
        403,
        "forbidden",
    )
    room = await alice.create_room("trap", private=True)
    r = await alice.raw("POST", f"/api/rooms/{room['id']}/members", json={"username": bob.username})
    assert error(r) == (403, "forbidden")
    assert room["id"] not in await listed(bob)
    assert not [e for e in (await listed(bob)).values() if e["dm"] == alice.user]
    # Carol is not blocked; bob himself may still open the DM with alice.
    assert (await open_dm(carol, bob.username))["dm"] == bob.user
    assert (await open_dm(bob, alice.username))["dm"] == alice.user
    assert (await bob.raw("DELETE", f"/api/blocks/{alice.username}")).status_code == 204
    await alice.add(room["id"], bob.username)


# -- F13 (d): a DM someone left stays left -----------------------------------------


async def test_a_dm_left_stays_left_when_the_other_side_reopens_it(alice: Api, bob: Api) -> None:
    """After bob leaves, alice's POST /api/dms gives her the room but does not put bob back;
    bob is back only once he opens it himself."""
    room = await open_dm(alice, bob.username)
    await alice.post(room["id"], "before you left")
    assert (
        await bob.raw("DELETE", f"/api/rooms/{room['id']}/members/{bob.username}")
    ).status_code == 204
    again = await open_dm(alice, bob.username)
    assert again["id"] == room["id"] and again["dm"] == bob.user
    await alice.post(room["id"], "are you there?")
    assert room["id"] not in await listed(bob)
    assert error(await bob.raw("GET", f"/api/rooms/{room['id']}/messages")) == (403, "forbidden")
    back = await open_dm(bob, alice.username)
    assert back["id"] == room["id"]
    assert [m["body"] for m in await bob.history(room["id"])] == [
        "before you left",
        "are you there?",
    ]


async def test_the_leaver_reopening_a_dm_is_back_in_it(alice: Api, bob: Api) -> None:
    """Whoever left a DM and opens it again is a member again, with the history."""
    room = await open_dm(alice, bob.username)
    await bob.post(room["id"], "hi")
    assert (
        await alice.raw("DELETE", f"/api/rooms/{room['id']}/members/{alice.username}")
    ).status_code == 204
    assert (await open_dm(alice, bob.username))["id"] == room["id"]
    assert [m["body"] for m in await alice.history(room["id"])] == ["hi"]


# -- F13 (a): a cap on being added, across processes -------------------------------


async def test_adds_of_one_user_are_capped_across_processes(
    capped: tuple[ServerProcess, ServerProcess],
) -> None:
    """Adding one user to rooms stops at CAP an hour (429 rate_limited) whichever process
    takes the adds, even all at once; re-adding a member, self-joins and others are unaffected."""
    a, b = capped
    mallory = await Api.new_user(a.url, "mallory")
    victim = await Api.new_user(a.url, "victim")
    other = await Api.new_user(b.url, "other")
    on_b = mallory.on(b.url)
    try:
        rooms = [
            (await mallory.create_room(f"spam{i}", private=True))["id"] for i in range(CAP + 7)
        ]
        apis = [mallory, on_b]
        results = await asyncio.gather(
            *(
                apis[i % 2].raw(
                    "POST", f"/api/rooms/{room}/members", json={"username": victim.username}
                )
                for i, room in enumerate(rooms)
            )
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * CAP + [429] * 7, statuses
        assert {error(r) for r in results if r.status_code != 200} == {(429, "rate_limited")}
        assert len(await listed(victim)) == CAP
        # Re-adding someone already in is a no-op, not a refusal.
        added_to = [room for room, r in zip(rooms, results, strict=True) if r.status_code == 200]
        await on_b.add(added_to[0], victim.username)
        # Anyone else's add, and a DM opened with them, count against the same budget...
        r = await other.raw("POST", "/api/dms", json={"username": victim.username})
        assert error(r) == (429, "rate_limited")
        # ...but the victim joins public rooms and opens DMs themselves as before.
        public = await other.create_room("open")
        await victim.join(public["id"])
        assert (await open_dm(victim, other.username))["dm"] == other.user
        # Another user is not limited by the victim's budget.
        await mallory.add(rooms[-1], other.username)
    finally:
        for api in (mallory, victim, other, on_b):
            await api.close()


# -- bot tokens --------------------------------------------------------------------


async def make_bot(owner: Api) -> tuple[str, dict[str, Any]]:
    name = "bot" + secrets.token_hex(4)
    made = await owner.request("POST", "/api/bots", 201, json={"username": name})
    return made["token"], made["user"]


async def test_rotating_a_bot_token_closes_its_sockets_on_every_process(
    servers: tuple[ServerProcess, ServerProcess], alice: Api
) -> None:
    """POST /api/bots/{name}/token: a new token; the old one's socket on the other process
    closes with 4001 and the old token is 401; the new one works on both."""
    a, b = servers
    old, bot = await make_bot(alice)
    ws = await Ws.connect(b.ws_url, old)
    old_api = Api(b.url, old, bot)
    new_ws: Ws | None = None
    try:
        r = await alice.raw("POST", f"/api/bots/{bot['username']}/token")
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"token", "user"} and body["user"] == bot
        assert body["token"] != old
        assert await ws.close_code() == 4001
        assert error(await old_api.raw("GET", "/api/rooms")) == (401, "unauthorized")
        new_api = Api(b.url, body["token"], bot)
        try:
            assert (await new_api.raw("GET", "/api/rooms")).status_code == 200
        finally:
            await new_api.close()
        new_ws = await Ws.connect(a.ws_url, body["token"])
        assert new_ws.welcome["user"] == bot
    finally:
        await ws.close()
        await old_api.close()
        if new_ws is not None:
            await new_ws.close()


async def test_revoking_a_bot_token_closes_its_sockets_on_every_process(
    servers: tuple[ServerProcess, ServerProcess], alice: Api
) -> None:
    """DELETE /api/bots/{name}/token is 204: every token of the bot is 401, its sockets 4001."""
    a, b = servers
    token, bot = await make_bot(alice)
    second = (await alice.request("POST", f"/api/bots/{bot['username']}/token", 201))["token"]
    ws = await Ws.connect(b.ws_url, second)
    revoked = Api(a.url, second, bot)
    try:
        assert (await alice.raw("DELETE", f"/api/bots/{bot['username']}/token")).status_code == 204
        assert await ws.close_code() == 4001
        assert error(await revoked.raw("GET", "/api/rooms")) == (401, "unauthorized")
        revoked.token = token
        assert error(await revoked.raw("GET", "/api/rooms")) == (401, "unauthorized")
    finally:
        await ws.close()
        await revoked.close()


async def test_bot_tokens_are_the_owners_business(alice: Api, bob: Api, anon: Api) -> None:
    """Rotating or revoking someone else's bot is 403, the bot's own token too; an unknown
    bot or a person's name is 404; no token is 401. The bot's token survives all that."""
    token, bot = await make_bot(alice)
    path = f"/api/bots/{bot['username']}/token"
    as_bot = Api(alice.base_url, token, bot)
    try:
        for method in ("POST", "DELETE"):
            assert error(await bob.raw(method, path)) == (403, "forbidden")
            assert error(await as_bot.raw(method, path)) == (403, "forbidden")
            assert error(await anon.raw(method, path)) == (401, "unauthorized")
            unknown = f"/api/bots/nobot{secrets.token_hex(4)}/token"
            assert error(await alice.raw(method, unknown)) == (404, "not_found")
            person = f"/api/bots/{bob.username}/token"
            assert error(await alice.raw(method, person)) == (404, "not_found")
        assert (await as_bot.raw("GET", "/api/rooms")).status_code == 200
    finally:
        await as_bot.close()


# -- the SDK ------------------------------------------------------------------------


async def test_sdk_covers_dms_blocks_and_bot_tokens(
    server: ServerProcess, alice: Api, bob: Api
) -> None:
    """HttpApi opens DMs (with `dm`), blocks and unblocks, leaves rooms and rotates and
    revokes bot tokens."""
    async with HttpApi(server.url, alice.token) as mine, HttpApi(server.url, bob.token) as theirs:
        room = await mine.dm(bob.username)
        assert room.dm is not None and room.dm.id == bob.user["id"]
        seen = {r.id: r.dm for r in await theirs.rooms()}[room.id]
        assert seen is not None and seen.id == alice.user["id"]
        await theirs.block(alice.username)
        assert [u.id for u in await theirs.blocks()] == [alice.user["id"]]
        await theirs.remove_member(room.id, bob.username)
        private = await mine.create_room("sdk", private=True)
        with pytest.raises(ServerError) as info:
            await mine.add_member(private.id, bob.username)
        assert info.value.code == "forbidden"
        await theirs.unblock(alice.username)
        assert await theirs.blocks() == []
        bot = await mine.create_bot("sdkbot" + secrets.token_hex(4))
        rotated = await mine.rotate_bot_token(bot.user.username)
        assert rotated.user == bot.user and rotated.token != bot.token
        await mine.revoke_bot_tokens(bot.user.username)
        async with HttpApi(server.url, rotated.token) as as_bot:
            with pytest.raises(ServerError) as info:
                await as_bot.rooms()
            assert info.value.code == "unauthorized"


async def test_openapi_lists_the_new_routes(anon: Api) -> None:
    """/openapi.json describes the block and bot-token routes, and ROOM's `dm`."""
    doc = await anon.request("GET", "/openapi.json", 200)
    paths = doc["paths"]
    for path, method in [
        ("/api/bots/{username}/token", "post"),
        ("/api/bots/{username}/token", "delete"),
        ("/api/blocks", "get"),
        ("/api/blocks/{username}", "put"),
        ("/api/blocks/{username}", "delete"),
    ]:
        assert method in paths[path], (path, method)
    assert "dm" in doc["components"]["schemas"]["Room"]["properties"]
