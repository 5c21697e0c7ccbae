"""Abuse at the edges: slow handshakes, handshake floods, compression bombs, silent peers,
expired sessions and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
from collections.abc import AsyncIterator

import asyncpg
import pytest
import websockets

from .support import Api, ServerProcess, Ws, rss_kib


@pytest.fixture
async def strict_server(server_env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """A process with short deadlines, a low handshake rate and compression on."""
    env = {
        **server_env,
        # Production: the handshake rate applies to loopback, where the tests connect from.
        "CHAT_ENV": "production",
        "HANDSHAKE_TIMEOUT": "1",
        "HANDSHAKE_RATE": "2",
        "HEARTBEAT": "1",
        "WS_COMPRESSION": "true",
    }
    proc = await ServerProcess(env, "strict").start()
    yield proc
    await proc.stop()


async def raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return reader, writer


def masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def test_trickled_handshake_is_cut_off(strict_server: ServerProcess) -> None:
    """Headers sent one byte at a time are cut off at the handshake deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_server.port)
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    closed = asyncio.create_task(reader.read())
    for byte in request:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.2)  # pacing the trickle, not synchronisation
    assert await asyncio.wait_for(closed, 5) == b""
    assert closed.done()
    writer.close()


async def test_handshake_flood_gets_429(strict_server: ServerProcess) -> None:
    """Beyond the per-address handshake rate, handshakes are refused with 429."""
    statuses = []
    for _ in range(8):
        try:
            ws = await websockets.connect(strict_server.ws_url)
        except websockets.InvalidStatus as exc:
            statuses.append(exc.response.status_code)
            body = json.loads(exc.response.body or b"{}")
            assert body["error"]["code"] == "rate_limited"
        else:
            statuses.append(101)
            await ws.close()
    assert 429 in statuses and statuses[0] == 101


async def test_compression_bomb_closes_1009(
    strict_server: ServerProcess, server_env: dict[str, str]
) -> None:
    """A 50 MB frame compressed to a few KB closes with 1009 and the process stays small."""
    api = await Api.new_user(strict_server.url, "bomb")
    assert strict_server.proc is not None
    before = rss_kib(strict_server.proc.pid)
    ws = await Ws.connect(strict_server.ws_url, api.token, compression="deflate", max_size=None)
    assert ws.ws.protocol.extensions, "permessage-deflate was not negotiated"
    try:
        await ws.send('{"type": "ping", "ref": "' + "0" * (50 * 1024 * 1024) + '"}')
    except websockets.ConnectionClosed:
        pass
    assert await ws.close_code() == 1009
    after = rss_kib(strict_server.proc.pid)
    assert after - before < 32 * 1024, (before, after)
    # The process keeps serving.
    assert (await api.raw("GET", "/healthz")).status_code == 200
    await ws.close()
    await api.close()


async def test_silent_peer_is_dropped_1011(strict_server: ServerProcess) -> None:
    """A client that never answers pings is closed with 1011 after the heartbeat."""
    api = await Api.new_user(strict_server.url, "silent")
    reader, writer = await raw_handshake(strict_server.port)
    writer.write(masked_text(json.dumps({"type": "hello", "token": api.token})))
    await writer.drain()
    pings = 0
    while True:
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        if opcode == 0x9:
            pings += 1  # never answered
        elif opcode == 0x8:
            assert struct.unpack("!H", payload[:2])[0] == 1011
            break
    assert pings >= 1
    writer.close()
    await api.close()


async def test_idle_user_session_expires_bot_token_does_not(
    server: ServerProcess, database_url: str
) -> None:
    """A user token idle past SESSION_IDLE_DAYS is refused; a bot's token is not."""
    owner = await Api.new_user(server.url, "idle")
    bot = await owner.request(
        "POST", "/api/bots", 201, json={"username": f"b{secrets.token_hex(4)}"}
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE sessions SET last_used_at = now() - interval '400 days' "
            "WHERE user_id = ANY($1)",
            [owner.user["id"], bot["user"]["id"]],
        )
    finally:
        await conn.close()
    assert (await owner.raw("GET", "/api/rooms")).status_code == 401
    bot_api = Api(server.url, bot["token"], bot["user"])
    assert (await bot_api.raw("GET", "/api/rooms")).status_code == 200
    await bot_api.close()
    await owner.close()


async def test_openapi_document_lists_every_route(anon: Api) -> None:
    """/openapi.json is OpenAPI 3.1 and describes each HTTP row of the contract."""
    doc = await anon.request("GET", "/openapi.json", 200)
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path, method in [
        ("/api/users", "post"),
        ("/api/sessions", "post"),
        ("/api/sessions/current", "delete"),
        ("/api/bots", "post"),
        ("/api/rooms", "post"),
        ("/api/rooms", "get"),
        ("/api/rooms/{room_id}/join", "post"),
        ("/api/rooms/{room_id}/members", "post"),
        ("/api/rooms/{room_id}/members/{username}", "delete"),
        ("/api/dms", "post"),
        ("/api/rooms/{room_id}/messages", "get"),
        ("/api/rooms/{room_id}/messages", "post"),
        ("/api/rooms/{room_id}/presence", "get"),
    ]:
        assert method in paths[path], (path, method)
    body = doc["paths"]["/api/users"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/SignUp")
