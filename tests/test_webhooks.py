"""Outgoing webhooks (issue 15): the URL rule, the outbox, order, retries, replies, crashes.

Deliveries run against a real HTTP receiver on 127.0.0.1 (`webhook_receiver.py`)
from private server processes on a database of their own: every process of a
database delivers its events, so the run's shared servers (which refuse
loopback URLs) must not see these. Retry delays, timeout and lease are shrunk
by settings so that a test of a 24-hour rule takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chat.config import Settings
from chat.deliveries import retry_delay
from chat.protocol import User
from chat.store import Draft, Store
from chat.webhooks import forbidden_address, sign

from .conftest import RUN, fresh_database
from .support import Api, ApiError, ServerProcess, Ws, free_port
from .webhook_receiver import Answer, Received, Receiver, receiving

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "webhook_bot.py"
FAST = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_TIMEOUT": "1",
    "WEBHOOK_LEASE": "2",
    "WEBHOOK_RETRY_BASE": "0.05",
    "WEBHOOK_RETRY_MAX": "0.2",
    "WEBHOOK_GIVE_UP": "60",
    "WEBHOOK_POLL_INTERVAL": "0.05",
}


@contextlib.asynccontextmanager
async def service(
    server_env: dict[str, str], count: int = 1, **settings: str
) -> AsyncIterator[tuple[str, list[ServerProcess]]]:
    """`count` server processes on a fresh database of their own, with `settings`."""
    tag = secrets.token_hex(3)
    async with fresh_database(f"chat_hooks_{RUN}_{tag}") as url:
        env = {**server_env, "DATABASE_URL": url, "REDIS_PREFIX": f"hooks{RUN}{tag}", **settings}
        servers = [ServerProcess(env, f"hooks-{i}") for i in range(count)]
        try:
            for server in servers:
                await server.start()
            yield url, servers
        finally:
            for server in servers:
                await server.stop()


@pytest.fixture(scope="module")
async def hooks(server_env: dict[str, str]) -> AsyncIterator[tuple[str, list[ServerProcess]]]:
    """Two processes that allow loopback webhooks, with fast retries."""
    async with service(server_env, 2, **FAST) as found:
        yield found


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


async def owner_and_bot(url: str, owner: Api | None = None) -> tuple[Api, Api]:
    """A person (new unless given) and a new bot they own, both signed in."""
    owner = owner or await Api.new_user(url, "own")
    out = await owner.request(
        "POST", "/api/bots", 201, json={"username": f"bot{secrets.token_hex(5)}"}
    )
    return owner, Api(url, out["token"], out["user"])


async def set_hook(owner: Api, bot: Api, url: str) -> str:
    out = await owner.request("PUT", f"/api/bots/{bot.username}/webhook", 200, json={"url": url})
    assert out["webhook"]["url"] == url
    return str(out["webhook"]["secret"])


async def deliveries(owner: Api, bot: Api) -> list[dict[str, Any]]:
    out = await owner.request("GET", f"/api/bots/{bot.username}/deliveries", 200)
    return list(out["deliveries"])


async def settled(owner: Api, bot: Api, count: int) -> list[dict[str, Any]]:
    """The bot's deliveries once `count` of them are no longer pending (polled: the
    outcome is written after the receiver answered, with nothing to wait on)."""
    async with asyncio.timeout(30):
        while True:
            found = await deliveries(owner, bot)
            if len([d for d in found if d["status"] != "pending"]) >= count:
                return found
            await asyncio.sleep(0.05)


async def room_with(owner: Api, bot: Api) -> int:
    room = int((await owner.create_room("hooked"))["id"])
    await bot.join(room)
    return room


# -- the URL rule and the owner's routes ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://224.0.0.1/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "http:///nohost",
    ],
)
async def test_forbidden_urls_are_invalid(server: ServerProcess, url: str) -> None:
    """Loopback, private, link-local, multicast hosts and other schemes are 422 invalid."""
    owner, bot = await owner_and_bot(server.url)
    r = await owner.raw("PUT", f"/api/bots/{bot.username}/webhook", json={"url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid"
    await owner.close()
    await bot.close()


async def test_only_the_owner_sets_a_webhook_and_each_put_makes_a_new_secret(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """Another user gets 403 (the bot itself too), an unknown bot 404; each PUT a new
    secret; DELETE 204 then 404; deliveries are the owner's only."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    stranger = await Api.new_user(base, "str")
    for who in (stranger, bot):
        r = await who.raw(
            "PUT", f"/api/bots/{bot.username}/webhook", json={"url": receiver.url("/x")}
        )
        assert r.status_code == 403
        r = await who.raw("GET", f"/api/bots/{bot.username}/deliveries")
        assert r.status_code == 403
    r = await owner.raw("PUT", "/api/bots/nobody-here/webhook", json={"url": receiver.url("/x")})
    assert r.status_code == 404
    r = await owner.raw("PUT", f"/api/bots/{owner.username}/webhook", json={"url": "http://x"})
    assert r.status_code == 404  # a person is no bot
    first = await set_hook(owner, bot, receiver.url("/x"))
    second = await set_hook(owner, bot, receiver.url("/x"))
    assert first != second and len(second) >= 32
    await owner.request("DELETE", f"/api/bots/{bot.username}/webhook", 204)
    await owner.request("DELETE", f"/api/bots/{bot.username}/webhook", 404)
    for api in (owner, bot, stranger):
        await api.close()


# -- delivery ---------------------------------------------------------------------------


async def test_events_are_signed_and_delivered_in_seq_order(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """Each message by another user is POSTed once, in seq order, with the contract's body,
    headers and HMAC signature; the bot's own message is not; deliveries list them."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    path = f"/order-{bot.username}"
    secret = await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    await bot.post(room, "my own words")
    sent = [await owner.post(room, f"m{i}") for i in range(6)]
    got = await receiver.wait(path, 6)
    assert [r.seq for r in got] == [m["seq"] for m in sent]
    for request, message in zip(got, sent, strict=True):
        assert request.signed_with(secret)
        assert not request.signed_with("whsec_another")
        body = request.json
        assert body["event"] == "message"
        assert body["delivery"] == request.delivery
        assert body["bot"] == bot.user
        assert body["room"]["id"] == room
        assert body["message"]["id"] == message["id"]
        assert body["message"]["body"] == message["body"]
        assert request.headers["x-chat-timestamp"].isdigit()
    found = await settled(owner, bot, 6)
    assert [d["message_id"] for d in found] == [m["id"] for m in reversed(sent)]
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in found)
    assert all(d["last_status"] == 200 and d["room"] == room for d in found)
    assert len(receiver.at(path)) == 6  # the bot's own message made no event
    await owner.close()
    await bot.close()


async def test_concurrent_sends_each_get_their_event(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """Sends stored together by group commit each get one event; a repeated client_id
    (stored once) gets one; all are delivered in seq order."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    path = f"/batch-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    results = await asyncio.gather(
        *(owner.post(room, f"b{i}", client_id=f"c{i % 30}") for i in range(40))
    )
    stored = {m["id"]: m for m in results}
    assert len(stored) == 30
    got = await receiver.wait(path, 30)
    assert [r.seq for r in got] == sorted(m["seq"] for m in stored.values())
    found = await settled(owner, bot, 30)
    assert len(found) == 30
    await owner.close()
    await bot.close()


async def test_retries_in_order_and_a_down_webhook_holds_up_nobody_else(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """500, 429, 503 and a timeout are retried with the lane held (seq 2
    waits for seq 1); meanwhile another bot of the room, and this bot's other room, get
    theirs at once."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    _, other = await owner_and_bot(base, owner)
    path, other_path = f"/flaky-{bot.username}", f"/fine-{other.username}"
    await set_hook(owner, bot, receiver.url(path))
    await set_hook(owner, other, receiver.url(other_path))
    room = await room_with(owner, bot)
    await other.join(room)
    second_room = await room_with(owner, bot)

    def first_room(request: Received) -> bool:
        return bool(request.json["room"]["id"] == room)

    receiver.on(
        path,
        *(Answer(status, match=first_room) for status in (500, 429, 503)),
        Answer(200, delay=1.5, match=first_room),
    )
    first = await owner.post(room, "first")
    await receiver.wait(path, 1)
    then = await owner.post(room, "second")
    elsewhere = await owner.post(second_room, "elsewhere")
    # The other bot and the other room are not held up by the retrying lane.
    await receiver.wait(other_path, 2)
    await receiver.wait_for(path, lambda rs: any(r.json["room"]["id"] == second_room for r in rs))
    got = await receiver.wait_for(
        path, lambda rs: any(r.json["message"]["id"] == then["id"] for r in rs)
    )
    lane = [r.json["message"]["id"] for r in got if r.json["room"]["id"] == room]
    # Attempts 1-4 of the first failed or timed out, the fifth succeeded, then the second.
    assert lane == [first["id"]] * 5 + [then["id"]]
    assert len({r.delivery for r in got if r.json["message"]["id"] == first["id"]}) == 1
    found = {d["message_id"]: d for d in await settled(owner, bot, 3)}
    assert found[first["id"]]["attempts"] == 5 and found[first["id"]]["status"] == "delivered"
    assert found[elsewhere["id"]]["attempts"] == 1
    await owner.close()
    await bot.close()
    await other.close()


async def test_other_4xx_and_redirects_fail_at_once(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """A 400 fails the event after one attempt, a 302 is not followed and fails too, and
    the lane moves on to the next event."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    path = f"/picky-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    receiver.on(path, Answer(400), Answer(302, headers={"location": receiver.url(path + "/moved")}))
    a = await owner.post(room, "refused")
    b = await owner.post(room, "redirected")
    c = await owner.post(room, "fine")
    got = await receiver.wait(path, 3)
    assert [r.json["message"]["id"] for r in got] == [a["id"], b["id"], c["id"]]
    found = {d["message_id"]: d for d in await settled(owner, bot, 3)}
    assert found[a["id"]] | {"id": 0} == {
        "id": 0,
        "room": room,
        "message_id": a["id"],
        "status": "failed",
        "attempts": 1,
        "last_status": 400,
        "last_error": "HTTP 400",
    }
    assert found[b["id"]]["status"] == "failed" and found[b["id"]]["last_status"] == 302
    assert found[c["id"]]["status"] == "delivered"
    assert receiver.at(path + "/moved") == []
    await owner.close()
    await bot.close()


async def test_reply_is_sent_once_even_when_the_event_is_delivered_again(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """A 2xx `{"reply": TEXT}` becomes the bot's message; the same event delivered again
    (as after a crash between the reply and the record) stores no second reply."""
    url, servers = hooks
    base = servers[0].url
    owner, bot = await owner_and_bot(base)
    path = f"/reply-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    answer = json.dumps({"reply": "pong"}).encode()
    receiver.on(path, Answer(200, answer), Answer(200, answer))
    await owner.post(room, "ping")
    first = await receiver.wait(path, 1)
    await settled(owner, bot, 1)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE webhook_events SET status = 'pending', finished_at = NULL WHERE id = $1",
            first[0].delivery,
        )
    finally:
        await conn.close()
    again = await receiver.wait(path, 2)
    assert again[1].delivery == again[0].delivery
    await settled(owner, bot, 1)
    history = await owner.all_messages(room)
    replies = [m for m in history if m["sender"]["id"] == bot.user["id"]]
    assert [m["body"] for m in replies] == ["pong"]
    assert replies[0]["client_id"] == f"webhook-{first[0].delivery}"
    assert replies[0]["thread"] is None  # the event's message was no reply
    # The bot's reply made no event for the bot itself.
    assert len(receiver.at(path)) == 2
    # An event of a reply in a thread: the bot's answer goes to the same thread.
    root = next(m for m in history if m["body"] == "ping")
    receiver.on(path, Answer(200, json.dumps({"reply": "in thread"}).encode()))
    await owner.request(
        "POST", f"/api/rooms/{room}/messages", 201, json={"body": "ping 2", "thread": root["id"]}
    )
    await receiver.wait(path, 3)
    await settled(owner, bot, 2)
    threaded = [m for m in await owner.all_messages(room) if m["body"] == "in thread"]
    assert [m["thread"] for m in threaded] == [root["id"]]
    await owner.close()
    await bot.close()


async def test_metrics_count_deliveries_and_lag(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """/metrics has the delivery counts by outcome, the lag histogram and the backlog gauge."""
    _, servers = hooks
    owner, bot = await owner_and_bot(servers[0].url)
    path = f"/metrics-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    await owner.post(room, "counted")
    await receiver.wait(path, 1)
    await settled(owner, bot, 1)
    text = ""
    for server in servers:
        anon = Api(server.url)
        text += await anon.request("GET", "/metrics", 200)
        await anon.close()
    assert 'chat_webhook_deliveries_total{outcome="delivered"}' in text
    assert "chat_webhook_lag_seconds_bucket" in text
    assert "chat_webhook_oldest_pending_seconds" in text
    await owner.close()
    await bot.close()


# -- rules that need processes of their own ---------------------------------------------


async def test_events_fail_after_the_give_up_age(server_env: dict[str, str]) -> None:
    """A webhook that answers 500 for longer than WEBHOOK_GIVE_UP leaves the event failed,
    with its attempts and last status, and the next event is tried."""
    async with (
        receiving() as receiver,
        service(server_env, 1, **{**FAST, "WEBHOOK_GIVE_UP": "1"}) as (_, (server,)),
    ):
        owner, bot = await owner_and_bot(server.url)
        path = "/down"
        await set_hook(owner, bot, receiver.url(path))
        room = await room_with(owner, bot)
        receiver.on(path, *[Answer(500)] * 1000)
        doomed = await owner.post(room, "never delivered")
        found = await settled(owner, bot, 1)
        assert found[0]["message_id"] == doomed["id"]
        assert found[0]["status"] == "failed" and found[0]["last_status"] == 500
        assert found[0]["attempts"] >= 3
        receiver.script[path].clear()
        nxt = await owner.post(room, "next")
        got = await receiver.wait_for(path, lambda rs: rs[-1].json["message"]["id"] == nxt["id"])
        assert got[-1].json["message"]["id"] == nxt["id"]
        await owner.close()
        await bot.close()


async def test_address_is_checked_again_at_connect_time(server_env: dict[str, str]) -> None:
    """A URL whose host is (now) a loopback address is refused when connecting, even though
    it was stored: the event fails and nothing reaches the address."""
    async with (
        receiving() as receiver,
        service(server_env, 1, WEBHOOK_POLL_INTERVAL="0.05") as (
            url,
            (server,),
        ),
    ):
        owner, bot = await owner_and_bot(server.url)
        conn = await asyncpg.connect(url)
        try:
            # As if the name had resolved to a public address when the URL was set.
            await conn.execute(
                "INSERT INTO webhooks (bot_id, url, secret) VALUES ($1, $2, 'whsec_x')",
                bot.user["id"],
                receiver.url("/inside"),
            )
        finally:
            await conn.close()
        room = await room_with(owner, bot)
        await owner.post(room, "probe")
        found = await settled(owner, bot, 1)
        assert found[0]["status"] == "failed"
        assert "forbidden address" in found[0]["last_error"]
        assert receiver.at("/inside") == []
        await owner.close()
        await bot.close()


@pytest.mark.faults
async def test_sigkill_mid_delivery_loses_nothing_and_leaves_nothing_stuck(
    server_env: dict[str, str],
) -> None:
    """The process delivering an event is SIGKILLed while the request is in flight: after
    its lease runs out the other process delivers that event and the rest of the lane,
    in seq order, every one at least once and none left pending."""
    hold = asyncio.Event()
    async with receiving() as receiver, service(server_env, 1, **FAST) as (url, (a,)):
        owner, bot = await owner_and_bot(a.url)
        path = "/crash"
        await set_hook(owner, bot, receiver.url(path))
        room = await room_with(owner, bot)
        # A holds the first request open; after the kill, one more failure, then fine.
        receiver.on(path, Answer(200, hold=hold), Answer(503))
        sent = [await owner.post(room, "first")]
        await receiver.wait(path, 1)
        b = ServerProcess(a.env, "hooks-b")
        try:
            await b.start()
            await a.kill()
            survivor = owner.on(b.url)
            sent += [await survivor.post(room, f"after {i}") for i in range(5)]
            got = await receiver.wait_for(path, lambda rs: len({r.delivery for r in rs}) == 6)
            ids = [r.json["message"]["id"] for r in got]
            # The first came three times (A's, B's failure, B's success); then each once.
            assert ids == [sent[0]["id"]] * 3 + [m["id"] for m in sent[1:]]
            found = await settled(survivor, bot, 6)
            assert all(d["status"] == "delivered" for d in found)
            await survivor.close()
        finally:
            hold.set()
            await b.stop()
        conn = await asyncpg.connect(url)
        try:
            stuck = await conn.fetchval(
                "SELECT count(*) FROM webhook_events WHERE status = 'pending'"
            )
        finally:
            await conn.close()
        assert stuck == 0
        await owner.close()
        await bot.close()


async def test_bad_urls_with_private_allowed_are_still_invalid(
    hooks: tuple[str, list[ServerProcess]],
) -> None:
    """With WEBHOOK_ALLOW_PRIVATE the scheme and host rules still hold."""
    owner, bot = await owner_and_bot(hooks[1][0].url)
    for url in ("ftp://127.0.0.1/", "http://", "http://exa mple.com/", "not a url"):
        with pytest.raises(ApiError) as caught:
            await set_hook(owner, bot, url)
        assert caught.value.status == 422
    await owner.close()
    await bot.close()


async def test_the_example_bot_checks_the_signature_and_replies(
    hooks: tuple[str, list[ServerProcess]],
) -> None:
    """examples/webhook_bot.py, run as it is documented, answers `!ping` with a reply that
    arrives in the room as the bot's message."""
    base = hooks[1][0].url
    owner, bot = await owner_and_bot(base)
    port = free_port()
    secret = await set_hook(owner, bot, f"http://127.0.0.1:{port}/hook")
    room = await room_with(owner, bot)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        env={**os.environ, "WEBHOOK_SECRET": secret, "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    ws = await Ws.connect(hooks[1][0].ws_url, owner.token)
    try:
        await ws.call({"type": "join", "room": room})
        # Sent before the bot may be listening: the delivery is retried until it is.
        await owner.post(room, "!ping")
        while True:
            frame = await ws.expect("message", skip=("presence", "presence_diff"))
            if frame["message"]["sender"]["id"] == bot.user["id"]:
                break
        assert frame["message"]["body"] == f"pong, {owner.username}"
    finally:
        process.kill()
        await process.wait()
        await ws.ws.close()
        await owner.close()
        await bot.close()


# -- the rules as plain functions -------------------------------------------------------


def test_retry_delays_double_from_the_base_up_to_the_cap() -> None:
    """1 s, 2 s, 4 s ... capped at 300 s, with the defaults."""
    settings = Settings()
    delays = [retry_delay(settings, attempt) for attempt in range(1, 12)]
    assert delays[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert delays[9:] == [300, 300]
    assert retry_delay(settings, 10_000) == 300


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    """`sha256=` + hex HMAC of `TIMESTAMP.BODY`, keyed with the secret's UTF-8 bytes."""
    expected = hmac.new(b"s\xc3\xa9cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("s\u00e9cret", 1700000000, b"{}") == "sha256=" + expected


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("239.255.255.250", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("ff02::1", True),
        ("::ffff:10.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_the_address_rule(address: str, refused: bool) -> None:
    """Loopback, private, link-local, CGNAT, unspecified and multicast addresses (IPv4,
    IPv6 and IPv4-mapped) are refused; global unicast ones pass."""
    assert forbidden_address(ipaddress.ip_address(address)) is refused


async def test_removing_the_webhook_fails_its_pending_events(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """DELETE of a webhook whose event is waiting for a retry leaves that event failed,
    and later messages make no event; the secret never appears in the servers' logs."""
    _, servers = hooks
    owner, bot = await owner_and_bot(servers[0].url)
    path = f"/removed-{bot.username}"
    secret = await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    receiver.on(path, *[Answer(503)] * 1000)
    await owner.post(room, "waiting")
    await receiver.wait(path, 2)  # failed twice: in its retries
    await owner.request("DELETE", f"/api/bots/{bot.username}/webhook", 204)
    found = await settled(owner, bot, 1)
    assert found[0]["status"] == "failed"
    assert found[0]["last_error"] == "the webhook was removed"
    await owner.post(room, "after")
    assert len(await deliveries(owner, bot)) == 1
    receiver.script[path].clear()
    for server in servers:
        assert not any(secret in line for line in server.lines)
    await owner.close()
    await bot.close()


async def test_answers_are_read_up_to_the_limit_only(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """A 2xx answer over WEBHOOK_MAX_RESPONSE_BYTES is an acknowledgement only: its reply
    is not sent, and the delivery says why."""
    _, servers = hooks
    owner, bot = await owner_and_bot(servers[0].url)
    path = f"/big-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    room = await room_with(owner, bot)
    huge = b'{"reply": "too late"' + b" " * 70_000 + b"}"
    receiver.on(path, Answer(200, huge))
    await owner.post(room, "answer me at length")
    found = await settled(owner, bot, 1)
    assert found[0]["status"] == "delivered"
    assert found[0]["last_error"] == "the answer was too long to read for a reply"
    history = await owner.all_messages(room)
    assert [m["body"] for m in history] == ["answer me at length"]
    await owner.close()
    await bot.close()


async def test_one_event_in_flight_per_bot_and_room_across_processes(
    hooks: tuple[str, list[ServerProcess]], receiver: Receiver
) -> None:
    """With both processes delivering and every answer slow, a (bot, room) never has two
    requests open at once, while different rooms of the bot are delivered side by side."""
    _, servers = hooks
    owner, bot = await owner_and_bot(servers[0].url)
    other = owner.on(servers[1].url)
    path = f"/lanes-{bot.username}"
    await set_hook(owner, bot, receiver.url(path))
    rooms = [await room_with(owner, bot) for _ in range(3)]
    receiver.on(path, *[Answer(200, delay=0.15)] * 15)
    for i in range(5):
        for room in rooms:
            await (owner if i % 2 else other).post(room, f"{i}")
    got = await receiver.wait(path, 15)
    for room in rooms:
        lane = [r.seq for r in got if r.json["room"]["id"] == room]
        assert lane == sorted(lane) and len(lane) == 5
        assert receiver.most_open[f"{path}#{room}"] == 1
    assert receiver.most_open[path] > 1  # the lanes did run side by side
    await other.close()
    await owner.close()
    await bot.close()


# -- the outbox, at the store ------------------------------------------------------------


async def test_the_outbox_rows_come_with_the_insert_statement() -> None:
    """`insert_batch` (group commit) and `insert_one` write one event per bot with a webhook
    in the room (never the sender's own), in their own statement; a repeated client_id
    writes neither message nor event. On a database of its own: no process delivers."""
    async with fresh_database(f"chat_outbox_{RUN}") as url:
        await outbox_rows(url)


async def outbox_rows(database_url: str) -> None:
    store = await Store.connect(Settings(database_url=database_url, db_pool_min=1))
    conn = await asyncpg.connect(database_url)
    try:
        tag = secrets.token_hex(4)
        person = await conn.fetchval(
            "INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id",
            f"p{tag}",
        )
        bots = [
            await conn.fetchval(
                "INSERT INTO users (username, bot, owner_id) VALUES ($1, true, $2) RETURNING id",
                f"b{i}{tag}",
                person,
            )
            for i in range(3)
        ]
        room = await conn.fetchval(
            "INSERT INTO rooms (name, created_by) VALUES ('outbox', $1) RETURNING id", person
        )
        for user in (person, *bots):
            await conn.execute("INSERT INTO members (room_id, user_id) VALUES ($1, $2)", room, user)
        for bot in bots[:2]:  # the third bot has no webhook
            await conn.execute(
                "INSERT INTO webhooks (bot_id, url, secret) VALUES ($1, 'http://x', 's')", bot
            )
        sender = User(id=person, username=f"p{tag}")
        batch = await store.insert_batch([Draft(room, sender, f"m{i}", f"c{i}") for i in range(3)])
        assert len(batch) == 3
        one = await store.insert_one(
            Draft(room, User(id=bots[0], username="b", bot=True), "hi", None)
        )
        assert one is not None
        rows = await conn.fetch(
            "SELECT bot_id, message_id, seq FROM webhook_events WHERE room_id = $1 ORDER BY id",
            room,
        )
        expected = {(bot, m.id, m.seq) for m in batch.values() for bot in bots[:2]}
        expected.add((bots[1], one[0].id, one[0].seq))  # bot 0 sent it: only bot 1 hears
        assert {(r["bot_id"], r["message_id"], r["seq"]) for r in rows} == expected
        # The same client_id again: the first message comes back, nothing new is written.
        again = await store.insert_one(Draft(room, sender, "m0", "c0"))
        assert again is not None and again[1] is False
        assert await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE room_id = $1", room
        ) == len(expected)
    finally:
        await conn.close()
        await store.close()
