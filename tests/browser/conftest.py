"""Headless Chromium for the end-to-end tests of the browser client.

Chromium is Debian's (`/usr/bin/chromium`, or `CHROMIUM=/path`); Playwright
only drives it, so nothing is downloaded. Each test opens pages with
`open_page`, one browser context per person (their own sessionStorage), and
every page's JavaScript errors fail the test that opened it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("playwright", reason="pip install -e '.[browser]' for the browser tests")

from playwright.async_api import Browser, ConsoleMessage, Page, WebSocket, async_playwright, expect

from ..support import PASSWORD

CHROMIUM = (
    os.environ.get("CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
    or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Frames:
    """Every WebSocket frame a page sent and received, in order, to wait on."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.sockets: list[WebSocket] = []
        self._changed = asyncio.Condition()

    def attach(self, ws: WebSocket) -> None:
        self.sockets.append(ws)
        ws.on("framesent", lambda payload: self._add(self.sent, payload))
        ws.on("framereceived", lambda payload: self._add(self.received, payload))

    def _add(self, into: list[dict[str, Any]], payload: str | bytes) -> None:
        try:
            into.append(json.loads(payload))
        except ValueError:
            return
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, found: Callable[[], Any], timeout: float = TIMEOUT_MS / 1000) -> Any:
        """Wait until `found()` returns something truthy; return it."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while not (result := found()):
                    await self._changed.wait()
                return result


class ChatPage:
    """One person's tab, with the few gestures the tests need."""

    def __init__(self, page: Page, frames: Frames) -> None:
        self.page = page
        self.frames = frames
        self.errors: list[str] = []

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error" or (msg.type == "warning" and "chat:" in msg.text):
            self.errors.append(f"console.{msg.type}: {msg.text} @ {msg.location.get('url', '')}")

    # Locators
    @property
    def messages(self):  # type: ignore[no-untyped-def]
        """The stored messages of the open room, in the order shown."""
        return self.page.locator("#messages .message-list > li.msg[data-seq]")

    @property
    def bodies(self):  # type: ignore[no-untyped-def]
        return self.page.locator("#messages .message-list > li.msg .body")

    def room_button(self, name: str):  # type: ignore[no-untyped-def]
        return self.page.locator(".room-item", has=self.page.locator(".room-name", has_text=name))

    # Gestures
    async def sign_in(self, username: str, password: str = PASSWORD) -> None:
        await self.page.fill("#auth-username", username)
        await self.page.fill("#auth-password", password)
        await self.page.click("#sign-in")
        await expect(self.page.locator("#me-name")).to_have_text(username)
        await self.connected()

    async def sign_up(self, username: str, password: str = PASSWORD) -> None:
        await self.page.fill("#auth-username", username)
        await self.page.fill("#auth-password", password)
        await self.page.click("#sign-up")
        await expect(self.page.locator("#me-name")).to_have_text(username)
        await self.connected()

    async def connected(self) -> None:
        await expect(self.page.locator("#conn-dot")).to_have_attribute("data-state", "open")

    async def open_room(self, name: str) -> None:
        await self.room_button(name).click()
        await expect(self.page.locator("#room-title")).to_have_text(re.compile(re.escape(name)))
        await expect(self.page.locator("#messages")).to_have_attribute("data-state", "ready")

    async def create_room(self, name: str, private: bool = False) -> str:
        """Create a room through the sidebar; returns its id."""
        await self.page.fill("#new-room-name", name)
        if private:
            await self.page.check("#new-room-private")
        await self.page.click("#create-room-form button[type=submit]")
        await expect(self.page.locator("#room-title")).to_have_text(name)
        return await self.room_id()

    async def room_id(self) -> str:
        sub = self.page.locator("#room-sub")
        await expect(sub).to_contain_text("id ")
        match = re.search(r"id (\d+)", await sub.inner_text())
        assert match, await sub.inner_text()
        return match.group(1)

    async def send(self, text: str) -> None:
        """Type a message and press Enter; wait until it is stored."""
        await self.page.fill("#composer-input", text)
        await self.page.press("#composer-input", "Enter")
        await expect(
            self.page.locator("#messages li.msg.mine[data-state=sent] .body", has_text=text).last
        ).to_be_visible()

    async def token(self) -> str:
        raw = await self.page.evaluate("sessionStorage.getItem('chat.session')")
        return str(json.loads(raw)["token"])


OpenPage = Callable[..., Awaitable[ChatPage]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Open GET / of a server in a fresh browser context (one per person)."""
    contexts = []
    pages: list[ChatPage] = []

    async def open_(base_url: str, **context_options: Any) -> ChatPage:
        options = {"viewport": {"width": 1280, "height": 800}, **context_options}
        context = await browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = await context.new_page()
        frames = Frames()
        chat = ChatPage(page, frames)
        page.on("websocket", frames.attach)
        page.on("pageerror", lambda exc: chat.errors.append(f"pageerror: {exc}"))
        page.on("console", chat.on_console)
        page.on("dialog", lambda dialog: chat.errors.append(f"dialog: {dialog.message}"))
        await page.goto(base_url + "/")
        await expect(page.locator("#auth-username")).to_be_visible()
        pages.append(chat)
        return chat

    yield open_
    for context in contexts:
        await context.close()
    errors = [e for chat in pages for e in chat.errors if not expected_noise(e)]
    assert not errors, "the page reported errors:\n" + "\n".join(errors)


def expected_noise(error: str) -> bool:
    """Console errors that are the browser's own report of an expected outage."""
    return error.startswith("console.error: ") and (
        "WebSocket connection to" in error
        or ("Failed to load resource" in error and "/api/" in error)
    )
