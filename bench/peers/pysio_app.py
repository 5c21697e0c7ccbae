"""python-socketio with its Redis manager (AsyncRedisManager), served by uvicorn.

`uvicorn bench.peers.pysio_app:app --ws-per-message-deflate false`, two processes.
Events: `join` (room name, acknowledged with "ok") and `send` ({room, body}), which
emits `message` with the same data to the whole room on every process (the
manager publishes to Redis and each process, this one included, emits what it
receives). WebSocket transport only, no compression, no persistence.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import socketio

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "bench")

manager = socketio.AsyncRedisManager(REDIS_URL, channel=f"{PREFIX}-pysio")
sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=manager,
    transports=["websocket"],
    http_compression=False,
    cors_allowed_origins=[],
)


@sio.on("join")  # type: ignore[misc]
async def join(sid: str, room: str) -> str:
    result = sio.enter_room(sid, room)
    if inspect.isawaitable(result):
        await result
    return "ok"


@sio.on("send")  # type: ignore[misc]
async def send(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("message", data, room=data["room"])


app = socketio.ASGIApp(sio)
