"""The browser client's search box: results with safe highlights that open the message."""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.async_api import expect

from ..support import Api, ServerProcess
from .conftest import OpenPage


@pytest.mark.browser
async def test_search_box_finds_and_opens_a_message(
    server: ServerProcess, open_page: OpenPage
) -> None:
    """Search shows marked matches as text (markup stays text) and opens an old message."""
    word = "zq" + secrets.token_hex(4)
    me = await open_page(server.url)
    username = "srch" + secrets.token_hex(4)
    await me.sign_up(username)
    far = await me.create_room("far-" + secrets.token_hex(2))
    await me.create_room("near-" + secrets.token_hex(2))
    api = Api(server.url, await me.token())
    try:
        # The match is followed by 60 messages: it is not on the room's first page.
        target = await api.post(
            int(far), f'<img src=x onerror="alert(1)"> {word} 🙂 {word.upper()}'
        )
        for n in range(60):
            await api.post(int(far), f"filler {n}")
    finally:
        await api.close()

    await me.page.fill("#search-input", word)
    await me.page.press("#search-input", "Enter")
    hits = me.page.locator("#search-results .search-hit")
    await expect(hits).to_have_count(1)
    await expect(me.page.locator("#search-status")).to_have_text("1 message found")
    body = hits.first.locator(".search-hit-body")
    await expect(body).to_have_text(f'<img src=x onerror="alert(1)"> {word} 🙂 {word.upper()}')
    await expect(body.locator("mark")).to_have_text([word, word.upper()])
    assert await me.page.locator("#search-results img").count() == 0

    await hits.first.click()
    found = me.page.locator(f'#messages li.msg[data-id="{target["id"]}"]')
    await expect(found).to_be_visible()
    await expect(found).to_have_class(re.compile(r"\bfound\b"))
    await expect(me.page.locator("#room-sub")).to_contain_text(f"id {far}")

    # An operator-only query is explained, not an error.
    await me.page.fill("#search-input", "-")
    await me.page.press("#search-input", "Enter")
    await expect(me.page.locator("#search-status")).to_have_text("Type a word to search for.")
    await me.page.click("#search-clear")
    await expect(me.page.locator("#search-panel")).to_be_hidden()
