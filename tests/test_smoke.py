"""The service starts and answers: health, readiness, metrics and a first message."""

from __future__ import annotations

import json

from chat.client.errors import FATAL_CLOSES
from chat.errors import FINAL_CLOSES, close_codes

from .support import Api, ServerProcess, Ws


async def test_health_ready_metrics(anon: Api) -> None:
    """/healthz and /readyz answer 200 and /metrics speaks Prometheus text."""
    assert (await anon.raw("GET", "/healthz")).status_code == 200
    ready = await anon.raw("GET", "/readyz")
    assert ready.status_code == 200, ready.text
    metrics = await anon.raw("GET", "/metrics")
    assert metrics.status_code == 200
    assert "chat_connections" in metrics.text


async def test_message_reaches_other_process(
    servers: tuple[ServerProcess, ServerProcess], alice: Api, bob: Api
) -> None:
    """A message sent on one process reaches a connection joined on the other."""
    _, b = servers
    room = await alice.create_room("smoke")
    await bob.join(room["id"])
    ws_b = await Ws.connect(b.ws_url, bob.token)
    try:
        await ws_b.join(room["id"])
        sent = await alice.post(room["id"], "across processes")
        (got,) = await ws_b.messages(room["id"], 1)
        assert got["id"] == sent["id"] and got["seq"] == 1
    finally:
        await ws_b.close()


async def test_browser_close_codes_come_from_the_server(anon: Api) -> None:
    """The browser client's close codes are generated from chat.errors, not copied."""
    script = await anon.raw("GET", "/static/js/closes.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    lines = dict(
        line.removeprefix("export const ").removesuffix(");").split(" = Object.freeze(")
        for line in script.text.splitlines()
        if line.startswith("export const ")
    )
    assert json.loads(lines["CLOSE"]) == close_codes()
    assert set(json.loads(lines["FINAL_CLOSES"])) == FINAL_CLOSES
    assert FATAL_CLOSES.keys() == FINAL_CLOSES


async def test_browser_client_is_served(anon: Api) -> None:
    """GET / serves the browser client's page and its module script, not a placeholder."""
    page = await anon.raw("GET", "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/app.js">' in page.text
    script = await anon.raw("GET", "/static/js/app.js")
    assert script.status_code == 200
