"""The service starts and answers: health, readiness, metrics and a first message."""

from __future__ import annotations

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
