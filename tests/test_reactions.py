"""Reactions across two processes: frames and HTTP, the aggregate's shape and order,
exact counts under concurrency, and every refusal storing nothing."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from .support import Api, ServerProcess, Ws

Pair = tuple[ServerProcess, ServerProcess]


def path(room: int, message: int, emoji: str) -> str:
    return f"/api/rooms/{room}/messages/{message}/reactions/{quote(emoji, safe='')}"


async def put(api: Api, room: int, message: int, emoji: str) -> httpx.Response:
    return await api.raw("PUT", path(room, message, emoji))


async def stored(api: Api, room: int, message: int) -> list[dict[str, Any]]:
    """The message's reactions as the history shows them."""
    for found in await api.all_messages(room):
        if found["id"] == message:
            return list(found["reactions"])
    raise AssertionError("no such message")


async def test_react_frames_http_and_the_reactions_frame(servers: Pair, alice: Api) -> None:
    """react/unreact and PUT/DELETE change the list (emoji by first use, users in order);
    sockets joined on the other process get the whole new list after each change only."""
    a, b = servers
    bob = await Api.new_user(a.url, "bob")
    try:
        room = (await alice.create_room("reacts"))["id"]
        await bob.join(room)
        message = await alice.post(room, "react to me")
        assert message["reactions"] == []
        watcher = await Ws.connect(b.ws_url, alice.token)
        await watcher.join(room)
        ws = await Ws.connect(a.ws_url, bob.token)
        ok = await ws.call({"type": "react", "room": room, "id": message["id"], "emoji": "👍"})
        assert ok["type"] == "ok", ok
        frame = await watcher.expect("reactions")
        assert frame == {
            "type": "reactions",
            "room": room,
            "id": message["id"],
            "seq": message["seq"],
            "reactions": [{"emoji": "👍", "count": 1, "users": [bob.user["id"]]}],
        }
        r = await put(alice, room, message["id"], ":ship:")
        assert r.status_code == 200, r.text
        r = await put(alice, room, message["id"], "👍")
        expected = [
            {"emoji": "👍", "count": 2, "users": [bob.user["id"], alice.user["id"]]},
            {"emoji": ":ship:", "count": 1, "users": [alice.user["id"]]},
        ]
        assert r.json() == {"reactions": expected}
        await watcher.expect("reactions")
        assert (await watcher.expect("reactions"))["reactions"] == expected
        # Twice is no change and no frame; removing what one does not have neither.
        ok = await ws.call({"type": "react", "room": room, "id": message["id"], "emoji": "👍"})
        assert ok["type"] == "ok"
        ok = await ws.call({"type": "unreact", "room": room, "id": message["id"], "emoji": "+1"})
        assert ok["type"] == "ok"
        r = await bob.raw("DELETE", path(room, message["id"], "👍"))
        # First use among the reactions still there: alice's 👍 came after her :ship:.
        assert r.json()["reactions"] == [
            {"emoji": ":ship:", "count": 1, "users": [alice.user["id"]]},
            {"emoji": "👍", "count": 1, "users": [alice.user["id"]]},
        ]
        # The next frame the watcher gets is this change: nothing was sent for the no-ops.
        assert (await watcher.expect("reactions"))["reactions"] == r.json()["reactions"]
        r = await alice.raw("DELETE", path(room, message["id"], "👍"))
        assert r.json()["reactions"] == [
            {"emoji": ":ship:", "count": 1, "users": [alice.user["id"]]}
        ]
        assert await stored(bob, room, message["id"]) == r.json()["reactions"]
    finally:
        await bob.close()


async def test_concurrent_reactions_from_both_processes_count_right(
    servers: Pair, alice: Api
) -> None:
    """Many users reacting to one message at once through both processes: exact counts."""
    a, b = servers
    room = (await alice.create_room("pile-on"))["id"]
    message = await alice.post(room, "pile on")
    users = [await Api.new_user((a, b)[i % 2].url, "r") for i in range(16)]
    try:
        for user in users:
            await user.join(room)
        results = await asyncio.gather(
            *(put(u, room, message["id"], e) for u in users for e in ("👍", "🎉"))
        )
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        final = await stored(alice, room, message["id"])
        assert [(x["emoji"], x["count"]) for x in final] in (
            [("👍", 16), ("🎉", 16)],
            [("🎉", 16), ("👍", 16)],
        )
        assert sorted(final[0]["users"]) == sorted(u.user["id"] for u in users)
    finally:
        for user in users:
            await user.close()


async def test_reaction_refusals_store_nothing(servers: Pair, alice: Api) -> None:
    """21st emoji `invalid`, bad emoji `invalid`, deleted message `conflict`, non-member
    `forbidden`, unknown message `not_found`; the list is unchanged after each."""
    _, b = servers
    room = (await alice.create_room("limits"))["id"]
    message = await alice.post(room, "twenty")
    for i in range(20):
        r = await put(alice, room, message["id"], f"e{i}")
        assert r.status_code == 200, r.text
    r = await put(alice, room, message["id"], "e20")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid")
    assert len(await stored(alice, room, message["id"])) == 20
    r = await put(alice, room, message["id"], "e3")  # an existing one still goes on
    assert r.status_code == 200
    ws = await Ws.connect(b.ws_url, alice.token)
    for emoji in ("a b", "", "x" * 17, "\u0007", "\n"):
        err = await ws.call({"type": "react", "room": room, "id": message["id"], "emoji": emoji})
        assert err["type"] == "error" and err["code"] == "invalid", (emoji, err)
    r = await put(alice, room, message["id"], "a b")
    assert r.status_code == 422
    err = await ws.call({"type": "react", "room": room, "id": 9_000_000_000, "emoji": "x"})
    assert err["code"] == "not_found", err
    gone = await alice.post(room, "to delete")
    ok = await ws.call({"type": "delete", "room": room, "id": gone["id"]})
    assert ok["type"] == "ok"
    err = await ws.call({"type": "react", "room": room, "id": gone["id"], "emoji": "x"})
    assert err["code"] == "conflict", err
    stranger = await Api.new_user(b.url, "eve")
    try:
        r = await put(stranger, room, message["id"], "x")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    finally:
        await stranger.close()
    assert len(await stored(alice, room, message["id"])) == 20
    assert await stored(alice, room, gone["id"]) == []


async def test_reactions_spend_the_send_budget(server_env: dict[str, str]) -> None:
    """Reactions (frames and HTTP) spend the user's send budget: beyond it `rate_limited`,
    and nothing changes."""
    env = {**server_env, "SEND_RATE": "0.1", "SEND_BURST": "3"}
    proc = ServerProcess(env, "react-budget")
    await proc.start()
    api = await Api.new_user(proc.url, "budget")
    try:
        room = (await api.create_room("budget"))["id"]
        message = await api.post(room, "one send")  # the first of three
        assert (await put(api, room, message["id"], "a")).status_code == 200
        ws = await Ws.connect(proc.ws_url, api.token)
        ok = await ws.call({"type": "react", "room": room, "id": message["id"], "emoji": "b"})
        assert ok["type"] == "ok", ok
        err = await ws.call({"type": "react", "room": room, "id": message["id"], "emoji": "c"})
        assert err["type"] == "error" and err["code"] == "rate_limited", err
        r = await put(api, room, message["id"], "d")
        assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
        assert [x["emoji"] for x in await stored(api, room, message["id"])] == ["a", "b"]
    finally:
        await api.close()
        await proc.stop()
