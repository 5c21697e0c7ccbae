"""The browser client's conversations in headless Chromium, two people on two processes:
rooms appearing live, mentions, reactions and the thread pane."""

from __future__ import annotations

import secrets

import pytest
from playwright.async_api import expect

from ..support import Api, ServerProcess
from .conftest import OpenPage


def name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.mark.browser
async def test_dm_and_added_rooms_appear_live_with_unread(
    servers: tuple[ServerProcess, ServerProcess], open_page: OpenPage
) -> None:
    """When alice opens a DM with bob and writes, or adds him to a room, bob's sidebar
    shows it at once with its unread count, without a reload or reconnect."""
    a, b = servers
    alice_api = await Api.new_user(a.url, "alice")
    bob_api = await Api.new_user(b.url, "bob")
    try:
        bob = await open_page(b.url)
        await bob.sign_in(bob_api.username)
        alice = await open_page(a.url)
        await alice.sign_in(alice_api.username)
        await alice.page.fill("#dm-username", bob_api.username)
        await alice.page.press("#dm-username", "Enter")
        await expect(alice.page.locator("#room-title")).to_have_text(f"@{bob_api.username}")
        await alice.send("Are you there?")
        item = bob.page.locator("#dm-list .room-item", has_text=alice_api.username)
        await expect(item.locator(".badge")).to_have_text("1 unread")
        await alice.send("Hello?")
        await expect(item.locator(".badge")).to_have_text("2 unread")
        await item.click()
        await expect(bob.bodies).to_have_text(["Are you there?", "Hello?"])
        # A private room alice adds him to appears too.
        room = await alice_api.create_room(name("plans-"), private=True)
        await alice_api.add(room["id"], bob_api.username)
        await expect(bob.room_button(room["name"])).to_be_visible()
        await alice_api.post(room["id"], "in the new room")
        await expect(bob.room_button(room["name"]).locator(".badge")).to_have_text("1 unread")
        assert await bob.page.evaluate("performance.getEntriesByType('navigation').length") == 1
    finally:
        await alice_api.close()
        await bob_api.close()


@pytest.mark.browser
async def test_empty_room_placeholder_goes_when_messages_arrive(
    servers: tuple[ServerProcess, ServerProcess], open_page: OpenPage
) -> None:
    """A room created empty says "No messages yet" until the first message arrives live."""
    a, b = servers
    alice = await open_page(a.url)
    await alice.sign_up(name("alice"))
    room_id = await alice.create_room(name("empty-"))
    start = alice.page.locator("#history-start")
    await expect(start).to_have_text("No messages yet: say hello.")
    bob_api = await Api.new_user(b.url, "bob")
    try:
        await bob_api.join(int(room_id))
        await bob_api.post(int(room_id), "first!")
        await expect(alice.bodies).to_have_text(["first!"])
        await expect(start).to_have_text("This is the start of the conversation.")
    finally:
        await bob_api.close()


@pytest.mark.browser
async def test_mentions_reactions_and_threads(
    servers: tuple[ServerProcess, ServerProcess], open_page: OpenPage
) -> None:
    """A mention of bob badges his room and is highlighted; reactions are added and taken
    back under a message on both pages; a thread pane shows replies live."""
    a, b = servers
    alice_api = await Api.new_user(a.url, "alice")
    bob_api = await Api.new_user(b.url, "bob")
    try:
        room = await alice_api.create_room(name("team-"))
        other = await alice_api.create_room(name("aaa-other-"))
        await bob_api.join(room["id"])
        await bob_api.join(other["id"])
        bob = await open_page(b.url)
        await bob.sign_in(bob_api.username)
        await bob.open_room(other["name"])
        await alice_api.post(room["id"], f"ping @{bob_api.username}, see this")
        badge = bob.room_button(room["name"]).locator(".mention-badge")
        await expect(badge).to_have_text("@1 mentions")
        await bob.open_room(room["name"])
        mark = bob.page.locator("#messages li.msg.mentions-me mark.mention")
        await expect(mark).to_have_text(f"@{bob_api.username}")
        await expect(badge).to_be_hidden()

        alice = await open_page(a.url)
        await alice.sign_in(alice_api.username)
        await alice.open_room(room["name"])
        msg = bob.page.locator("#messages li.msg").first
        await msg.hover()
        await msg.locator("button.act.react").click()
        chip = alice.page.locator("#messages li.msg").first.locator("button.reaction")
        await expect(chip).to_have_text("👍 1")
        await expect(chip).to_have_attribute("aria-pressed", "false")
        mine = msg.locator("button.reaction")
        await expect(mine).to_have_attribute("aria-pressed", "true")
        await mine.click()  # take it back
        await expect(chip).to_have_count(0)
        await expect(mine).to_have_count(0)

        # Threads: alice opens the root's thread and replies; bob's open pane gets it.
        await msg.hover()
        await msg.locator("button.act.thread").click()
        await expect(bob.page.locator("#thread-pane")).to_be_visible()
        first = alice.page.locator("#messages li.msg").first
        await first.hover()
        await first.locator("button.act.thread").click()
        await expect(alice.page.locator("#thread-pane")).to_be_visible()
        await alice.page.fill("#thread-input", "a reply in the thread")
        await alice.page.press("#thread-input", "Enter")
        replies = bob.page.locator("#thread-list li.thread-msg:not(.thread-root) .body")
        await expect(replies).to_have_text(["a reply in the thread"])
        await expect(
            bob.page.locator("#messages li.msg").first.locator("button.act.thread")
        ).to_have_text("1 reply")
        await expect(
            alice.page.locator("#thread-list li.thread-msg:not(.thread-root)")
        ).to_have_count(1)
    finally:
        await alice_api.close()
        await bob_api.close()
