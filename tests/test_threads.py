"""Threads across two processes: replies are room messages, roots count them exactly,
thread history, followed threads with their own read positions."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx

from chat.config import Settings
from chat.store import Draft, Store

from .support import Api, ServerProcess, Ws

Pair = tuple[ServerProcess, ServerProcess]


async def reply(api: Api, room: int, body: str, thread: Any) -> httpx.Response:
    return await api.raw(
        "POST", f"/api/rooms/{room}/messages", json={"body": body, "thread": thread}
    )


async def root_of(api: Api, room: int, message_id: int) -> dict[str, Any]:
    """The message as the room's history shows it now."""
    for message in await api.all_messages(room):
        if message["id"] == message_id:
            return message
    raise AssertionError(f"no message {message_id}")


async def test_reply_is_a_room_message_and_counts_on_its_root(servers: Pair, alice: Api) -> None:
    """A reply sent on one process takes the room's next seq, reaches a socket joined on
    the other as a `message` with `thread`, and the root shows reply_count/last_reply_at."""
    a, b = servers
    bob = await Api.new_user(a.url, "bob")
    try:
        room = (await alice.create_room("threads"))["id"]
        await bob.join(room)
        root = await alice.post(room, "root")
        assert root["thread"] is None and root["reply_count"] == 0
        assert root["last_reply_at"] is None
        ws = await Ws.connect(b.ws_url, bob.token)
        await ws.join(room, since=root["seq"])
        sent = await ws.call({"type": "send", "room": room, "body": "r1", "thread": root["id"]})
        assert sent["type"] == "ok", sent
        first = sent["message"]
        assert first["thread"] == root["id"] and first["seq"] == root["seq"] + 1
        # A reply to a reply belongs to the same root.
        r = await reply(alice, room, "r2", first["id"])
        assert r.status_code == 201, r.text
        second = r.json()["message"]
        assert second["thread"] == root["id"] and second["seq"] == first["seq"] + 1
        frames = await ws.messages(room, 2)
        assert [f["id"] for f in frames] == [first["id"], second["id"]]
        assert frames[1]["thread"] == root["id"]
        now = await root_of(alice, room, root["id"])
        assert now["reply_count"] == 2
        assert now["last_reply_at"] == second["ts"]
        # Replies count as unread in the room, like any message.
        rooms = await bob.request("GET", "/api/rooms", 200)
        (mine,) = [x for x in rooms["rooms"] if x["id"] == room]
        assert mine["unread"] == 1  # alice's reply; bob's own is read
        # Replayed with since, like any message.
        again = await Ws.connect(a.ws_url, bob.token)
        await again.join(room, since=root["seq"])
        replayed = await again.messages(room, 2)
        assert [m["thread"] for m in replayed] == [root["id"], root["id"]]
    finally:
        await bob.close()


async def test_concurrent_replies_on_two_processes_count_exactly(servers: Pair, alice: Api) -> None:
    """Replies to one root sent at once through both processes (group commits included)
    leave reply_count equal to the number of replies stored."""
    a, b = servers
    room = (await alice.create_room("many-replies"))["id"]
    root = await alice.post(room, "root")
    apis = [alice.on(a.url), alice.on(b.url)]
    try:
        per_process = 40
        results = await asyncio.gather(
            *(reply(apis[i % 2], room, f"r{i}", root["id"]) for i in range(2 * per_process))
        )
        assert all(r.status_code == 201 for r in results), [r.text for r in results]
        now = await root_of(alice, room, root["id"])
        assert now["reply_count"] == 2 * per_process
        newest = max(r.json()["message"]["ts"] for r in results)
        assert now["last_reply_at"] == newest
    finally:
        for api in apis:
            await api.close()


async def test_bad_roots_are_not_found_and_store_nothing(servers: Pair, alice: Api) -> None:
    """A root that does not exist or is in another room is `not_found` (HTTP and WebSocket),
    and no seq is taken."""
    a, b = servers
    room = (await alice.create_room("here"))["id"]
    other = (await alice.create_room("there"))["id"]
    elsewhere = await alice.post(other, "elsewhere")
    await alice.post(room, "first")
    for thread in (elsewhere["id"], 9_000_000_000):
        r = await reply(alice, room, "x", thread)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    ws = await Ws.connect(b.ws_url, alice.token)
    err = await ws.call({"type": "send", "room": room, "body": "x", "thread": elsewhere["id"]})
    assert err["type"] == "error" and err["code"] == "not_found", err
    err = await ws.call({"type": "send", "room": room, "body": "x", "thread": "abc"})
    assert err["type"] == "error" and err["code"] == "invalid", err
    assert [m["body"] for m in await alice.all_messages(room)] == ["first"]
    stranger = await Api.new_user(a.url, "eve")
    try:
        r = await reply(stranger, room, "x", 1)
        assert r.status_code == 403, r.text
    finally:
        await stranger.close()


async def test_thread_history_pages_like_the_room(servers: Pair, alice: Api) -> None:
    """`?thread=ROOT` returns only that root's replies, ascending, with before/after/limit."""
    _, b = servers
    room = (await alice.create_room("paging"))["id"]
    root = await alice.post(room, "root")
    other_root = await alice.post(room, "other root")
    replies = []
    for i in range(5):
        replies.append((await reply(alice, room, f"r{i}", root["id"])).json()["message"])
        await reply(alice, room, f"o{i}", other_root["id"])
    api_b = alice.on(b.url)
    try:
        page = await api_b.history(room, thread=root["id"])
        assert [m["id"] for m in page] == [m["id"] for m in replies]
        page = await api_b.history(room, thread=root["id"], limit=2)
        assert [m["id"] for m in page] == [m["id"] for m in replies[-2:]]
        page = await api_b.history(room, thread=root["id"], before=replies[-2]["seq"], limit=2)
        assert [m["id"] for m in page] == [m["id"] for m in replies[1:3]]
        page = await api_b.history(room, thread=root["id"], after=replies[0]["seq"], limit=2)
        assert [m["id"] for m in page] == [m["id"] for m in replies[1:3]]
        # A reply's id names its root's thread too; a root of another room is not found.
        page = await api_b.history(room, thread=replies[0]["id"])
        assert len(page) == 5
        other = (await alice.create_room("x"))["id"]
        r = await api_b.raw("GET", f"/api/rooms/{other}/messages", params={"thread": root["id"]})
        assert r.status_code == 404
    finally:
        await api_b.close()


async def test_followed_threads_and_their_read_positions(servers: Pair, alice: Api) -> None:
    """Root author, repliers and users named in a reply follow; @room makes nobody follow;
    unread counts others' replies above the thread's read position, which only moves up."""
    a, b = servers
    bob = await Api.new_user(a.url, "bob")
    carol = await Api.new_user(a.url, "carol")
    dave = await Api.new_user(a.url, "dave")
    try:
        room = (await alice.create_room("follow"))["id"]
        for user in (bob, carol, dave):
            await user.join(room)
        root = await alice.post(room, "root")
        quiet = await alice.post(room, "no replies")
        assert quiet["reply_count"] == 0
        r1 = (await reply(bob, room, f"@{carol.username} look, @room", root["id"])).json()
        r2 = (await reply(bob, room, "more", root["id"])).json()

        async def threads(api: Api) -> list[dict[str, Any]]:
            other = api.on(b.url)
            try:
                return list((await other.request("GET", "/api/threads", 200))["threads"])
            finally:
                await other.close()

        mine = await threads(alice)
        assert [(t["room"], t["root"]["id"], t["unread"]) for t in mine] == [(room, root["id"], 2)]
        assert mine[0]["root"]["reply_count"] == 2
        assert [t["unread"] for t in await threads(bob)] == [0]
        assert [t["unread"] for t in await threads(carol)] == [2]
        assert await threads(dave) == []  # @room makes nobody follow
        ws = await Ws.connect(b.ws_url, alice.token)
        ok = await ws.call(
            {
                "type": "read",
                "room": room,
                "seq": r1["message"]["seq"],
                "thread": root["id"],
            }
        )
        assert ok["type"] == "ok", ok
        assert [t["unread"] for t in await threads(alice)] == [1]
        ok = await ws.call({"type": "read", "room": room, "seq": 1, "thread": root["id"]})
        assert [t["unread"] for t in await threads(alice)] == [1]  # forward only
        ok = await ws.call(
            {"type": "read", "room": room, "seq": r2["message"]["seq"], "thread": root["id"]}
        )
        assert [t["unread"] for t in await threads(alice)] == [0]
        err = await ws.call({"type": "read", "room": room, "seq": 1, "thread": 9_000_000_000})
        assert err["type"] == "error" and err["code"] == "not_found"
        # The most recent reply first.
        root2 = await alice.post(room, "second root")
        await reply(bob, room, "newer", root2["id"])
        assert [t["root"]["id"] for t in await threads(alice)] == [root2["id"], root["id"]]
        limited = await alice.request("GET", "/api/threads", 200, params={"limit": 1})
        assert len(limited["threads"]) == 1
        r = await alice.raw("GET", "/api/threads", params={"limit": 0})
        assert r.status_code == 422
    finally:
        for api in (bob, carol, dave):
            await api.close()


async def test_group_commit_counts_replies_per_root_and_resolves_mentions(
    database_url: str,
) -> None:
    """One batch statement (insert_batch) with several replies to two roots, mentions and
    @room: each root gets its batch's count once, names resolve to members in order."""
    store = await Store.connect(Settings(database_url=database_url))
    try:
        suffix = secrets.token_hex(4)
        alice = await store.create_user(f"ga{suffix}", "not-a-real-hash")
        bob = await store.create_user(f"gb{suffix}", "not-a-real-hash")
        room = (await store.create_room("batch", False, alice.id)).id
        await store.add_member(room, bob.id)
        first = await store.insert_one(Draft(room, alice, "root 1", None))
        second = await store.insert_one(Draft(room, alice, "root 2", None))
        assert first is not None and second is not None
        r1, r2 = first[0].id, second[0].id
        names = f"gb{suffix} nobody ga{suffix}"
        drafts = [
            Draft(room, bob, "a", None, r1),
            Draft(room, bob, "b", None, r1, names),
            Draft(room, alice, "c", None, r2, None, True),
            Draft(room, bob, "d", None, r1),
            Draft(room, alice, "plain", None),
        ]
        stored = await store.insert_batch(drafts)
        assert sorted(stored) == [1, 2, 3, 4, 5]
        assert stored[2].mentions == [bob.id, alice.id]
        assert stored[3].mention_room and stored[3].thread == r2
        roots = {m.id: m for m in await store.messages_after(room, 0, 100)}
        assert roots[r1].reply_count == 3 and roots[r2].reply_count == 1
        assert roots[r1].last_reply_at == max(stored[i].ts for i in (1, 2, 4))
        assert [m.id for m in await store.thread_after(r1, 0, 10)] == [
            stored[i].id for i in (1, 2, 4)
        ]
        followed = await store.threads_of_user(alice.id, 10)
        assert {t.root.id for t in followed} == {r1, r2}
        assert [t.root.id for t in await store.threads_of_user(bob.id, 10)] == [r1]
    finally:
        await store.close()
