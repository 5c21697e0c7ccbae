"""The browser client in headless Chromium: people chatting, live and resumed."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import WebSocketRoute, expect

from ..support import Api, ServerProcess
from .conftest import OpenPage


def name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.mark.browser
async def test_two_people_chat(
    servers: tuple[ServerProcess, ServerProcess], open_page: OpenPage
) -> None:
    """Two people in two browsers (on two processes) create, join and talk in a room."""
    a, b = servers
    alice = await open_page(a.url)
    alice_name = name("alice")
    await alice.sign_up(alice_name)
    room_id = await alice.create_room(name("lunch-"))

    bob_api = await Api.new_user(b.url, "bob")
    try:
        bob = await open_page(b.url)
        await bob.sign_in(bob_api.username)
        await bob.page.fill("#join-room-id", room_id)
        await bob.page.press("#join-room-id", "Enter")
        await expect(bob.page.locator("#room-sub")).to_contain_text(f"id {room_id}")

        # Each sees the other online.
        await expect(alice.page.locator("#online")).to_contain_text(bob_api.username)
        await expect(bob.page.locator("#online")).to_contain_text(alice_name)

        # Alice types: Bob is told so.
        await alice.page.locator("#composer-input").press_sequentially("Anyone for")
        await expect(bob.page.locator("#typing")).to_have_text(f"{alice_name} is typing…")

        await alice.page.fill("#composer-input", "Anyone for lunch at noon?")
        await alice.page.press("#composer-input", "Enter")
        mine = alice.page.locator("#messages li.msg.mine").last
        await expect(mine).to_have_attribute("data-state", "sent")
        await expect(bob.bodies).to_have_text(["Anyone for lunch at noon?"])
        await expect(bob.page.locator("#typing")).to_have_text("")

        await bob.send("Yes! The usual place?")
        await expect(alice.bodies).to_have_text(
            ["Anyone for lunch at noon?", "Yes! The usual place?"]
        )
        await expect(bob.bodies).to_have_text(
            ["Anyone for lunch at noon?", "Yes! The usual place?"]
        )
        await expect(alice.messages.last.locator(".sender")).to_have_text(bob_api.username)
        # Nobody may edit another's message.
        await expect(alice.messages.last.locator("button.edit")).to_have_count(0)
    finally:
        await bob_api.close()


@pytest.mark.browser
async def test_markup_is_shown_as_text(server: ServerProcess, open_page: OpenPage) -> None:
    """Message bodies and room names with HTML in them are shown as literal text; no script runs."""
    alice_api = await Api.new_user(server.url, "alice")
    bob_api = await Api.new_user(server.url, "bob")
    try:
        room = await alice_api.create_room("<b>bold</b> & <i>room</i>")
        await bob_api.join(room["id"])
        evil = [
            "<script>alert(1)</script>",
            "<img src=x onerror=\"window.__pwned = 1; alert('img')\">",
            '<a href="javascript:alert(2)">click</a> &amp; &lt;b&gt;',
        ]
        for body in evil[:2]:
            await bob_api.post(room["id"], body)

        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room("<b>bold</b> & <i>room</i>")
        await expect(alice.page.locator("#room-title")).to_have_text("<b>bold</b> & <i>room</i>")
        await alice.send(evil[2])
        await expect(alice.bodies).to_have_text(evil)

        for i, body in enumerate(evil):
            node = alice.bodies.nth(i)
            assert await node.evaluate("e => e.textContent") == body
            assert await node.evaluate("e => e.childElementCount") == 0
        page = alice.page
        assert await page.locator("#messages img, #messages script, #messages a").count() == 0
        assert await page.locator(".room-name b, #room-title b").count() == 0
        assert await page.evaluate("window.__pwned") is None
        # (any alert() would have been recorded as a dialog and failed the test)
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
async def test_edit_and_delete(server: ServerProcess, open_page: OpenPage) -> None:
    """One's own messages can be edited (Up arrow, Enter) and deleted; the other side sees both."""
    alice_api = await Api.new_user(server.url, "alice")
    bob_api = await Api.new_user(server.url, "bob")
    try:
        room_name = name("plans-")
        room = await alice_api.create_room(room_name)
        await bob_api.join(room["id"])
        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        bob = await open_page(server.url)
        await bob.sign_in(bob_api.username)
        await alice.open_room(room_name)
        await bob.open_room(room_name)

        await alice.send("Meet at 10?")
        await alice.send("Bring the slides")
        await expect(bob.bodies).to_have_text(["Meet at 10?", "Bring the slides"])

        # Keyboard: Up in the empty box edits the last own message.
        await alice.page.press("#composer-input", "ArrowUp")
        box = alice.page.locator("#messages .edit-box")
        await expect(box).to_be_focused()
        await box.fill("Bring the slides and the demo")
        await box.press("Enter")
        await expect(alice.bodies).to_have_text(["Meet at 10?", "Bring the slides and the demo"])
        await expect(bob.bodies).to_have_text(["Meet at 10?", "Bring the slides and the demo"])
        await expect(bob.messages.last.locator(".edited")).to_be_visible()

        # Mouse: Delete, then confirm.
        first = alice.messages.first
        await first.hover()
        await first.locator("button.delete").click()
        await first.locator("button.danger").click()
        await expect(bob.messages.first).to_have_class(re.compile(r"\bdeleted\b"))
        await expect(bob.bodies).to_have_text(
            ["This message was deleted.", "Bring the slides and the demo"]
        )
        await expect(alice.messages.first.locator("button.edit")).to_have_count(0)
        stored = await alice_api.history(room["id"])
        assert [m["deleted"] for m in stored] == [True, False]
        assert stored[1]["body"] == "Bring the slides and the demo"
        assert stored[1]["edited_at"] is not None
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
async def test_scroll_back_through_history(server: ServerProcess, open_page: OpenPage) -> None:
    """A long room shows its newest page, and scrolling up loads the rest in order, each once."""
    alice_api = await Api.new_user(server.url, "alice")
    try:
        room_name = name("history-")
        room = await alice_api.create_room(room_name)
        total = 130
        for i in range(1, total + 1):
            await alice_api.post(room["id"], f"line {i}")
        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room(room_name)
        await expect(alice.messages).to_have_count(50)
        await expect(alice.bodies.last).to_have_text(f"line {total}")
        await expect(alice.bodies.last).to_be_in_viewport()

        # The button, for keyboard users ...
        await alice.page.locator("#load-older").click()
        await expect(alice.messages).to_have_count(100)
        # ... and scrolling to the top, for everyone else.
        await alice.page.locator("#messages").evaluate("e => { e.scrollTop = 0; }")
        await expect(alice.messages).to_have_count(total)
        await expect(alice.page.locator("#history-start")).to_have_text(
            "This is the start of the conversation."
        )
        await expect(alice.bodies).to_have_text([f"line {i}" for i in range(1, total + 1)])
        seqs = [int(s) for s in await alice.messages.evaluate_all("l => l.map(e => e.dataset.seq)")]
        assert seqs == list(range(1, total + 1))
    finally:
        await alice_api.close()


@pytest.mark.browser
async def test_unread_counts_and_read_positions(server: ServerProcess, open_page: OpenPage) -> None:
    """Rooms show unread counts, live; reading a room sends `read` and clears its count."""
    alice_api = await Api.new_user(server.url, "alice")
    bob_api = await Api.new_user(server.url, "bob")
    try:
        quiet, busy = name("quiet-"), name("busy-")
        quiet_room = await alice_api.create_room(quiet)
        busy_room = await alice_api.create_room(busy)
        await bob_api.join(busy_room["id"])
        await bob_api.post(busy_room["id"], "one")
        await bob_api.post(busy_room["id"], "two")

        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room(quiet)
        badge = alice.room_button(busy).locator(".badge")
        await expect(badge).to_have_text("2 unread")
        await bob_api.post(busy_room["id"], "three")  # arrives live
        await expect(badge).to_have_text("3 unread")
        await expect(alice.page).to_have_title("(3) Chat")

        await alice.open_room(busy)
        await expect(alice.bodies).to_have_text(["one", "two", "three"])
        await expect(badge).to_be_hidden()
        await expect(alice.page).to_have_title("Chat")
        sent = await alice.frames.wait_for(
            lambda: [f for f in alice.frames.sent if f["type"] == "read" and f["seq"] == 3]
        )
        ref = sent[0]["ref"]
        await alice.frames.wait_for(
            lambda: [f for f in alice.frames.received if f.get("ref") == ref and f["type"] == "ok"]
        )
        rooms = (await alice_api.request("GET", "/api/rooms", 200))["rooms"]
        unread = {r["id"]: r["unread"] for r in rooms}
        assert unread == {quiet_room["id"]: 0, busy_room["id"]: 0}
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
async def test_direct_message(server: ServerProcess, open_page: OpenPage) -> None:
    """Starting a DM by username opens a private room that the other person finds, unread."""
    alice_api = await Api.new_user(server.url, "alice")
    bob_api = await Api.new_user(server.url, "bob")
    try:
        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        await alice.page.fill("#dm-username", bob_api.username)
        await alice.page.press("#dm-username", "Enter")
        await expect(alice.page.locator("#room-title")).to_have_text(f"@{bob_api.username}")
        await expect(alice.page.locator("#room-sub")).to_have_text("Direct message")
        await alice.send("Psst: the surprise party is on Friday")

        bob = await open_page(server.url)
        await bob.sign_in(bob_api.username)
        item = bob.page.locator("#dm-list .room-item", has_text=alice_api.username)
        await expect(item.locator(".badge")).to_have_text("1 unread")
        await item.click()
        await expect(bob.bodies).to_have_text(["Psst: the surprise party is on Friday"])
        # Starting it again from the other side finds the same room.
        await bob.page.fill("#dm-username", alice_api.username)
        await bob.page.press("#dm-username", "Enter")
        await expect(bob.page.locator("#dm-list .room-item")).to_have_count(1)
        await expect(bob.bodies).to_have_text(["Psst: the surprise party is on Friday"])
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
async def test_revoked_session_stops_reconnecting(
    server: ServerProcess, open_page: OpenPage
) -> None:
    """After close 4001 (the token was revoked) the page says why and does not reconnect."""
    alice_api = await Api.new_user(server.url, "alice")
    try:
        alice = await open_page(server.url)
        await alice.sign_in(alice_api.username)
        token = await alice.token()
        revoke = Api(server.url, token)
        try:
            await revoke.request("DELETE", "/api/sessions/current", 204)
        finally:
            await revoke.close()
        banner = alice.page.locator("#banner")
        await expect(banner).to_contain_text("signed out")
        await expect(banner).to_have_attribute("data-kind", "error")
        await expect(alice.page.locator("#conn-dot")).to_have_attribute("data-state", "fatal")
        await alice.page.locator("#banner-action").click()
        await expect(alice.page.locator("#auth-username")).to_be_visible()
        assert len(alice.frames.sockets) == 1
        assert await alice.page.evaluate("sessionStorage.getItem('chat.session')") is None
    finally:
        await alice_api.close()


@pytest.mark.browser
async def test_phone_screen_and_keyboard_only(server: ServerProcess, open_page: OpenPage) -> None:
    """On a phone-sized touch screen, with the keyboard alone: sign in, create a room, send."""
    alice_api = await Api.new_user(server.url, "alice")
    try:
        alice = await open_page(
            server.url, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
        )
        page = alice.page
        await expect(page.locator("#auth-username")).to_be_focused()
        await page.keyboard.type(alice_api.username)
        await page.keyboard.press("Tab")
        await expect(page.locator("#auth-password")).to_be_focused()
        await page.keyboard.type("correct horse battery")
        await page.keyboard.press("Enter")
        await alice.connected()

        # No rooms yet: focus waits in the new-room box.
        await expect(page.locator("#new-room-name")).to_be_focused()
        outline = await page.locator("#new-room-name").evaluate(
            "e => getComputedStyle(e).outlineStyle"
        )
        assert outline != "none"
        await page.keyboard.type("Walks")
        await page.keyboard.press("Enter")
        await expect(page.locator("#room-title")).to_have_text("Walks")
        await expect(page.locator("#sidebar")).to_be_hidden()
        await expect(page.locator("#composer-input")).to_be_focused()
        await page.keyboard.type("Sunday, 9am, by the river?")
        await page.keyboard.press("Enter")
        await expect(page.locator("#messages li.msg.mine[data-state=sent] .body")).to_have_text(
            "Sunday, 9am, by the river?"
        )
        # Own messages keep their buttons on a touch screen (no hover there).
        await expect(alice.messages.first.locator("button.edit")).to_be_visible()
        no_sideways = "document.documentElement.scrollWidth <= window.innerWidth"
        assert await page.evaluate(no_sideways)

        # Back to the list, by keyboard.
        await page.locator("#back-to-rooms").focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#sidebar")).to_be_visible()
        await expect(alice.room_button("Walks")).to_be_focused()
        assert await page.evaluate(no_sideways)
    finally:
        await alice_api.close()


StartSolo = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def start_solo(server_env: dict[str, str]) -> AsyncIterator[StartSolo]:
    """Start a process of the same service that the test alone stops and restarts."""
    started: list[ServerProcess] = []

    async def start(**settings: str) -> ServerProcess:
        proc = ServerProcess({**server_env, **settings}, "solo")
        started.append(proc)
        return await proc.start()

    yield start
    for proc in started:
        await proc.stop()


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_resume_after_server_restart(
    servers: tuple[ServerProcess, ServerProcess], start_solo: StartSolo, open_page: OpenPage
) -> None:
    """A page rides out a restart of its server; what was sent meanwhile shows once, in order."""
    _, other = servers
    solo = await start_solo()
    alice_api = await Api.new_user(other.url, "alice")
    bob_api = await Api.new_user(other.url, "bob")
    try:
        room_name = name("ops-")
        room = await alice_api.create_room(room_name)
        await bob_api.join(room["id"])
        alice = await open_page(solo.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room(room_name)
        await alice.send("before the restart")
        await bob_api.post(room["id"], "bob: still here")
        await expect(alice.bodies).to_have_text(["before the restart", "bob: still here"])

        await solo.stop()
        banner = alice.page.locator("#banner")
        await expect(banner).to_contain_text(re.compile("reconnecting", re.I))
        await expect(alice.page.locator("#conn-dot")).not_to_have_attribute("data-state", "open")

        # Meanwhile Bob, on the other process, carries on; Alice writes one too.
        during = [f"during the outage {i}" for i in range(1, 6)]
        for body in during:
            await bob_api.post(room["id"], body)
        await alice.page.fill("#composer-input", "written while offline")
        await alice.page.press("#composer-input", "Enter")
        offline = alice.page.locator("#messages li.msg.pending")
        await expect(offline).to_have_attribute("data-state", "pending")

        await solo.start()
        await alice.connected()
        # The resumed page sends what was written offline, with its client_id, once.
        await expect(alice.page.locator("#messages li.msg.pending")).to_have_count(0)
        await expect(banner).to_be_hidden()
        await bob_api.post(room["id"], "after the restart")
        expected = [
            "before the restart",
            "bob: still here",
            *during,
            "written while offline",
            "after the restart",
        ]
        await expect(alice.bodies).to_have_text(expected)
        await expect(alice.page.locator("#messages li.msg[data-state=sent]")).to_have_count(
            len(expected)
        )
        seqs = [int(s) for s in await alice.messages.evaluate_all("l => l.map(e => e.dataset.seq)")]
        assert seqs == list(range(1, len(expected) + 1))
        stored = await alice_api.all_messages(room["id"])
        assert [m["body"] for m in stored] == expected
        # The socket came back and rejoined from where it was.
        joins = [f for f in alice.frames.sent if f["type"] == "join"]
        assert joins[-1]["since"] >= 2
        assert len(alice.frames.sockets) >= 2
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_resume_beyond_the_replay_limit(
    servers: tuple[ServerProcess, ServerProcess], start_solo: StartSolo, open_page: OpenPage
) -> None:
    """A resume that missed more than the server replays fills the rest from history."""
    _, other = servers
    solo = await start_solo(REPLAY_LIMIT="5")
    alice_api = await Api.new_user(other.url, "alice")
    try:
        room_name = name("busy-")
        room = await alice_api.create_room(room_name)
        alice = await open_page(solo.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room(room_name)
        await alice.send("first")
        await solo.stop()
        await expect(alice.page.locator("#banner")).to_contain_text(
            re.compile("reconnecting", re.I)
        )
        missed = [f"missed {i}" for i in range(1, 13)]
        for body in missed:
            await alice_api.post(room["id"], body)
        await solo.start()
        await alice.connected()
        await expect(alice.bodies).to_have_text(["first", *missed])
        joins = await alice.frames.wait_for(
            lambda: [f for f in alice.frames.received if f["type"] == "ok" and f.get("truncated")]
        )
        assert joins[0]["seq"] == 13
        seqs = [int(s) for s in await alice.messages.evaluate_all("l => l.map(e => e.dataset.seq)")]
        assert seqs == list(range(1, 14))
    finally:
        await alice_api.close()


@pytest.mark.browser
async def test_rate_limit_close_is_not_retried(server: ServerProcess, open_page: OpenPage) -> None:
    """After close 4008 the page says why and reconnects only when asked to."""
    alice_api = await Api.new_user(server.url, "alice")
    try:
        alice = await open_page(server.url)
        routes: list[WebSocketRoute] = []

        def through(ws: WebSocketRoute) -> None:
            routes.append(ws)
            ws.connect_to_server()

        # The page's socket goes through Playwright, which can close it as the server would.
        await alice.page.route_web_socket(re.compile(r"/ws$"), through)
        await alice.sign_in(alice_api.username)
        await routes[0].close(code=4008, reason="rate limit exceeded too often")
        banner = alice.page.locator("#banner")
        await expect(banner).to_contain_text("too much too quickly")
        await expect(alice.page.locator("#conn-dot")).to_have_attribute("data-state", "fatal")
        assert len(routes) == 1
        await alice.page.locator("#banner-action").click()
        await alice.connected()
        await expect(banner).to_contain_text("Reconnected")
        assert len(routes) == 2
    finally:
        await alice_api.close()
