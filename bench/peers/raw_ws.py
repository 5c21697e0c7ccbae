"""The ceiling of this stack: the bare `websockets` library and redis-py pub/sub, no framework.

Frames: `{"type": "join", "room"}` -> `{"type": "joined", "room"}`;
`{"type": "send", "room", "body"}` -> `{"type": "message", "room", "body"}` to every
connection joined to the room on any process (the sender's own included). The frame
is encoded once, written to the local members with `websockets.broadcast` (no await
per client) and published to Redis with this process's origin; the other processes
broadcast what they receive. No persistence, no auth, no compression; uvloop like
uvicorn uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal

import msgspec
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve


class Incoming(msgspec.Struct):
    type: str
    room: str
    body: str = ""


class Message(msgspec.Struct, tag="message", tag_field="type"):
    room: str
    body: str


decode = msgspec.json.Decoder(Incoming).decode
encode = msgspec.json.Encoder().encode


async def main(port: int) -> None:
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = os.environ.get("BENCH_PREFIX", "bench") + "-raw:"
    origin = secrets.token_hex(4).encode() + b"|"
    rooms: dict[str, set[ServerConnection]] = {}
    redis = aioredis.Redis.from_url(url)
    sub = aioredis.Redis.from_url(url)
    pubsub = sub.pubsub()
    await pubsub.psubscribe(prefix + "*")

    async def listen() -> None:
        skip = len(prefix)
        async for msg in pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            data: bytes = msg["data"]
            if data.startswith(origin):
                continue
            room = msg["channel"][skip:].decode()
            conns = rooms.get(room)
            if conns:
                broadcast(conns, data[len(origin) :].decode())

    async def handler(ws: ServerConnection) -> None:
        joined: list[str] = []
        try:
            async for text in ws:
                frame = decode(text)
                if frame.type == "send":
                    out = encode(Message(frame.room, frame.body))
                    conns = rooms.get(frame.room)
                    if conns:
                        broadcast(conns, out.decode())
                    await redis.publish(prefix + frame.room, origin + out)
                elif frame.type == "join":
                    rooms.setdefault(frame.room, set()).add(ws)
                    joined.append(frame.room)
                    await ws.send(f'{{"type":"joined","room":"{frame.room}"}}')
        finally:
            for room in joined:
                conns = rooms.get(room)
                if conns is not None:
                    conns.discard(ws)
                    if not conns:
                        del rooms[room]

    listener = asyncio.ensure_future(listen())
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536, max_queue=64):
        await stop
    listener.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.port))
