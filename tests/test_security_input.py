"""Hostile input from the security review (issue 10): poisoned group commits, log floods, blanks.

F1: one send holding a value PostgreSQL refuses (an id above 2^63-1, a NUL) must
fail alone, never the innocent sends that share its batch. F9: a client that
goes away mid-request and a frame with an out-of-range id are no ERROR log
lines. F12: names and bodies made only of invisible characters are `invalid`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chat.config import Settings
from chat.errors import ChatError
from chat.groupcommit import GroupCommit
from chat.protocol import Message
from chat.store import Draft, Store

from .support import Api, ServerProcess, Ws

Pair = tuple[ServerProcess, ServerProcess]

BIG = "9223372036854775808"  # 2^63: one above PostgreSQL's bigint


def is_error_line(line: str) -> bool:
    """A line of an ERROR (or worse) record or of a traceback, in the text log format."""
    return line.startswith(("error", "critical")) or "Traceback" in line


def error_lines(server: ServerProcess, since: int) -> list[str]:
    return [line for line in server.lines[since:] if is_error_line(line)]


async def exchange(
    ws: Ws, frames: list[dict[str, Any]], timeout: float = 30
) -> list[dict[str, Any]]:
    """Send all frames at once, each with a fresh ref; their replies, in the frames' order."""
    refs = []
    for frame in frames:
        ref = ws.ref()
        refs.append(ref)
        await ws.send({**frame, "ref": ref})
    replies: dict[int, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while len(replies) < len(refs):
            frame = await ws.frames.get()
            if frame["type"] in ("ok", "error") and frame.get("ref") in refs:
                replies[frame["ref"]] = frame
    return [replies[ref] for ref in refs]


# -- F1: group-commit poisoning --------------------------------------------------


# One write lane, so that queued sends form one batch.
ONE_LANE = {"write_batches": 1, "db_pool_min": 1, "db_pool_max": 2}


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A Store on the run's database."""
    store = await Store.connect(Settings(database_url=database_url, **ONE_LANE))
    yield store
    await store.close()


@pytest.mark.parametrize("poison", ["body", "client_id", "room"])
async def test_poisoned_item_fails_alone_in_a_batch(store: Store, poison: str) -> None:
    """A batch with one value PostgreSQL refuses stores the rest; only that send is `invalid`."""
    user = await store.create_user(f"poison{secrets.token_hex(4)}", "not-a-real-hash")
    room = (await store.create_room("batch", False, user.id)).id
    # The first send takes the one lane; the rest queue behind it and go as one batch.
    items: list[tuple[int, str, str | None]] = [(room, f"good {n}", f"c{n}") for n in range(12)]
    bad = {
        "body": (room, "nul \x00 inside", "bad"),
        "client_id": (room, "fine body", "nul\x00"),
        "room": (2**63, "fine body", "bad"),
    }[poison]
    items.insert(6, bad)
    commits = GroupCommit(store, Settings(**ONE_LANE))
    results = await asyncio.gather(
        *(commits.insert(Draft(r, user, body, cid)) for r, body, cid in items),
        return_exceptions=True,
    )
    failed = results.pop(6)
    assert isinstance(failed, ChatError) and failed.code == "invalid", repr(failed)
    stored: list[Message] = []
    for result in results:
        assert isinstance(result, tuple) and result[1], repr(result)
        stored.append(result[0])
    assert sorted(m.seq for m in stored) == list(range(1, 13))
    history = await store.messages_after(room, 0, 100)
    assert [(m.seq, m.body) for m in history] == sorted((m.seq, m.body) for m in stored)
    assert {m.body for m in history} == {f"good {n}" for n in range(12)}


async def test_store_refuses_bad_values_as_invalid(store: Store) -> None:
    """Alone (no batch), every query refuses a value PostgreSQL rejects as `invalid`."""
    user = await store.create_user(f"poison{secrets.token_hex(4)}", "not-a-real-hash")
    room = (await store.create_room("alone", False, user.id)).id
    with pytest.raises(ChatError) as info:
        await store.insert_one(Draft(room, user, "nul\x00", None))
    assert info.value.code == "invalid"
    with pytest.raises(ChatError) as info:
        await store.access(2**63, user.id)
    assert info.value.code == "invalid"
    with pytest.raises(ChatError) as info:
        await store.edit_message(room, 2**63, "x")
    assert info.value.code == "invalid"
    # The pool is fine afterwards.
    result = await store.insert_one(Draft(room, user, "after", None))
    assert result is not None and result[0].seq == 1


POISONED = [
    {"type": "send", "room": BIG, "body": "poison"},
    {"type": "send", "room": "OWN", "body": "poison", "client_id": "nul\x00"},
    {"type": "send", "room": "OWN", "body": "nul\x00"},
    {"type": "send", "room": "OWN", "body": "poison", "client_id": "\ud800"},
    {"type": "send", "room": "OWN", "body": "\u200b\u2060"},
    {"type": "send", "room": "OWN", "body": "poison", "ref": "nul\x00"},
    {"type": "edit", "room": "OWN", "id": BIG, "body": "poison"},
    {"type": "delete", "room": BIG, "id": 1},
    {"type": "join", "room": BIG},
    {"type": "read", "room": BIG, "seq": 1},
]


async def test_poisoned_frames_do_not_fail_innocent_sends(servers: Pair) -> None:
    """180 sends from 8 sockets on both processes all get ok while poisoned frames get invalid."""
    a, b = servers
    senders = [await Api.new_user(a.url, "good") for _ in range(4)]
    attacker = await Api.new_user(a.url, "evil")
    sockets: list[Ws] = []
    try:
        room = (await senders[0].create_room("innocent"))["id"]
        for api in senders[1:]:
            await api.join(room)
        own = (await attacker.create_room("elsewhere"))["id"]
        good_ws = [await Ws.connect(p.ws_url, api.token) for api in senders for p in (a, b)]
        evil_ws = [await Ws.connect(p.ws_url, attacker.token) for p in (a, b)]
        sockets = good_ws + evil_ws
        since = [len(a.lines), len(b.lines)]

        good: list[list[dict[str, Any]]] = [[] for _ in good_ws]
        for n in range(180):
            good[n % len(good_ws)].append({"type": "send", "room": room, "body": f"good {n}"})
        poisoned: list[dict[str, Any]] = []
        for _ in range(5):
            for frame in POISONED:
                frame = {**frame}
                if frame.get("room") == "OWN":
                    frame["room"] = own
                poisoned.append(frame)

        async def evil(ws: Ws) -> list[dict[str, Any]]:
            # One at a time, while the good sends are in flight. A connection answers its
            # frames in order and this one joined no room, so the next frame is the answer
            # (whatever its ref: the poison may be the ref itself).
            replies = []
            for frame in poisoned:
                await ws.send(frame if "ref" in frame else {**frame, "ref": ws.ref()})
                replies.append(await ws.recv())
            return replies

        results = await asyncio.gather(
            *(exchange(ws, frames) for ws, frames in zip(good_ws, good, strict=True)),
            *(evil(ws) for ws in evil_ws),
        )
        good_replies = [reply for replies in results[: len(good_ws)] for reply in replies]
        evil_replies = [reply for replies in results[len(good_ws) :] for reply in replies]
        assert [r for r in good_replies if r["type"] != "ok"] == []
        assert [r for r in evil_replies if r.get("code") != "invalid"] == []
        assert len(evil_replies) == 2 * len(poisoned)

        history = await senders[0].all_messages(room)
        assert [m["seq"] for m in history] == list(range(1, 181))
        assert sorted(m["body"] for m in history) == sorted(f"good {n}" for n in range(180))
        assert await attacker.all_messages(own) == []
        assert error_lines(a, since[0]) == [] and error_lines(b, since[1]) == []
    finally:
        for ws in sockets:
            await ws.close()
        for api in [*senders, attacker]:
            await api.close()


# -- F9: no error-log floods -----------------------------------------------------


async def half_sent(port: int, path: str) -> None:
    """A request whose body stops halfway, after which the client goes away."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            '{"username": "half'
        ).encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def counted(metrics: str, route: str, status: str) -> float:
    pattern = rf'^chat_http_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_client_gone_mid_body_is_no_error(server: ServerProcess, anon: Api) -> None:
    """Half-sent bodies whose clients leave log no ERROR or traceback and count no 500."""
    before = (await anon.raw("GET", "/metrics")).text
    since = len(server.lines)
    paths = ["/api/users", "/api/sessions"] * 20
    await asyncio.gather(*(half_sent(server.port, path) for path in paths))
    # One line per request either way: ERROR before the fix, INFO after.
    await server.wait_for_lines(lambda line: "path=/api/" in line, len(paths), since)
    assert error_lines(server, since) == []
    after = (await anon.raw("GET", "/metrics")).text
    for path in ("/api/users", "/api/sessions"):
        assert counted(after, path, "500") == counted(before, path, "500")
    # The process still answers both routes properly.
    r = await anon.raw("POST", "/api/sessions", json={"username": "nobody", "password": "x" * 8})
    assert r.status_code == 401, r.text


async def test_out_of_range_ids_are_invalid_without_error_log(
    server: ServerProcess, alice: Api
) -> None:
    """Frames with ids above 2^63-1 get `invalid` naming the field and log no ERROR."""
    room = (await alice.create_room("range"))["id"]
    since = len(server.lines)
    ws = await Ws.connect(server.ws_url, alice.token)
    try:
        frames: list[tuple[dict[str, Any], str]] = [
            ({"type": "join", "room": BIG}, "room"),
            ({"type": "join", "room": int(BIG)}, "room"),
            ({"type": "leave", "room": BIG}, "room"),
            ({"type": "send", "room": BIG, "body": "x"}, "room"),
            ({"type": "edit", "room": room, "id": BIG, "body": "x"}, "id"),
            ({"type": "delete", "room": room, "id": "99999999999999999999"}, "id"),
            ({"type": "read", "room": BIG, "seq": 0}, "room"),
            ({"type": "typing", "room": BIG}, "room"),
        ]
        replies = await exchange(ws, [frame for frame, _ in frames])
        for (frame, field), reply in zip(frames, replies, strict=True):
            assert reply["type"] == "error" and reply["code"] == "invalid", (frame, reply)
            assert f"`{field}`" in reply["message"], (frame, reply)
        # The largest id is still an id: a room that does not exist.
        reply = await ws.call({"type": "join", "room": "9223372036854775807"})
        assert reply["code"] == "not_found", reply
    finally:
        await ws.close()
    # Its "disconnected" line comes after whatever handling its frames logged.
    hello = re.compile(rf": connected conn=(\d+) user={alice.user['id']}$")
    found = await server.wait_for_lines(lambda line: hello.search(line) is not None, 1, since)
    conn = f"[conn-{hello.findall(found[0])[0]}]"
    await server.wait_for_lines(lambda line: conn in line and "disconnected" in line, 1, since)
    assert error_lines(server, since) == []


# -- F12: invisible names and bodies -----------------------------------------------

INVISIBLE = [
    "\u200b",
    "\u2060",
    "\ufeff",
    "\u200b\u2060\ufeff",
    " \u200b\t\u200d\u00a0",
    "\u00ad",
    "\u115f",
    "\u3164",
    "\ufe0f",
    "\u180e",
    "\U000e0001\U000e0020",
]
VISIBLE_WITH_INVISIBLE = ["a\u200bb", "\u200b.", "👍\ufe0f", "\u3164x", "ok\u2060"]


def status_code(response: httpx.Response) -> tuple[int, str | None]:
    body = response.json()
    return response.status_code, body.get("error", {}).get("code")


@pytest.mark.parametrize("text", INVISIBLE)
async def test_invisible_room_name_and_body_are_invalid_over_http(alice: Api, text: str) -> None:
    """A room name or body of only invisible characters is 422 invalid; nothing is stored."""
    r = await alice.raw("POST", "/api/rooms", json={"name": text})
    assert status_code(r) == (422, "invalid"), r.text
    assert "`name`" in r.json()["error"]["message"]
    room = (await alice.create_room("blank"))["id"]
    r = await alice.raw("POST", f"/api/rooms/{room}/messages", json={"body": text})
    assert status_code(r) == (422, "invalid"), r.text
    assert "`body`" in r.json()["error"]["message"]
    assert await alice.history(room) == []


async def test_visible_text_with_invisible_characters_is_kept(alice: Api) -> None:
    """Real characters beside zero-width ones are accepted and stored exactly."""
    for text in VISIBLE_WITH_INVISIBLE:
        assert (await alice.create_room(text))["name"] == text
    room = (await alice.create_room("mixed"))["id"]
    for text in VISIBLE_WITH_INVISIBLE:
        assert (await alice.post(room, text))["body"] == text
    assert [m["body"] for m in await alice.history(room)] == VISIBLE_WITH_INVISIBLE


async def test_invisible_body_is_invalid_over_websocket(servers: Pair, alice: Api) -> None:
    """`send` and `edit` with a body of only invisible characters get `invalid`; nothing changes."""
    _, b = servers
    room = (await alice.create_room("ws-blank"))["id"]
    original = await alice.post(room, "original")
    ws = await Ws.connect(b.ws_url, alice.token)
    try:
        frames = []
        for text in INVISIBLE:
            frames.append({"type": "send", "room": room, "body": text})
            frames.append({"type": "edit", "room": room, "id": original["id"], "body": text})
        for frame, reply in zip(frames, await exchange(ws, frames), strict=True):
            assert reply["type"] == "error" and reply["code"] == "invalid", (frame, reply)
            assert "`body`" in reply["message"], reply
        ok = await ws.call({"type": "send", "room": room, "body": "a\u200bb"})
        assert ok["type"] == "ok" and ok["message"]["body"] == "a\u200bb", ok
    finally:
        await ws.close()
    history = await alice.history(room)
    assert [(m["body"], m["edited_at"]) for m in history] == [
        ("original", None),
        ("a\u200bb", None),
    ]
