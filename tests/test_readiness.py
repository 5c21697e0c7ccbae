"""Readiness tests the pub/sub path, not the socket: /readyz publishes a canary that must come
back on the process's own subscription, so a Redis that answers PING but does not deliver
publications makes the process unready."""

from __future__ import annotations

import shutil

import pytest
import redis.asyncio as aioredis

from .support import Api, RedisServer, ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.mark.faults
@pytest.mark.timeout(60)
async def test_readyz_fails_while_publications_do_not_deliver(server_env: dict[str, str]) -> None:
    """With Redis's writes paused (PING still answers, PUBLISH waits), /readyz says the
    broker is down and the canary metrics show it; once writes resume, ready again."""
    redis_server = RedisServer()
    await redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    server: ServerProcess | None = None
    api: Api | None = None
    try:
        server = await ServerProcess({**server_env, "REDIS_URL": redis_server.url}, "ready").start()
        api = Api(server.url)
        assert await api.request("GET", "/readyz", 200) == {"status": "ready"}
        # PUBLISH counts as a write for CLIENT PAUSE WRITE; PING does not.
        await client.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
        assert await client.ping()
        refused = await api.request("GET", "/readyz", 503)
        assert "broker" in refused["error"]["message"], refused
        metrics = (await api.raw("GET", "/metrics")).text
        assert "chat_broker_canary_ok 0.0" in metrics
        await client.execute_command("CLIENT", "UNPAUSE")
        assert await api.request("GET", "/readyz", 200) == {"status": "ready"}
    finally:
        if api is not None:
            await api.close()
        if server is not None:
            await server.stop()
        await client.aclose()
        await redis_server.kill()
