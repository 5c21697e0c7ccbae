"""A load-generator worker process: its share of the connections, senders and counters.

Started by `bench.run` as `python -m bench.worker`; it reads its configuration
and then commands as JSON lines on stdin and answers with JSON lines on stdout.
The WebSocket client is picows (Cython, callback based) on uvloop, so the
per-frame cost of the generator stays a few microseconds and the server under
test, not the generator, is what saturates first. (`--client websockets` in
bench.run swaps in the `websockets` library for comparison.)

Three wire protocols ("targets"):
- chat: our server (`hello`, `join`, `send` frames; `message` frames with a seq);
- socketio: Engine.IO v4 / Socket.IO v5 over a WebSocket, for python-socketio
  and Node's socket.io (events `join` with an ack, `send`, `message`);
- raw: the bare `websockets` + Redis peer (`join`, `joined`, `send`, `message`).

Per delivery: the latency (now - intended send time from the body) goes into a
per-step array (turned into an HdrHistogram when the step is collected), the
arrival into a 100 ms bucket, and the order check: per connection the room
seq must go up by one (chat), per (connection, sender) the sender's counter
must go up by one (all targets). A skipped number is remembered as missing; a
missing one that turns up later is out of order; one seen before is a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import time
from array import array
from collections import defaultdict
from typing import Any

import msgspec

from .common import make_body, new_hist, record_many

mono = time.monotonic_ns
MAX_STEPS = 1000
BUCKET_NS = 100_000_000  # arrivals are counted per 100 ms


class ChatMessage(msgspec.Struct):
    seq: int
    body: str | None = None


class ChatMessageFrame(msgspec.Struct):
    message: ChatMessage


class ChatFrame(msgspec.Struct):
    type: str
    ref: Any = None
    seq: int | None = None
    code: str | None = None
    message: Any = None


class PeerMessage(msgspec.Struct):
    body: str


DEC_CHAT_MSG = msgspec.json.Decoder(ChatMessageFrame)
DEC_CHAT = msgspec.json.Decoder(ChatFrame)
DEC_PEER = msgspec.json.Decoder(PeerMessage)


def out(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Stats:
    """One worker's counters; the hot path touches only plain attributes and arrays."""

    def __init__(self) -> None:
        self.lat: list[array | None] = [None] * MAX_STEPS
        self.ack: list[array | None] = [None] * MAX_STEPS
        self.arrivals = array("q")
        self.epoch = mono()
        self.recv = 0
        self.sent = 0
        self.acks = 0
        self.errors: dict[str, int] = defaultdict(int)
        # (room, step) -> deliveries / sends / acks / refusals
        self.recv_rs: dict[int, int] = defaultdict(int)
        self.sent_rs: dict[int, int] = defaultdict(int)
        self.ack_rs: dict[int, int] = defaultdict(int)
        self.err_rs: dict[int, int] = defaultdict(int)
        # step -> frames of the conversations benchmarks (`reactions`, `notify`) received
        self.extra: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def lat_of(self, step: int) -> array:
        a = self.lat[step]
        if a is None:
            a = self.lat[step] = array("q")
        return a

    def ack_of(self, step: int) -> array:
        a = self.ack[step]
        if a is None:
            a = self.ack[step] = array("q")
        return a

    def arrive(self, now: int) -> None:
        i = (now - self.epoch) // BUCKET_NS
        arr = self.arrivals
        if i >= len(arr):
            if i < 0:
                return
            arr.extend([0] * (i + 1 - len(arr)))
        arr[i] += 1


class Conn:
    """State common to every client, whatever the library and protocol."""

    def __init__(self, w: Worker, idx: int, spec: list[Any]) -> None:
        self.w = w
        self.stats = w.stats
        self.idx = idx
        self.gid = w.gid_base + idx  # global sender id, in bodies
        self.url, self.token, self.room, self.sender, self.slow = spec
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.state = 0
        self.join_seq = 0
        self.last = 0
        self.missing: set[int] | None = None
        self.recv = 0
        self.repeats = 0
        self.ooo = 0
        self.counter = 0
        self.by_sender: dict[int, int] = {}
        self.pmissing: set[tuple[int, int]] | None = None
        self.closed = False
        self.close_code: int | None = None
        self.pending: dict[int, tuple[int, int]] = {}
        self.next_ref = 1
        self.room_s = f"r{self.room}"

    # -- what each library implements --------------------------------------

    def write(self, text: str) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- protocol ---------------------------------------------------------------

    def start(self) -> None:
        """The socket is open: say hello / connect / join."""
        target = self.w.target
        if target == "chat":
            self.write(json.dumps({"type": "hello", "token": self.token}))
        elif target == "raw":
            self.write(json.dumps({"type": "join", "room": self.room_s}))
        # socketio waits for the Engine.IO open packet

    def _ready(self, exc: BaseException | None = None) -> None:
        if not self.ready.done():
            if exc is None:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(exc)

    def on_text(self, data: bytes) -> None:
        target = self.w.target
        if target == "chat":
            if data.startswith(b'{"type":"message"'):
                m = DEC_CHAT_MSG.decode(data).message
                self.delivered(m.body, m.seq)
                return
            self.on_chat_frame(data)
        elif target == "socketio":
            if data.startswith(b'42["message",'):
                self.delivered(DEC_PEER.decode(data[13:-1]).body, 0)
                return
            self.on_sio_frame(data)
        else:
            if data.startswith(b'{"type":"message"'):
                self.delivered(DEC_PEER.decode(data).body, 0)
                return
            if data.startswith(b'{"type":"joined"'):
                self.state = 2
                self._ready()

    def on_chat_frame(self, data: bytes) -> None:
        f = DEC_CHAT.decode(data)
        t = f.type
        if t == "presence_diff":
            self.w.presence_diffs += 1
            return
        if t == "reactions" or t == "notify":
            # Conversations modes: counted per step; in `react` mode a reactions frame is
            # the delivery (no body carries a due time, so only the ack is timed).
            w = self.w
            st = self.stats
            st.extra[w.step][t] += 1
            if t == "reactions":
                now = mono()
                st.recv += 1
                st.recv_rs[self.room * MAX_STEPS + w.step] += 1
                st.arrive(now)
            return
        if t == "ok":
            if f.ref == "j":
                self.join_seq = self.last = f.seq or 0
                self.state = 2
                self._ready()
                return
            entry = self.pending.pop(f.ref, None)
            if entry is not None:
                now = mono()
                st = self.stats
                st.acks += 1
                st.ack_of(entry[1]).append((now - entry[0]) // 1000)
                st.ack_rs[self.room * MAX_STEPS + entry[1]] += 1
        elif t == "welcome":
            self.write(json.dumps({"type": "join", "ref": "j", "room": self.room}))
            self.state = 1
        elif t == "error":
            st = self.stats
            st.errors[f.code or "?"] += 1
            entry = self.pending.pop(f.ref, None)
            if entry is not None:
                st.err_rs[self.room * MAX_STEPS + entry[1]] += 1
            if self.state < 2:
                self._ready(RuntimeError(f"refused: {f.code}"))

    def on_sio_frame(self, data: bytes) -> None:
        if data == b"2":
            self.write("3")
        elif data.startswith(b"0{"):
            self.write("40")
        elif data.startswith(b"40"):
            self.write(f'420["join","{self.room_s}"]')
            self.state = 1
        elif data.startswith(b"430"):
            self.state = 2
            self._ready()
        elif data.startswith(b"44"):
            self._ready(RuntimeError(f"socket.io connect refused: {data[:200]!r}"))

    def delivered(self, body: str | None, seq: int) -> None:
        now = mono()
        st = self.stats
        if body is None:
            return
        step = int(body[0:3])
        st.lat_of(step).append((now - int(body[3:23])) // 1000)
        st.recv += 1
        st.recv_rs[self.room * MAX_STEPS + step] += 1
        st.arrive(now)
        self.recv += 1
        if seq:
            last = self.last
            if seq == last + 1:
                self.last = seq
            elif seq > last + 1:
                if self.missing is None:
                    self.missing = set()
                self.missing.update(range(last + 1, seq))
                self.last = seq
            elif self.missing and seq in self.missing:
                self.missing.discard(seq)
                self.ooo += 1
            else:
                self.repeats += 1
            return
        # peers: no seq; check each sender's counter instead
        g = int(body[23:30])
        c = int(body[30:40])
        last = self.by_sender.get(g, 0)
        if c == last + 1:
            self.by_sender[g] = c
        elif c > last + 1:
            if self.pmissing is None:
                self.pmissing = set()
            self.pmissing.update((g, x) for x in range(last + 1, c))
            self.by_sender[g] = c
        elif self.pmissing and (g, c) in self.pmissing:
            self.pmissing.discard((g, c))
            self.ooo += 1
        else:
            self.repeats += 1

    def send_message(self, step: int, intended: int) -> None:
        self.counter += 1
        body = make_body(step, intended, self.gid, self.counter, self.w.pad)
        target = self.w.target
        st = self.stats
        if target == "chat":
            ref = self.next_ref
            self.next_ref += 1
            self.pending[ref] = (intended, step)
            mode = self.w.mode
            if mode == "react":
                # Each sender toggles its own +1 on one message: every frame is a change.
                kind = "react" if self.counter % 2 else "unreact"
                self.write(
                    f'{{"type":"{kind}","ref":{ref},"room":{self.room},'
                    f'"id":{self.w.react_target},"emoji":"+1"}}'
                )
            else:
                if mode == "atroom":
                    body += " @room"  # after the fixed-width fields that `delivered` reads
                self.write(f'{{"type":"send","ref":{ref},"room":{self.room},"body":"{body}"}}')
        elif target == "socketio":
            self.write(f'42["send",{{"room":"{self.room_s}","body":"{body}"}}]')
        else:
            self.write(f'{{"type":"send","room":"{self.room_s}","body":"{body}"}}')
        st.sent += 1
        st.sent_rs[self.room * MAX_STEPS + step] += 1

    def lost_connection(self, code: int | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.w.closed += 1
        self._ready(ConnectionError(f"closed ({code}) before it was ready"))


# -- picows ------------------------------------------------------------------


def picows_conn_class() -> type:
    from picows import WSListener, WSMsgType

    TEXT = WSMsgType.TEXT
    CLOSE = WSMsgType.CLOSE

    class PicowsConn(Conn, WSListener):  # type: ignore[misc]
        def __init__(self, w: Worker, idx: int, spec: list[Any]) -> None:
            Conn.__init__(self, w, idx, spec)
            self.t: Any = None
            self.recv_code: int | None = None

        def on_ws_connected(self, transport: Any) -> None:
            self.t = transport
            self.start()

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            mt = frame.msg_type
            if mt is TEXT:
                self.on_text(frame.get_payload_as_bytes())
            elif mt is CLOSE:
                self.recv_code = frame.get_close_code().value
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.lost_connection(self.recv_code if self.recv_code is not None else 1006)

        def write(self, text: str) -> None:
            self.t.send(TEXT, text.encode())

        def pause(self) -> None:
            self.t.underlying_transport.pause_reading()

        def resume(self) -> None:
            with contextlib.suppress(Exception):
                self.t.underlying_transport.resume_reading()

        def close(self) -> None:
            if self.t is not None and not self.closed:
                with contextlib.suppress(Exception):
                    self.t.send_close()
                    self.t.disconnect()

    return PicowsConn


async def open_picows(conn: Any) -> None:
    from picows import ws_connect

    factory = None
    rcvbuf = conn.w.cfg.get("slow_rcvbuf")
    if conn.slow and rcvbuf:
        # A client with a small receive window (a phone on a bad link): set before connecting.
        def factory(parsed: Any) -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            return sock

    await ws_connect(
        lambda: conn,
        conn.url,
        enable_auto_ping=False,
        websocket_handshake_timeout=30,
        read_buffer_init_size=4096,
        socket_factory=factory,
    )


# -- websockets (for comparison) ---------------------------------------------


class WebsocketsConn(Conn):
    def __init__(self, w: Worker, idx: int, spec: list[Any]) -> None:
        super().__init__(w, idx, spec)
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.paused = asyncio.Event()
        self.paused.set()

    def write(self, text: str) -> None:
        # websockets' send is a coroutine; write the frame without waiting on it
        task = asyncio.ensure_future(self.ws.send(text))
        self.w.background.add(task)
        task.add_done_callback(self.w.background.discard)

    def pause(self) -> None:
        self.paused.clear()

    def resume(self) -> None:
        self.paused.set()

    def close(self) -> None:
        if self.ws is not None:
            task = asyncio.ensure_future(self.ws.close())
            self.w.background.add(task)
            task.add_done_callback(self.w.background.discard)

    async def reader(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        try:
            while True:
                if not self.paused.is_set():
                    await self.paused.wait()
                msg = await ws.recv(decode=False)
                self.on_text(msg)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            self.lost_connection(code)


async def open_websockets(conn: WebsocketsConn) -> None:
    from websockets.asyncio.client import connect

    conn.ws = await connect(conn.url, compression=None, max_size=None, open_timeout=30)
    conn.start()
    conn.task = asyncio.ensure_future(conn.reader())


# -- the worker ----------------------------------------------------------------


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.index = cfg["worker"]
        self.target = cfg["target"]
        self.client = cfg.get("client", "picows")
        self.gid_base = cfg["gid_base"]
        pad_len = max(0, cfg["body_size"] - 40)
        self.pad = ("abcdefghijklmnopqrstuvwxyz" * (pad_len // 26 + 1))[:pad_len]
        self.stats = Stats()
        self.conns: list[Conn] = []
        self.closed = 0
        self.presence_diffs = 0
        self.connect_failures: dict[str, int] = defaultdict(int)
        self.stepping: asyncio.Task[None] | None = None
        self.rr = 0
        self.background: set[asyncio.Future[Any]] = set()
        # "message" (default), "react" (toggle a reaction on `react_target`), "atroom"
        # (every message says @room): the conversations benchmarks.
        self.mode = cfg.get("mode", "message")
        self.react_target = 0
        # The step being sent, to count frames that carry no step of their own.
        self.step = 0

    async def connect_all(self) -> None:
        cls: Any
        if self.client == "websockets":
            cls, opener = WebsocketsConn, open_websockets
        else:
            cls, opener = picows_conn_class(), open_picows
        self.conns = [cls(self, i, spec) for i, spec in enumerate(self.cfg["conns"])]
        sem = asyncio.Semaphore(self.cfg.get("connect_concurrency", 64))
        started = time.monotonic()

        async def one(conn: Conn) -> None:
            async with sem:
                for attempt in range(3):
                    try:
                        await opener(conn)
                        await asyncio.wait_for(asyncio.shield(conn.ready), 30)
                        return
                    except Exception as exc:
                        name = type(exc).__name__ + (f": {exc}"[:80] if str(exc) else "")
                        if conn.state == 0 and attempt < 2 and not conn.ready.done():
                            await asyncio.sleep(0.2 * (attempt + 1))
                            continue
                        self.connect_failures[name] += 1
                        return

        await asyncio.gather(*(one(c) for c in self.conns))
        for c in self.conns:
            if c.ready.done() and not c.ready.cancelled():
                c.ready.exception()  # retrieved: no "never retrieved" noise
        ok = sum(1 for c in self.conns if c.state == 2 and not c.closed)
        out(
            {
                "ev": "ready",
                "ok": ok,
                "failed": len(self.conns) - ok,
                "failures": dict(self.connect_failures),
                "seconds": round(time.monotonic() - started, 2),
                "join_seqs": self.join_seqs(),
                "presence_diffs": self.presence_diffs,
            }
        )

    def join_seqs(self) -> dict[str, int]:
        rooms: dict[str, int] = {}
        for c in self.conns:
            if c.state == 2:
                rooms[str(c.room)] = max(rooms.get(str(c.room), 0), c.join_seq)
        return rooms

    def live(self, c: Conn) -> bool:
        return c.state == 2 and not c.closed and not c.slow

    async def run_step(self, step: int, rate: float, seconds: float, t0: int) -> None:
        """Send at `rate` messages/s from t0 for `seconds`, open loop."""
        senders = [c for c in self.conns if c.sender and self.live(c)]
        random.shuffle(senders)
        st = self.stats
        sent_before = st.sent
        if rate > 0 and senders:
            interval = 1e9 / rate
            end = t0 + int(seconds * 1e9)
            k = 0
            n = len(senders)
            while True:
                now = mono()
                t = t0 + int(k * interval)
                while t <= now and t < end:
                    conn = senders[self.rr % n]
                    self.rr += 1
                    if conn.closed:
                        senders = [c for c in senders if not c.closed] or senders
                        n = len(senders)
                    conn.send_message(step, t)
                    k += 1
                    t = t0 + int(k * interval)
                if t >= end:
                    break
                await asyncio.sleep(max(0.0, (t - mono()) / 1e9))
        else:
            await asyncio.sleep(max(0.0, (t0 + seconds * 1e9 - mono()) / 1e9))
        out({"ev": "step_done", "step": step, "sent": st.sent - sent_before})

    def counts(self, step: int) -> dict[str, Any]:
        """Sends, refusals and acks per room for one step."""
        st = self.stats
        per_room: dict[str, list[int]] = {}
        for key, n in st.sent_rs.items():
            room, s = divmod(key, MAX_STEPS)
            if s == step:
                per_room.setdefault(str(room), [0, 0, 0])[0] += n
        for key, n in st.err_rs.items():
            room, s = divmod(key, MAX_STEPS)
            if s == step:
                per_room.setdefault(str(room), [0, 0, 0])[1] += n
        for key, n in st.ack_rs.items():
            room, s = divmod(key, MAX_STEPS)
            if s == step:
                per_room.setdefault(str(room), [0, 0, 0])[2] += n
        return per_room

    def collect(self, step: int, expected: dict[str, int], step_end: int) -> dict[str, Any]:
        """Step `step`'s histograms; deliveries still missing are recorded as a lower bound."""
        st = self.stats
        now = mono()
        members: dict[int, int] = defaultdict(int)
        for c in self.conns:
            if self.live(c):
                members[c.room] += 1
        outstanding = 0
        for room_s, n in expected.items():
            room = int(room_s)
            want = n * members.get(room, 0)
            got = st.recv_rs.get(room * MAX_STEPS + step, 0)
            if want > got:
                outstanding += want - got
        lat = st.lat[step] if st.lat[step] is not None else array("q")
        ack = st.ack[step] if st.ack[step] is not None else array("q")
        st.lat[step] = array("q")
        st.ack[step] = array("q")
        h = new_hist()
        record_many(h, lat)
        if outstanding:
            h.record_value(max(1, (now - step_end) // 1000), outstanding)
        ha = new_hist()
        record_many(ha, ack)
        unacked = sum(len(c.pending) for c in self.conns)
        return {
            "ev": "collected",
            "step": step,
            "lat": h.encode().decode(),
            "ack": ha.encode().decode() if ha.get_total_count() else None,
            "delivered": len(lat),
            "extra": dict(st.extra.pop(step, {})),
            "outstanding": outstanding,
            "unacked": unacked,
        }

    def progress(self) -> dict[str, Any]:
        st = self.stats
        return {
            "ev": "progress",
            "recv": st.recv,
            "sent": st.sent,
            "acks": st.acks,
            "errors": sum(st.errors.values()),
            "closed": self.closed,
        }

    def final(self) -> dict[str, Any]:
        st = self.stats
        conns = []
        for c in self.conns:
            if c.state != 2:
                continue
            missing = len(c.missing or ()) + len(c.pmissing or ())
            conns.append(
                [
                    c.room,
                    c.join_seq,
                    c.last,
                    c.recv,
                    c.repeats,
                    c.ooo,
                    missing,
                    int(c.closed),
                    c.close_code,
                    int(c.slow),
                    c.counter if c.sender else 0,
                ]
            )
        senders: dict[str, int] = {}
        for c in self.conns:
            if c.counter:
                senders[str(c.gid)] = c.counter
        return {
            "ev": "final",
            "conns": conns,
            "sent": st.sent,
            "acks": st.acks,
            "errors": dict(st.errors),
            "unacked": sum(len(c.pending) for c in self.conns),
            "arrivals": st.arrivals.tolist(),
            "epoch": st.epoch,
            "sent_by_room": self._sent_by_room(),
            "senders": senders,
        }

    def _sent_by_room(self) -> dict[str, int]:
        rooms: dict[str, int] = defaultdict(int)
        for key, n in self.stats.sent_rs.items():
            rooms[str(key // MAX_STEPS)] += n
        return dict(rooms)

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        ticker = asyncio.ensure_future(self.tick())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = json.loads(line)
                name = cmd["cmd"]
                if name == "target":
                    self.react_target = int(cmd["id"])
                    out({"ev": "targeted"})
                elif name == "step":
                    self.step = cmd["step"]
                    self.stepping = asyncio.ensure_future(
                        self.run_step(cmd["step"], cmd["rate"], cmd["seconds"], cmd["t0"])
                    )
                elif name == "counts":
                    out({"ev": "counts", "step": cmd["step"], "rooms": self.counts(cmd["step"])})
                elif name == "collect":
                    out(self.collect(cmd["step"], cmd["expected"], cmd["step_end"]))
                elif name == "poll":
                    out(self.progress())
                elif name == "slow":
                    for c in self.conns:
                        if c.slow and c.state == 2:
                            c.pause()
                    out({"ev": "slowed", "n": sum(1 for c in self.conns if c.slow)})
                elif name == "resume":
                    for c in self.conns:
                        if c.slow:
                            c.resume()
                    out({"ev": "resumed"})
                elif name == "epoch":
                    self.stats.epoch = cmd["t"]
                    self.stats.arrivals = array("q")
                elif name == "final":
                    out(self.final())
                elif name == "quit":
                    for c in self.conns:
                        c.close()
                    await asyncio.sleep(0.3)
                    out({"ev": "bye"})
                    return
        finally:
            ticker.cancel()

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            out(self.progress())


async def main() -> None:
    cfg = json.loads(sys.stdin.buffer.readline())
    worker = Worker(cfg)
    await worker.connect_all()
    await worker.commands()


def run() -> None:
    # One line of config first (read synchronously), then the command loop.
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main())
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    run()
