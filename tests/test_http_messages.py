"""The HTTP message store: posting, body rules, idempotency, history, access, PostgreSQL down."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import httpx
import pytest

from .support import Api, PrivatePostgres, ServerProcess, Ws

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def error(response: httpx.Response) -> tuple[int, str]:
    """The status and contract error code of an error response (checking the body's shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


async def post(api: Api, room: Any, payload: Any) -> httpx.Response:
    return await api.raw("POST", f"/api/rooms/{room}/messages", json=payload)


async def post_raw(api: Api, room: Any, content: bytes) -> httpx.Response:
    return await api.raw(
        "POST",
        f"/api/rooms/{room}/messages",
        content=content,
        headers={"content-type": "application/json"},
    )


async def get(api: Api, room: Any, **params: Any) -> httpx.Response:
    return await api.raw("GET", f"/api/rooms/{room}/messages", params=params)


@pytest.fixture
async def filled(alice: Api) -> tuple[Any, list[dict[str, Any]]]:
    """A room of alice's holding 60 messages, seqs 1..60."""
    room = await alice.create_room("sixty")
    sent = [await alice.post(room["id"], f"m{n}") for n in range(1, 61)]
    return room["id"], sent


# -- posting ------------------------------------------------------------------


async def test_post_message_shape(alice: Api) -> None:
    """POST /api/rooms/{id}/messages is 201 {"message"} with every field of the contract."""
    room = await alice.create_room("shape")
    r = await post(alice, room["id"], {"body": "hello", "client_id": "c-1"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"message"}
    message = body["message"]
    assert set(message) == {
        "id",
        "room",
        "seq",
        "sender",
        "body",
        "client_id",
        "ts",
        "edited_at",
        "deleted",
        # Part 2: threads, reactions, mentions.
        "thread",
        "reply_count",
        "last_reply_at",
        "reactions",
        "mentions",
        "mention_room",
    }
    assert message["room"] == room["id"]
    assert message["seq"] == 1
    assert message["sender"] == alice.user
    assert message["body"] == "hello"
    assert message["client_id"] == "c-1"
    assert TS.match(message["ts"]), message["ts"]
    assert message["edited_at"] is None
    assert message["deleted"] is False
    without = (await post(alice, room["id"], {"body": "again"})).json()["message"]
    assert without["client_id"] is None
    assert without["seq"] == 2
    assert without["id"] != message["id"]


async def test_history_returns_what_was_posted(alice: Api) -> None:
    """History holds each posted message exactly as the 201 answered it."""
    room = await alice.create_room("echo")
    sent = [await alice.post(room["id"], body) for body in ("one", "two", "three")]
    assert await alice.history(room["id"]) == sent


async def test_post_is_fanned_out_live(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """A POSTed message reaches joined WebSockets on both processes, the sender's included."""
    a, b = servers
    room = await alice.create_room("fan-out")
    await bob.join(room["id"])
    ws_alice = await Ws.connect(a.ws_url, alice.token)
    ws_bob = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_alice.join(room["id"])
        await ws_bob.join(room["id"])
        sent = await alice.post(room["id"], "live")
        assert await ws_alice.messages(room["id"], 1) == [sent]
        assert await ws_bob.messages(room["id"], 1) == [sent]
    finally:
        await ws_alice.close()
        await ws_bob.close()


# -- body rules ---------------------------------------------------------------


async def test_body_of_4000_code_points_is_accepted(alice: Api) -> None:
    """4,000 characters are fine even as 4-byte emoji (16,000 bytes), and come back intact."""
    room = await alice.create_room("long")
    for body in ("a" * 4000, "😀" * 4000, "é" * 3999 + "x"):
        r = await post(alice, room["id"], {"body": body})
        assert r.status_code == 201, r.text[:200]
        assert r.json()["message"]["body"] == body
    assert [m["body"] for m in await alice.history(room["id"])][1] == "😀" * 4000


@pytest.mark.parametrize(
    "body",
    [
        "a" * 4001,
        "😀" * 4001,
        "",
        " ",
        " \t\n\r\u00a0\u2003 ",
        "nul\x00inside",
        "\x00",
    ],
)
async def test_body_rules_refuse(alice: Api, body: str) -> None:
    """Over 4,000 code points, empty, only white space, or with a NUL: 422 invalid."""
    room = await alice.create_room("rules")
    assert error(await post(alice, room["id"], {"body": body})) == (422, "invalid")
    assert await alice.history(room["id"]) == []


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"body": "\ud800"}',
        rb'{"body": "lone \udfff low"}',
        rb'{"body": "reversed \ude00\ud83d pair"}',
        rb'{"body": "ok", "client_id": "\ud800"}',
    ],
)
async def test_lone_surrogate_is_invalid(alice: Api, raw: bytes) -> None:
    """A string with a lone surrogate escape is 422 invalid naming the field, and stores nothing."""
    room = await alice.create_room("surrogates")
    r = await post_raw(alice, room["id"], raw)
    assert error(r) == (422, "invalid"), r.text
    field = "client_id" if b"client_id" in raw else "body"
    assert field in r.json()["error"]["message"]
    assert await alice.history(room["id"]) == []


async def test_surrogate_pair_escape_is_one_character(alice: Api) -> None:
    """A correct surrogate pair escape is one emoji, stored and returned as such."""
    room = await alice.create_room("pair")
    r = await post_raw(alice, room["id"], rb'{"body": "smile \ud83d\ude00"}')
    assert r.status_code == 201, r.text
    assert r.json()["message"]["body"] == "smile 😀"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"body": 5}, "body"),
        ({"body": None}, "body"),
        ({"body": ["hi"]}, "body"),
        ({}, "body"),
        ({"body": "hi", "client_id": 7}, "client_id"),
        ({"body": "hi", "client_id": "c" * 65}, "client_id"),
        ({"body": "hi", "client_id": ""}, "client_id"),
        ({"body": "hi", "client_id": "nul\x00"}, "client_id"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(
    alice: Api, payload: dict[str, Any], field: str
) -> None:
    """A wrong type, a missing body or a client_id over 64 characters is 422 naming the field."""
    room = await alice.create_room("types")
    r = await post(alice, room["id"], payload)
    assert error(r) == (422, "invalid"), r.text
    assert field in r.json()["error"]["message"]


async def test_body_that_is_not_json_is_400(alice: Api) -> None:
    """A message body that is not JSON at all is 400 invalid and stores nothing."""
    room = await alice.create_room("garbage")
    for raw in (b"body=hi", b'{"body": "unterminated', b"", b"NaN"):
        r = await post_raw(alice, room["id"], raw)
        assert error(r) == (400, "invalid"), (raw, r.text)
    assert await alice.history(room["id"]) == []


async def test_message_over_64_kib_is_413(alice: Api) -> None:
    """A message request over 64 KiB is 413 too_large, whatever its body says."""
    room = await alice.create_room("huge")
    r = await post(alice, room["id"], {"body": "x" * 100, "pad": "p" * 70000})
    assert error(r) == (413, "too_large")
    assert await alice.history(room["id"]) == []


# -- client_id idempotency ----------------------------------------------------


async def test_client_id_makes_a_post_idempotent(alice: Api) -> None:
    """The same sender, room and client_id return the first message and store nothing new."""
    room = await alice.create_room("retry")
    first = await alice.post(room["id"], "once", client_id="c-42")
    again = await alice.post(room["id"], "once", client_id="c-42")
    different_body = await alice.post(room["id"], "changed my mind", client_id="c-42")
    assert again == first
    assert different_body == first
    assert [m["id"] for m in await alice.history(room["id"])] == [first["id"]]
    # The retries took no seq: the next message is number 2.
    assert (await alice.post(room["id"], "next"))["seq"] == 2


async def test_client_id_of_64_characters_is_accepted(alice: Api) -> None:
    """A client_id of exactly 64 characters is accepted and echoed back."""
    room = await alice.create_room("long id")
    client_id = "k" * 63 + "😀"
    message = await alice.post(room["id"], "hi", client_id=client_id)
    assert message["client_id"] == client_id
    assert await alice.post(room["id"], "hi", client_id=client_id) == message


async def test_client_id_is_scoped_to_sender_and_room(alice: Api, bob: Api) -> None:
    """The same client_id from another sender, or in another room, is a new message."""
    room = await alice.create_room("scoped")
    other = await alice.create_room("elsewhere")
    await bob.join(room["id"])
    mine = await alice.post(room["id"], "alice", client_id="same")
    theirs = await bob.post(room["id"], "bob", client_id="same")
    there = await alice.post(other["id"], "other room", client_id="same")
    assert len({mine["id"], theirs["id"], there["id"]}) == 3
    assert [m["seq"] for m in await alice.history(room["id"])] == [1, 2]


async def test_retried_post_is_not_fanned_out_again(
    alice: Api, bob: Api, server: ServerProcess
) -> None:
    """An idempotent retry sends no second live frame: the next frame is the next message."""
    room = await alice.create_room("no echo")
    await bob.join(room["id"])
    ws = await Ws.connect(server.ws_url, bob.token)
    try:
        await ws.join(room["id"])
        first = await alice.post(room["id"], "once", client_id="only-once")
        await alice.post(room["id"], "once", client_id="only-once")
        second = await alice.post(room["id"], "twice")
        assert await ws.messages(room["id"], 2) == [first, second]
    finally:
        await ws.close()


# -- history ------------------------------------------------------------------


async def test_history_default_is_the_newest_50_ascending(
    alice: Api, filled: tuple[Any, list[dict[str, Any]]]
) -> None:
    """With no parameters, history is the newest 50 messages in ascending seq."""
    room, sent = filled
    page = await alice.history(room)
    assert [m["seq"] for m in page] == list(range(11, 61))
    assert page == sent[10:]


async def test_history_before_after_and_limit(
    alice: Api, filled: tuple[Any, list[dict[str, Any]]]
) -> None:
    """`before` gives the newest below it, `after` the oldest above it, always ascending."""
    room, _ = filled

    async def seqs(**params: Any) -> list[int]:
        return [m["seq"] for m in await alice.history(room, **params)]

    assert await seqs(before=20, limit=5) == [15, 16, 17, 18, 19]
    assert await seqs(after=20, limit=5) == [21, 22, 23, 24, 25]
    assert await seqs(before=3) == [1, 2]
    assert await seqs(after=58) == [59, 60]
    assert await seqs(after=60) == []
    assert await seqs(before=1) == []
    assert await seqs(after=0, limit=3) == [1, 2, 3]
    assert await seqs(limit=1) == [60]
    assert await seqs(limit=200) == list(range(1, 61))
    assert await seqs(after=10, before=14) == [11, 12, 13]
    assert await seqs(before=1000, limit=2) == [59, 60]


async def test_history_pages_by_keyset_without_gap_or_repeat(
    alice: Api, filled: tuple[Any, list[dict[str, Any]]]
) -> None:
    """Paging back with `before` and forward with `after` visits 1..60 once each."""
    room, sent = filled
    backwards: list[dict[str, Any]] = []
    page = await alice.history(room, limit=7)
    while page:
        backwards = page + backwards
        page = await alice.history(room, before=page[0]["seq"], limit=7)
    assert backwards == sent
    forwards = []
    after = 0
    while page := await alice.history(room, after=after, limit=7):
        forwards += page
        after = page[-1]["seq"]
    assert forwards == sent


async def test_history_keeps_seq_order_when_posted_concurrently(alice: Api, bob: Api) -> None:
    """Messages posted at once come back in strictly ascending, gapless seq order."""
    room = await alice.create_room("burst")
    await bob.join(room["id"])
    await asyncio.gather(
        *(api.post(room["id"], f"{api.username}-{n}") for n in range(10) for api in (alice, bob))
    )
    page = await alice.history(room["id"])
    assert [m["seq"] for m in page] == list(range(1, 21))


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": "5_0"},
        {"limit": "\u0665"},
        {"before": "x"},
        {"after": "-3"},
        {"before": "99999999999999999999999"},
    ],
)
async def test_history_refuses_bad_parameters(alice: Api, params: dict[str, Any]) -> None:
    """A limit outside 1-200, or a before/after that is not a seq, is 422 naming it."""
    room = await alice.create_room("params")
    r = await get(alice, room["id"], **params)
    assert error(r) == (422, "invalid"), r.text
    assert next(iter(params)) in r.json()["error"]["message"]


# -- access -------------------------------------------------------------------


async def test_non_member_cannot_read_write_or_see_presence(alice: Api, bob: Api) -> None:
    """A non-member gets 403 forbidden for history, posting and presence, public room or not."""
    for private in (False, True):
        room = await alice.create_room("members only", private=private)
        await alice.post(room["id"], "secret")
        assert error(await get(bob, room["id"])) == (403, "forbidden")
        assert error(await get(bob, room["id"], after=0)) == (403, "forbidden")
        assert error(await post(bob, room["id"], {"body": "let me in"})) == (403, "forbidden")
        r = await bob.raw("GET", f"/api/rooms/{room['id']}/presence")
        assert error(r) == (403, "forbidden")
        assert [m["body"] for m in await alice.history(room["id"])] == ["secret"]


@pytest.mark.parametrize("room_id", ["999999999", "0", "abc", "12345678901234567890"])
async def test_unknown_room_is_404(alice: Api, room_id: str) -> None:
    """History, posting and presence of a room that does not exist are 404 not_found."""
    assert error(await get(alice, room_id)) == (404, "not_found")
    assert error(await post(alice, room_id, {"body": "anyone?"})) == (404, "not_found")
    r = await alice.raw("GET", f"/api/rooms/{room_id}/presence")
    assert error(r) == (404, "not_found")


async def test_message_needs_a_token(alice: Api, anon: Api) -> None:
    """Posting or reading without a token is 401 even for a room that exists."""
    room = await alice.create_room("authed")
    assert error(await post(anon, room["id"], {"body": "hi"})) == (401, "unauthorized")
    assert error(await get(anon, room["id"])) == (401, "unauthorized")


# -- PostgreSQL down ----------------------------------------------------------


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_postgres_down_is_503_and_the_process_recovers(
    private_postgres: PrivatePostgres, server_env: dict[str, str]
) -> None:
    """PostgreSQL stopped: 503 unavailable; started again: the same process serves."""
    env = {
        **server_env,
        "DATABASE_URL": private_postgres.url,
        # A prefix of its own: room ids here collide with the shared database's.
        "REDIS_PREFIX": f"{server_env['REDIS_PREFIX']}pg{secrets.token_hex(2)}",
        "DB_CONNECT_TIMEOUT": "1",
    }
    proc = ServerProcess(env, "private-pg")
    await proc.start()
    alice = None
    try:
        alice = await Api.new_user(proc.url, "down")
        room = await alice.create_room("outage")
        before = await alice.post(room["id"], "before the outage")

        await private_postgres.stop()
        r = await post(alice, room["id"], {"body": "during the outage"})
        assert error(r) == (503, "unavailable"), r.text
        assert error(await get(alice, room["id"])) == (503, "unavailable")
        assert error(await alice.raw("GET", "/api/rooms")) == (503, "unavailable")
        ready = await alice.raw("GET", "/readyz")
        assert error(ready) == (503, "unavailable")
        assert "postgresql" in ready.json()["error"]["message"]
        assert (await alice.raw("GET", "/healthz")).status_code == 200

        await private_postgres.restart()
        after = await alice.post(room["id"], "after the outage")
        assert after["seq"] == 2  # the refused post stored nothing
        assert await alice.history(room["id"]) == [before, after]
        assert (await alice.raw("GET", "/readyz")).status_code == 200
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        if alice is not None:
            await alice.close()
        await proc.stop()
