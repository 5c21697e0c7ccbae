"""The browser client finds and runs rooms (issue 13): the directory, the topic, the member
list with roles, and the owner's and moderators' actions, across two processes."""

from __future__ import annotations

import secrets

import pytest
from playwright.async_api import expect

from ..support import Api, ServerProcess
from .conftest import OpenPage


@pytest.mark.browser
async def test_find_a_room_and_run_it(
    servers: tuple[ServerProcess, ServerProcess], open_page: OpenPage
) -> None:
    """Bob finds a room by its topic in the directory and joins; Alice (owner, on the other
    process) sees him in the member list, sets the topic (Bob's header follows live),
    makes him moderator and back, deletes his message, mutes and bans him."""
    a, b = servers
    tag = secrets.token_hex(4)
    alice = await Api.new_user(a.url, "alice")
    bob = await Api.new_user(b.url, "bob")
    try:
        room = await alice.create_room(f"Garden {tag}")
        await alice.request(
            "PATCH", f"/api/rooms/{room['id']}", 200, json={"topic": f"roses {tag}"}
        )

        bob_page = await open_page(b.url)
        await bob_page.sign_in(bob.username)
        await bob_page.page.fill("#directory-q", f"ROSES {tag}")
        await bob_page.page.click("#directory-form button[type=submit]")
        found = bob_page.page.locator("#directory-list .directory-item")
        await expect(found).to_have_count(1)
        await expect(found.locator(".directory-name")).to_have_text(f"Garden {tag}")
        await expect(found.locator(".directory-count")).to_have_text("1 member")
        await found.locator(".directory-join").click()
        await expect(bob_page.page.locator("#room-title")).to_have_text(f"Garden {tag}")
        await expect(bob_page.page.locator("#room-topic")).to_have_text(f"roses {tag}")
        await expect(bob_page.page.locator("#settings-toggle")).to_be_hidden()
        await bob_page.send("hello garden")

        page = await open_page(a.url)
        await page.sign_in(alice.username)
        await page.open_room(f"Garden {tag}")
        await expect(page.page.locator("#room-topic")).to_have_text(f"roses {tag}")

        # Settings: the new topic reaches Bob's header on the other process.
        await page.page.click("#settings-toggle")
        await page.page.fill("#settings-topic", "tulips now")
        await page.page.fill("#settings-slow", "0")
        await page.page.click("#settings-form button[type=submit]")
        await expect(page.page.locator("#room-topic")).to_have_text("tulips now")
        await expect(bob_page.page.locator("#room-topic")).to_have_text("tulips now")

        # The member list with roles; the owner sets Bob's role.
        await page.page.click("#members-toggle")
        members = page.page.locator("#member-list .member")
        await expect(members).to_have_count(2)
        bob_row = page.page.locator(f'#member-list .member[data-username="{bob.username}"]')
        await expect(bob_row.locator(".role")).to_have_text("Member")
        await expect(
            page.page.locator(f'#member-list .member[data-username="{alice.username}"] .role')
        ).to_have_text("Owner")
        await bob_row.locator(".set-role").click()
        await expect(bob_row.locator(".role")).to_have_text("Moderator")
        roles = await bob.request("GET", "/api/rooms", 200)
        assert [r["role"] for r in roles["rooms"] if r["id"] == room["id"]] == ["moderator"]
        await bob_row.locator(".set-role").click()
        await expect(bob_row.locator(".role")).to_have_text("Member")

        # The owner deletes Bob's message; Bob sees it go.
        theirs = page.page.locator("#messages li.msg", has_text="hello garden")
        await theirs.hover()
        await theirs.locator(".act.delete").click()
        await page.page.locator("#messages li.msg.confirming .act.danger").click()
        await expect(bob_page.page.locator("#messages li.msg.deleted .body")).to_have_text(
            "This message was deleted."
        )

        # Mute: Bob's sends are refused until unmuted.
        await page.page.select_option("#mute-seconds", "600")
        await bob_row.locator(".mute").click()
        await expect(page.page.locator("#toast")).to_contain_text("is muted")
        refused = await bob.raw("POST", f"/api/rooms/{room['id']}/messages", json={"body": "x"})
        assert refused.status_code == 403, refused.text
        await bob_row.locator(".unmute").click()
        await expect(page.page.locator("#toast")).to_contain_text("may write again")
        await bob.post(room["id"], "back again")

        # Ban: Bob's page loses the room at once.
        await bob_row.locator(".ban").click()
        await expect(members).to_have_count(1)
        await expect(bob_page.room_button(f"Garden {tag}")).to_have_count(0)
        refused = await bob.raw("POST", f"/api/rooms/{room['id']}/join")
        assert refused.status_code == 403, refused.text
    finally:
        await alice.close()
        await bob.close()
