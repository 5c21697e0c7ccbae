"""Races across the two processes of one service: seqs, idempotent sends, DMs and sign-ups."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .support import PASSWORD, Api, ServerProcess

Pair = tuple[ServerProcess, ServerProcess]


@pytest.fixture
async def crowd(servers: Pair) -> AsyncIterator[list[tuple[Api, Api]]]:
    """Eight users, each with a client on process A and one on process B."""
    a, b = servers
    users = await asyncio.gather(*(Api.new_user(a.url, f"w{n}") for n in range(8)))
    pairs = [(user, user.on(b.url)) for user in users]
    yield pairs
    for on_a, on_b in pairs:
        await on_a.close()
        await on_b.close()


async def test_concurrent_writers_get_gapless_seqs_per_room(crowd: list[tuple[Api, Api]]) -> None:
    """200 posts at once through both processes number 1..200; a room beside it gets 1..80."""
    owner = crowd[0][0]
    room = (await owner.create_room("busy"))["id"]
    beside = (await owner.create_room("beside"))["id"]
    for on_a, _ in crowd[1:]:
        await on_a.join(room)
    for on_a, _ in crowd[:4]:
        if on_a is not owner:
            await on_a.join(beside)

    posts = []
    for n, (on_a, on_b) in enumerate(crowd):
        for i in range(25):
            via = on_a if i % 2 == n % 2 else on_b  # half through each process
            posts.append(via.post(room, f"{via.username}:{i}"))
    for on_a, on_b in crowd[:4]:
        for i in range(20):
            posts.append((on_a if i % 2 else on_b).post(beside, f"{on_a.username}:{i}"))
    results: list[dict[str, Any]] = await asyncio.gather(*posts)

    for target, count in ((room, 200), (beside, 80)):
        answered = [m for m in results if m["room"] == target]
        assert sorted(m["seq"] for m in answered) == list(range(1, count + 1))
        stored = await owner.all_messages(target)
        assert [m["seq"] for m in stored] == list(range(1, count + 1))
        assert len({m["id"] for m in stored}) == count
        assert sorted(m["body"] for m in stored) == sorted(m["body"] for m in answered)
        # Each message is stored with the seq its sender was told.
        assert {m["id"]: m["seq"] for m in stored} == {m["id"]: m["seq"] for m in answered}
    per_sender = Counter(m["sender"]["id"] for m in await owner.all_messages(room))
    assert sorted(per_sender.values()) == [25] * 8


async def test_racing_posts_with_one_client_id_store_one_row(servers: Pair, alice: Api) -> None:
    """Two POSTs with the same client_id racing through both processes store a single message."""
    _, b = servers
    alice_b = alice.on(b.url)
    try:
        room = (await alice.create_room("duplicates"))["id"]
        rounds = 10
        for n in range(rounds):
            client_id = f"race-{n}"
            results = await asyncio.gather(
                alice.post(room, f"attempt {n}", client_id),
                alice_b.post(room, f"attempt {n}", client_id),
                alice.post(room, f"attempt {n}", client_id),
                alice_b.post(room, f"attempt {n}", client_id),
            )
            assert len({m["id"] for m in results}) == 1, results
            assert len({m["seq"] for m in results}) == 1, results
        stored = await alice.all_messages(room)
        assert [m["seq"] for m in stored] == list(range(1, rounds + 1))
        assert [m["client_id"] for m in stored] == [f"race-{n}" for n in range(rounds)]
    finally:
        await alice_b.close()


async def test_racing_client_ids_mixed_with_plain_posts(
    servers: Pair, alice: Api, bob: Api
) -> None:
    """Duplicates racing among ordinary posts still leave every seq used exactly once."""
    _, b = servers
    room = (await alice.create_room("mixed"))["id"]
    await bob.join(room)
    alice_b, bob_b = alice.on(b.url), bob.on(b.url)
    try:
        posts = []
        for n in range(20):
            posts.append(alice.post(room, f"dup {n}", f"d{n}"))
            posts.append(alice_b.post(room, f"dup {n}", f"d{n}"))
            posts.append((bob if n % 2 else bob_b).post(room, f"plain {n}"))
        results = await asyncio.gather(*posts)
        dups = [m for m in results if m["client_id"] is not None]
        assert len({m["id"] for m in dups}) == 20
        stored = await alice.all_messages(room)
        assert [m["seq"] for m in stored] == list(range(1, 41))
        assert Counter(m["client_id"] is None for m in stored) == {True: 20, False: 20}
    finally:
        await alice_b.close()
        await bob_b.close()


async def test_racing_dm_creation_meets_in_one_room(servers: Pair) -> None:
    """Two users opening their DM at the same moment from different processes get one room."""
    a, b = servers
    users = await asyncio.gather(*(Api.new_user(a.url, "dm") for _ in range(6)))
    pairs = [(users[i], users[i + 1].on(b.url)) for i in range(0, 6, 2)]
    try:
        answers = await asyncio.gather(
            *(
                call
                for left, right in pairs
                for call in (
                    left.request("POST", "/api/dms", 200, json={"username": right.username}),
                    right.request("POST", "/api/dms", 200, json={"username": left.username}),
                )
            )
        )
        for n, (left, right) in enumerate(pairs):
            mine, theirs = answers[2 * n]["room"], answers[2 * n + 1]["room"]
            assert mine["id"] == theirs["id"], (mine, theirs)
            assert mine["private"] is True
            left_rooms = (await left.request("GET", "/api/rooms", 200))["rooms"]
            assert [r["id"] for r in left_rooms] == [mine["id"]]
            await left.post(mine["id"], "hi")
            assert [m["body"] for m in await right.history(mine["id"])] == ["hi"]
    finally:
        for user in users:
            await user.close()
        for _, right in pairs:
            await right.close()


async def test_racing_sign_ups_differing_in_case_make_one_user(servers: Pair) -> None:
    """The same username in two cases, signed up at once on both processes: one 201, one 409."""
    a, b = servers
    name = f"Race{secrets.token_hex(4)}"
    on_a, on_b = Api(a.url), Api(b.url)
    try:
        first, second = await asyncio.gather(
            on_a.raw("POST", "/api/users", json={"username": name, "password": PASSWORD}),
            on_b.raw("POST", "/api/users", json={"username": name.lower(), "password": PASSWORD}),
        )
        assert sorted((first.status_code, second.status_code)) == [201, 409]
        loser = first if first.status_code == 409 else second
        assert loser.json()["error"]["code"] == "conflict"
    finally:
        await on_a.close()
        await on_b.close()


async def test_racing_joins_and_adds_leave_one_membership(servers: Pair, alice: Api) -> None:
    """A user joined and added at once from both processes is one member, listed once."""
    _, b = servers
    bob = await Api.new_user(b.url, "joiner")
    try:
        room = (await alice.create_room("crowded door"))["id"]
        await asyncio.gather(
            bob.request("POST", f"/api/rooms/{room}/join", 200),
            alice.request(
                "POST", f"/api/rooms/{room}/members", 200, json={"username": bob.username}
            ),
            bob.request("POST", f"/api/rooms/{room}/join", 200),
        )
        rooms = (await bob.request("GET", "/api/rooms", 200))["rooms"]
        assert [r["id"] for r in rooms] == [room]
    finally:
        await bob.close()
