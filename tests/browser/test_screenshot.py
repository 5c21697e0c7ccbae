"""A picture of the client in use, for the docs: docs/img/client.png."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from playwright.async_api import expect

from ..support import PASSWORD, Api, ApiError, ServerProcess, Ws
from .conftest import OpenPage

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "client.png"


async def person(base_url: str, wanted: str) -> Api:
    """A user named `wanted`, or `wanted` with a suffix when the name is taken."""
    for username in (wanted, f"{wanted}_{secrets.token_hex(2)}"):
        api = Api(base_url)
        try:
            await api.request(
                "POST", "/api/users", 201, json={"username": username, "password": PASSWORD}
            )
        except ApiError as exc:
            await api.close()
            if exc.status == 409:
                continue
            raise
        body = await api.request(
            "POST", "/api/sessions", 201, json={"username": username, "password": PASSWORD}
        )
        api.token, api.user = body["token"], body["user"]
        return api
    raise AssertionError(f"no free username like {wanted}")


@pytest.mark.browser
async def test_screenshot_of_a_conversation(
    server: ServerProcess, open_page: OpenPage, tmp_path: Path
) -> None:
    """A realistic conversation renders; CHAT_SCREENSHOT=docs saves it as docs/img/client.png."""
    alice, bob, carol = [await person(server.url, n) for n in ("alice", "bob", "carol")]
    sockets: list[Ws] = []
    try:
        review = await alice.create_room("design-review")
        general = await bob.create_room("general")
        release = await carol.create_room("release-2.4")
        await alice.create_room("random")
        for api in (bob, carol):
            await api.join(review["id"])
        for api in (alice, carol):
            await api.join(general["id"])
        await alice.join(release["id"])
        dm = await alice.request("POST", "/api/dms", 200, json={"username": bob.username})
        await bob.post(dm["room"]["id"], "Lunch after the review?")

        chat = [
            (bob, "Morning! The new onboarding flow is on staging."),
            (carol, "Nice, I'll go through it after stand-up."),
            (
                alice,
                "Looks great on desktop. On my phone the Continue button hides "
                "behind the keyboard, though.",
            ),
            (bob, "Good catch. I'll pin it above the keyboard and add safe-area padding."),
            (
                carol,
                'While you\'re in there: a taken username shows "409 conflict". '
                'Could it say "That username is taken" instead?',
            ),
            (bob, "Yes, both in the next build."),
            (bob, "Should be on staging in about 30 minutes."),
        ]
        for api, body in chat:
            await api.post(review["id"], body)
        for body in (
            "Release notes draft is up",
            "Who's on call this weekend?",
            "Standup moved to 10:15",
            "Coffee machine is fixed",
        ):
            await bob.post(general["id"], body)
        await carol.post(release["id"], "Branch cut tomorrow at noon")

        # Bob and Carol are online in the room.
        for api in (bob, carol):
            ws = await Ws.connect(server.ws_url, api.token)
            sockets.append(ws)
            await ws.join(review["id"])

        page = await open_page(server.url, viewport={"width": 1280, "height": 760})
        await page.sign_in(alice.username)
        await page.open_room("design-review")
        await page.send("Thanks! I'll test again on iOS and Android once it's up.")
        await expect(page.page.locator("#online")).to_contain_text("3 online")
        await sockets[1].send({"type": "typing", "room": review["id"]})
        await expect(page.page.locator("#typing")).to_have_text(f"{carol.username} is typing…")
        await page.page.locator("#composer-input").fill("Shall we ship it on Thursday?")
        await page.page.locator("#composer-input").blur()
        await expect(page.messages).to_have_count(len(chat) + 1)

        # Reading the room sent its read position: no unread badge on it.
        await page.frames.wait_for(
            lambda: [
                f for f in page.frames.sent if f["type"] == "read" and f["seq"] == len(chat) + 1
            ]
        )
        await expect(page.room_button("design-review").locator(".badge")).to_be_hidden()
        target = DOCS_IMAGE if os.environ.get("CHAT_SCREENSHOT") == "docs" else tmp_path / "c.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        await page.page.screenshot(path=str(target), animations="disabled", caret="hide")
        assert target.stat().st_size > 10_000
    finally:
        for ws in sockets:
            await ws.close()
        for api in (alice, bob, carol):
            await api.close()
