"""The browser client shows as DMs only the rooms the server says are DMs (issue 10, F5)."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from ..support import PASSWORD, Api, ServerProcess
from .conftest import OpenPage


async def look_alike(server: ServerProcess, of: Api) -> Api:
    """A user named like `of` with a capital I for its l (alice -> aIice), logged in."""
    api = Api(server.url)
    username = "aI" + of.username[2:]
    credentials = {"username": username, "password": PASSWORD}
    await api.request("POST", "/api/users", 201, json=credentials)
    session = await api.request("POST", "/api/sessions", 201, json=credentials)
    api.token, api.user = session["token"], session["user"]
    return api


@pytest.mark.browser
async def test_a_room_named_like_a_dm_is_not_shown_as_one(
    server: ServerProcess, open_page: OpenPage
) -> None:
    """A private room named "alice & victim", made by a look-alike, is listed and titled as
    a room (Leave shown); the real DM with alice is the only direct message."""
    alice = await Api.new_user(server.url, "alice")
    victim = await Api.new_user(server.url, "victim")
    mallory = await look_alike(server, alice)
    try:
        fake_name = f"{alice.username} & {victim.username}"
        fake = await mallory.create_room(fake_name, private=True)
        await mallory.add(fake["id"], victim.username)
        await mallory.post(fake["id"], "it's me, reply here")
        real = await alice.request("POST", "/api/dms", 200, json={"username": victim.username})
        await alice.post(real["room"]["id"], "the real me")

        page = await open_page(server.url)
        await page.sign_in(victim.username)
        dms = page.page.locator("#dm-list .room-item")
        await expect(dms).to_have_count(1)
        await expect(dms.locator(".room-name")).to_have_text(alice.username)
        fake_item = page.page.locator("#room-list .room-item", has_text=fake_name)
        await expect(fake_item).to_have_count(1)

        await fake_item.click()
        await expect(page.page.locator("#room-title")).to_have_text(fake_name)
        await expect(page.page.locator("#room-sub")).not_to_have_text("Direct message")
        await expect(page.page.locator("#leave-room")).to_be_visible()
        await expect(page.bodies).to_have_text(["it's me, reply here"])

        await dms.click()
        await expect(page.page.locator("#room-title")).to_have_text(f"@{alice.username}")
        await expect(page.page.locator("#room-sub")).to_have_text("Direct message")
        await expect(page.bodies).to_have_text(["the real me"])
    finally:
        for api in (alice, victim, mallory):
            await api.close()
