"""Delivery across processes: order under concurrent senders, resuming elsewhere, slow readers.

The contract: a joined connection gets the room's messages in increasing seq,
each once; one that resumes with `since` on any process misses nothing and gets
no repeat; a client too slow for its send queue is closed with 1013 without
slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .support import Api, Follower, ServerProcess, Ws, assert_log

Pair = tuple[ServerProcess, ServerProcess]


async def members(owner: Api, count: int, prefix: str) -> list[Api]:
    """`count` new users, each a member of nothing yet."""
    return [await Api.new_user(owner.base_url, prefix) for _ in range(count)]


async def test_concurrent_senders_ordered_exactly_once(servers: Pair, alice: Api) -> None:
    """Senders on both processes at once: every receiver sees seq 1..N once each, in order."""
    a, b = servers
    room = (await alice.create_room("busy"))["id"]
    users = await members(alice, 4, "s")
    per_sender = 30
    sockets: list[Ws] = []
    try:
        for i, user in enumerate(users):
            await user.join(room)
            ws = await Ws.connect((a if i % 2 == 0 else b).ws_url, user.token)
            await ws.join(room)
            sockets.append(ws)
        watchers = [await Ws.connect(p.ws_url, alice.token) for p in (a, b)]
        for ws in watchers:
            await ws.join(room)
        sockets += watchers

        async def send_all(ws: Ws, who: int) -> list[dict[str, Any]]:
            for n in range(per_sender):  # pipelined: all in flight at once
                frame = {"type": "send", "ref": f"{who}-{n}", "room": room, "body": f"{who}/{n}"}
                await ws.send(frame)
            oks = []
            while len(oks) < per_sender:
                frame = await ws.recv(20)
                if frame["type"] in ("ok", "error") and "ref" in frame:
                    assert frame["type"] == "ok", frame
                    oks.append(frame["message"])
            return oks

        total = per_sender * len(users)
        # Each sender is also a receiver: its frames interleave its oks and the messages.
        receivers = [asyncio.create_task(ws.messages(room, total, timeout=30)) for ws in watchers]
        acked = await asyncio.gather(*(send_all(ws, i) for i, ws in enumerate(sockets[:4])))
        history = await alice.all_messages(room)
        assert len(history) == total
        assert [m["seq"] for m in history] == list(range(1, total + 1))
        for oks in acked:
            # Each sender's own messages are stored in the order it sent them.
            assert [m["body"] for m in oks] == sorted(
                (m["body"] for m in oks), key=lambda body: int(body.split("/")[1])
            )
        assert {m["id"] for oks in acked for m in oks} == {m["id"] for m in history}
        for task in receivers:
            assert_log(await task, history)
    finally:
        for ws in sockets:
            await ws.close()
        for user in users:
            await user.close()


async def test_senders_receive_their_room_in_order(servers: Pair, alice: Api) -> None:
    """A sender's own connection is a receiver too: its message frames are 1..N in order."""
    a, b = servers
    room = (await alice.create_room("echo"))["id"]
    bob = (await members(alice, 1, "bob"))[0]
    try:
        await bob.join(room)
        ws_a = await Ws.connect(a.ws_url, alice.token)
        ws_b = await Ws.connect(b.ws_url, bob.token)
        try:
            await ws_a.join(room)
            await ws_b.join(room)
            for n in range(20):
                await ws_a.send({"type": "send", "ref": n, "room": room, "body": f"a{n}"})
                await ws_b.send({"type": "send", "ref": n, "room": room, "body": f"b{n}"})
            history_wait = [ws.messages(room, 40, timeout=20) for ws in (ws_a, ws_b)]
            logs = await asyncio.gather(*history_wait)
            history = await alice.all_messages(room)
            for log in logs:
                assert_log(log, history)
        finally:
            await ws_a.close()
            await ws_b.close()
    finally:
        await bob.close()


async def test_resume_on_other_process_misses_nothing(servers: Pair, alice: Api) -> None:
    """A client dropped on one process resumes with `since` on the other: no gap, no repeat."""
    a, b = servers
    room = (await alice.create_room("resume"))["id"]
    total = 150
    follower = Follower([a.ws_url, b.ws_url], alice.token, room)
    poster_b = alice.on(b.url)
    try:
        await follower.joined()

        async def post_all() -> None:
            for n in range(1, total + 1):
                await (alice if n % 2 else poster_b).post(room, f"n{n}")
                await asyncio.sleep(0.005)  # pacing: keep traffic flowing across the drops

        poster = asyncio.create_task(post_all())
        await follower.wait_for(40)
        follower.drop()  # from a: it comes back on b
        await follower.joined()
        await follower.wait_for(90)
        follower.drop()  # from b: back on a
        await follower.joined()
        await poster
        await follower.wait_for(total)
        assert len(follower.closes) == 2
        assert_log(follower.log, await alice.all_messages(room))
    finally:
        await follower.close()
        await poster_b.close()


async def test_resume_after_a_long_absence(servers: Pair, alice: Api) -> None:
    """Messages sent while a client was away come back on resume, then the live ones, in order."""
    a, b = servers
    room = (await alice.create_room("away"))["id"]
    first = await Ws.connect(a.ws_url, alice.token)
    await first.join(room)
    for n in range(5):
        await alice.post(room, f"before{n}")
    seen = await first.messages(room, 5)
    await first.close()
    for n in range(30):
        await alice.post(room, f"away{n}")
    again = await Ws.connect(b.ws_url, alice.token)
    try:
        ok = await again.join(room, since=seen[-1]["seq"])
        assert ok["seq"] == 35 and ok["truncated"] is False
        await alice.post(room, "live")
        rest = await again.messages(room, 31)
        assert_log(seen + rest, await alice.all_messages(room))
    finally:
        await again.close()


# -- a slow consumer ------------------------------------------------------------


@pytest.fixture
async def small_queues(server_env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """A process with the smallest send queues, so a slow reader overflows quickly."""
    proc = ServerProcess(
        {
            **server_env,
            "OUTBOUND_QUEUE_FRAMES": "16",
            "OUTBOUND_QUEUE_BYTES": "65536",
            # Pings go unanswered by a client that does not read: keep 1011 out of the way.
            "HEARTBEAT": "120",
        },
        "small",
    )
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


class RawClient:
    """A WebSocket client on a bare socket, which reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        sock = socket.socket()
        # A small receive window, so that the server's buffers fill soon.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        client = cls(sock)
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        payload = json.dumps(frame).encode()
        mask = os.urandom(4)
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)])
        else:
            header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload))
        body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + body)

    async def _fill(self, size: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < size:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
            if not chunk:
                raise EOFError("the server closed the socket")
            self.buffer += chunk

    async def frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        await self._fill(2, timeout)
        length = self.buffer[1] & 0x7F
        start = 2
        if length == 126:
            await self._fill(4, timeout)
            (length,) = struct.unpack("!H", self.buffer[2:4])
            start = 4
        elif length == 127:
            await self._fill(10, timeout)
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            start = 10
        await self._fill(start + length, timeout)
        opcode = self.buffer[0] & 0x0F
        payload = self.buffer[start : start + length]
        self.buffer = self.buffer[start + length :]
        return opcode, payload

    def close(self) -> None:
        self.sock.close()


def closes(metrics_text: str, code: int) -> float:
    """How many connections the process closed with `code`, from /metrics."""
    match = re.search(rf'^chat_closes_total\{{code="{code}"\}} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.timeout(90)
async def test_slow_consumer_closed_1013_others_unharmed(small_queues: ServerProcess) -> None:
    """A client that stops reading is closed with 1013; a reading client gets every message.

    How fast the reading client stays is measured by bench S3 (docs/benchmarks.md),
    not asserted here: a test cannot time a shared machine.
    """
    proc = small_queues
    owner = await Api.new_user(proc.url, "owner")
    laggard = await Api.new_user(proc.url, "slow")
    fast = await Ws.connect(proc.ws_url, owner.token)
    slow = await RawClient.connect(proc.port)
    try:
        room = (await owner.create_room("firehose"))["id"]
        await owner.add(room, laggard.username)
        await fast.join(room)
        await slow.send({"type": "hello", "token": laggard.token})
        await slow.send({"type": "join", "ref": 1, "room": room})
        diff = await fast.expect("presence_diff")
        assert diff["joins"] == [laggard.user]

        # client_id -> when its post started (the frame may come before the 201).
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        seqs: list[int] = []
        slow_gone = asyncio.Event()
        received = asyncio.Event()

        async def watch() -> None:
            while True:
                frame = await fast.recv(60)
                if frame["type"] == "message":
                    latencies.append(time.monotonic() - sent_at[frame["message"]["client_id"]])
                    seqs.append(frame["message"]["seq"])
                    received.set()
                elif frame["type"] == "presence_diff" and frame["leaves"] == [laggard.user]:
                    slow_gone.set()

        # 4,000 four-byte characters: 16 KB a frame, so the kernel's buffers fill soon.
        body = "\U0001f600" * 3990
        stop = asyncio.Event()

        async def post() -> None:
            while not stop.is_set() and len(sent_at) < 2000:
                client_id = f"c{len(sent_at)}-{time.monotonic()}"
                sent_at[client_id] = time.monotonic()
                await owner.post(room, body, client_id)

        watcher = asyncio.create_task(watch())
        try:
            posters = [asyncio.create_task(post()) for _ in range(4)]
            # The server dropped the slow reader once its presence leaves the room.
            gone = asyncio.create_task(slow_gone.wait())
            await asyncio.wait([gone, *posters], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await asyncio.gather(*posters)
            assert slow_gone.is_set(), f"not dropped after {len(sent_at)} messages"
            metrics = (await owner.raw("GET", "/metrics")).text
            assert closes(metrics, 1013) >= 1
            for n in range(10):  # and the fast one still gets what comes after
                sent_at[f"after-{n}"] = time.monotonic()
                await owner.post(room, "after", f"after-{n}")
            while len(latencies) < len(sent_at):
                received.clear()  # no await since the check: no set is missed
                await asyncio.wait_for(received.wait(), 15)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert len(latencies) == len(sent_at)
        # The fast reader got every message, once and in order, and was never closed.
        assert seqs == list(range(1, len(sent_at) + 1))
        assert not fast.closed.is_set()

        # Now the slow one reads: what the server had sent, then the close code 1013.
        seen: list[int] = []
        while True:
            opcode, payload = await slow.frame(timeout=15)
            if opcode == 0x8:
                assert struct.unpack("!H", payload[:2])[0] == 1013
                break
            if opcode == 0x1:
                frame = json.loads(payload)
                if frame["type"] == "message":
                    seen.append(frame["message"]["seq"])
        assert seen == list(range(1, len(seen) + 1)), "what it got before the close is in order"
        assert len(seen) < len(sent_at)
    finally:
        slow.close()
        await fast.close()
        await owner.close()
        await laggard.close()


async def test_resume_after_1013_gets_the_rest(small_queues: ServerProcess) -> None:
    """After a 1013 a client resumes with `since` and gets everything it had not read."""
    proc = small_queues
    owner = await Api.new_user(proc.url, "owner")
    room = (await owner.create_room("catch-up"))["id"]
    for n in range(40):
        await owner.post(room, f"{n} " + "y" * 3000)
    ws = await Ws.connect(proc.ws_url, owner.token)
    try:
        # A replay waits for room in the queue instead of overflowing: no 1013 for it.
        await ws.join(room, since=0)
        got = await ws.messages(room, 40, timeout=20)
        assert [m["seq"] for m in got] == list(range(1, 41))
    finally:
        await ws.close()
        await owner.close()
