"""Security limits: log-in throttling across processes, the bounded hashing queue, sign-ups
per address, request-body deadlines, connections per address, WebSockets under
LIMIT_CONCURRENCY, and the rule that exempts loopback outside production only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from chat.broker import Counters, MemoryCounters, create_backends
from chat.handshake import Proxies
from chat.limits import exempt, lock_seconds

from .conftest import REDIS_URL
from .support import PASSWORD, Api, ServerProcess, Ws

# -- helpers --------------------------------------------------------------------


def unique(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


@contextlib.asynccontextmanager
async def running(*servers: ServerProcess) -> AsyncIterator[None]:
    """Start the servers together; stop every one of them whatever happens."""
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield
    finally:
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)


async def drop_keys(client: aioredis.Redis, prefix: str) -> None:
    """Delete what a private server left in Redis under its prefix."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


async def log_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post("/api/sessions", json={"username": username, "password": password})


async def sign_up(http: httpx.AsyncClient, username: str) -> httpx.Response:
    return await http.post("/api/users", json={"username": username, "password": PASSWORD})


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def retry_after(response: httpx.Response) -> int:
    """The response's Retry-After, which must be a whole number of seconds, at least 1."""
    value = response.headers.get("retry-after")
    assert value is not None and value.isdigit(), response.headers
    assert int(value) >= 1
    return int(value)


async def password_hashes(http: httpx.AsyncClient) -> float:
    """The process's count of argon2 calls, from /metrics."""
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("chat_password_hashes_total "):
            return float(line.split()[1])
    raise AssertionError("no chat_password_hashes_total in /metrics")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


class Sockets:
    """Raw TCP connections to a server, every one closed at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pair = await asyncio.open_connection("127.0.0.1", self.port)
        self.open.append(pair)
        return pair

    async def get(self, forwarded_for: str = "") -> tuple[int, dict[str, str], bytes]:
        """GET /healthz on a new connection, which stays open (keep-alive) after the answer."""
        reader, writer = await self.connect()
        extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        await writer.drain()
        return await read_response(reader)

    async def close(self, pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.open.remove(pair)
        pair[1].close()
        with contextlib.suppress(ConnectionError):
            await pair[1].wait_closed()

    async def close_all(self) -> None:
        for pair in list(self.open):
            await self.close(pair)


@contextlib.asynccontextmanager
async def sockets(port: int) -> AsyncIterator[Sockets]:
    pool = Sockets(port)
    try:
        yield pool
    finally:
        await pool.close_all()


@pytest.fixture
async def private_env(
    server_env: dict[str, str], redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[dict[str, str]]:
    """The run's server settings under a Redis prefix of the test's own, emptied afterwards."""
    prefix = unique(f"{redis_prefix}-")
    try:
        yield {**server_env, "REDIS_PREFIX": prefix}
    finally:
        await drop_keys(redis_client, prefix)


# -- the rules, as plain functions ----------------------------------------------


def test_loopback_is_exempt_outside_production_only() -> None:
    """Loopback (IPv4, IPv6, IPv4-mapped) is exempt in development, never in production."""
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert exempt(address, production=False), address
        assert not exempt(address, production=True), address
    for address in ("10.0.0.1", "192.0.2.7", "2001:db8::1", "", "testclient"):
        assert not exempt(address, production=False), address
        assert not exempt(address, production=True), address


def test_proxied_client_address_follows_uvicorns_rule() -> None:
    """X-Forwarded-For counts only from a trusted peer: the last entry no trusted proxy added."""
    proxies = Proxies("127.0.0.1, ::1, 10.0.0.0/8")
    assert proxies.client("192.0.2.1", "198.51.100.7") == "192.0.2.1"  # untrusted peer: ignored
    assert proxies.client("127.0.0.1", "198.51.100.7") == "198.51.100.7"
    assert proxies.client("127.0.0.1", "203.0.113.9, 198.51.100.7, 10.1.2.3") == "198.51.100.7"
    assert proxies.client("::1", "[2001:db8::5]:4711") == "2001:db8::5"
    assert proxies.client("127.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"  # all trusted
    assert proxies.client("127.0.0.1", " , ") == "127.0.0.1"
    assert Proxies("*").client("192.0.2.1", "203.0.113.9, 10.1.2.3") == "203.0.113.9"


def test_lock_grows_exponentially_and_is_capped() -> None:
    """No lock below the free failures; then the delay doubles with each failure, up to the cap."""
    waits = [lock_seconds(n, free=3, delay=1.0, delay_max=5.0) for n in range(1, 8)]
    assert waits == [0.0, 0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.fixture(params=["memory", "redis"])
async def counters(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis
) -> AsyncIterator[Counters]:
    """The in-process counters, or the Redis ones on the test Redis under a prefix of its own."""
    if request.param == "memory":
        yield MemoryCounters()
        return
    prefix = unique("countertest")
    backends = create_backends(REDIS_URL, "test", prefix)
    try:
        yield backends.counters
    finally:
        await backends.broker.disconnect()
        await drop_keys(redis_client, prefix)


async def test_counters_count_failures_into_growing_locks(counters: Counters) -> None:
    """failure() locks from the free count on with doubling, capped delays; forget() clears."""
    key = unique("login:user:")
    waits = [await counters.failure(key, 3, 10.0, 40.0) for _ in range(6)]
    assert waits == [0.0, 0.0, 10.0, 20.0, 40.0, 40.0]
    assert 30.0 < await counters.locked(key) < 40.001  # 40 at most, give or take float rounding
    assert await counters.locked(unique("login:user:")) == 0.0
    await counters.forget(key)
    assert await counters.locked(key) == 0.0
    assert await counters.failure(key, 3, 10.0, 40.0) == 0.0


async def test_counters_count_hits_within_a_window(counters: Counters) -> None:
    """hit() counts from 1 and reports the time left in the window its first hit opened."""
    key = unique("signup:addr:")
    counts = []
    for _ in range(3):
        count, left = await counters.hit(key, 60.0)
        counts.append(count)
        assert 0 < left <= 60.0
    assert counts == [1, 2, 3]


# -- F2: log-in throttling across processes --------------------------------------


@pytest.fixture(scope="module")
async def throttled_pair(
    server_env: dict[str, str], redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two processes of one service (development: loopback exempt from address counts)
    that lock an account after 3 wrong passwords, for 2 s, then 4 s."""
    prefix = f"{redis_prefix}-pair"
    env = {
        **server_env,
        "REDIS_PREFIX": prefix,
        "LOGIN_FREE_FAILURES": "3",
        "LOGIN_DELAY": "2",
        "LOGIN_DELAY_MAX": "4",
    }
    a, b = ServerProcess(env, "throttle-a"), ServerProcess(env, "throttle-b")
    try:
        async with running(a, b):
            yield a, b
    finally:
        await drop_keys(redis_client, prefix)


async def test_wrong_passwords_on_one_process_lock_the_account_on_another(
    throttled_pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """Failures on a lock the account on b (any case), 429 + Retry-After without hashing;
    the right password works once the delay is over, and success clears the count."""
    a, b = throttled_pair
    name = unique("Lock")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
    ):
        assert (await sign_up(on_a, name)).status_code == 201
        for variant in (name, name.upper(), name.lower()):
            r = await log_in(on_a, variant, "wrong password")
            assert r.status_code == 401, r.text
        hashes = await password_hashes(on_b)
        refused = await log_in(on_b, name.lower(), PASSWORD)
        assert refused.status_code == 429, refused.text
        assert code(refused) == "rate_limited"
        wait = retry_after(refused)
        assert wait <= 2
        # The refused log-in never reached argon2.
        assert await password_hashes(on_b) == hashes
        # The lock ends when Retry-After says: wait that long (again if still refused).
        async with asyncio.timeout(15):
            while True:
                await asyncio.sleep(wait)  # the server's own delay, not synchronisation
                r = await log_in(on_b, name, PASSWORD)
                if r.status_code != 429:
                    break
                wait = retry_after(r)
        assert r.status_code == 201, r.text
        # Success cleared the account's count: one more failure does not lock it again.
        assert (await log_in(on_a, name, "wrong again")).status_code == 401
        assert (await log_in(on_b, name, PASSWORD)).status_code == 201


async def test_unknown_usernames_are_throttled_too(
    throttled_pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """Guessing at a username that does not exist locks it like a real one (no hint)."""
    a, b = throttled_pair
    name = unique("ghost")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
    ):
        for _ in range(3):
            assert (await log_in(on_a, name, "guess")).status_code == 401
        refused = await log_in(on_b, name, "guess")
        assert refused.status_code == 429, refused.text
        retry_after(refused)


async def test_concurrent_guesses_do_not_outrun_the_lock(
    throttled_pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """Ten wrong passwords at once for one account on one process: three are checked (401),
    the other seven find the account locked (429) and cost no hash."""
    a, _ = throttled_pair
    name = unique("Burst")
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as on_a:
        assert (await sign_up(on_a, name)).status_code == 201
        hashes = await password_hashes(on_a)
        burst = await asyncio.gather(*(log_in(on_a, name, f"guess {n}") for n in range(10)))
        assert sorted(r.status_code for r in burst) == [401] * 3 + [429] * 7
        assert await password_hashes(on_a) == hashes + 3


# -- F2: the bounded hashing queue -----------------------------------------------


async def test_full_hashing_queue_answers_503_at_once(private_env: dict[str, str]) -> None:
    """With one hashing thread and one waiting slot, a burst of log-ins gets 503 + Retry-After
    for the rest instead of queueing them all; afterwards log-in works again."""
    env = {
        **private_env,
        "ARGON2_THREADS": "1",
        "ARGON2_QUEUE": "1",
        # About half a second a hash: the burst below arrives while the first one runs.
        "ARGON2_TIME_COST": "40",
    }
    server = ServerProcess(env, "queue")
    async with running(server), httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        burst = await asyncio.gather(*(log_in(http, unique("nobody"), "guess") for _ in range(6)))
        statuses = sorted(r.status_code for r in burst)
        assert 503 in statuses, statuses
        assert set(statuses) <= {401, 503}, statuses
        for r in burst:
            if r.status_code == 503:
                assert code(r) == "unavailable"
                retry_after(r)
        name = unique("after")
        assert (await sign_up(http, name)).status_code == 201
        assert (await log_in(http, name, PASSWORD)).status_code == 201


# -- address limits, production against development -------------------------------

ADDRESS_LIMITS = {
    "LOGIN_ADDRESS_FREE_FAILURES": "3",
    # Long enough that the lock outlasts the test on a slow machine.
    "LOGIN_DELAY": "60",
    "SIGNUPS_PER_ADDRESS": "3",
    "SIGNUP_WINDOW": "600",
    "MAX_CONNECTIONS_PER_ADDRESS": "4",
    # Burst of one handshake: the second within ten seconds is refused.
    "HANDSHAKE_RATE": "0.1",
}


@pytest.fixture(scope="module")
async def by_mode(
    server_env: dict[str, str], redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[dict[str, ServerProcess]]:
    """A production and a development process with small per-address limits; clients are
    all on loopback, which only development exempts."""
    servers = {
        mode: ServerProcess(
            {
                **server_env,
                **ADDRESS_LIMITS,
                "CHAT_ENV": mode,
                "REDIS_PREFIX": f"{redis_prefix}-{mode}",
            },
            mode,
        )
        for mode in ("production", "development")
    }
    try:
        async with running(*servers.values()):
            yield servers
    finally:
        for mode in servers:
            await drop_keys(redis_client, f"{redis_prefix}-{mode}")


MODES = pytest.mark.parametrize("mode", ["production", "development"])


@MODES
async def test_wrong_log_ins_per_address(by_mode: dict[str, ServerProcess], mode: str) -> None:
    """Failures spread over many usernames lock the address in production, not on loopback
    in development."""
    server = by_mode[mode]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        statuses = [(await log_in(http, unique("spray"), "guess")).status_code for _ in range(5)]
        if mode == "production":
            assert statuses[:3] == [401, 401, 401], statuses
            assert statuses[3:] == [429, 429], statuses
            refused = await log_in(http, unique("spray"), "guess")
            assert code(refused) == "rate_limited"
            retry_after(refused)
        else:
            assert statuses == [401] * 5


@MODES
async def test_sign_ups_per_address(by_mode: dict[str, ServerProcess], mode: str) -> None:
    """SIGNUPS_PER_ADDRESS sign-ups pass; the next gets 429 + Retry-After in production only."""
    server = by_mode[mode]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        statuses = [(await sign_up(http, unique("many"))).status_code for _ in range(4)]
        if mode == "production":
            assert statuses == [201, 201, 201, 429], statuses
            refused = await sign_up(http, unique("many"))
            assert refused.status_code == 429 and code(refused) == "rate_limited"
            assert retry_after(refused) <= 600
        else:
            assert statuses == [201] * 4


@MODES
async def test_websocket_handshakes_per_address(
    by_mode: dict[str, ServerProcess], mode: str
) -> None:
    """HANDSHAKE_RATE refuses loopback's second handshake in production, not in development."""
    server = by_mode[mode]
    statuses = []
    for _ in range(3):
        try:
            ws = await websockets.connect(server.ws_url, open_timeout=10)
        except websockets.InvalidStatus as exc:
            statuses.append(exc.response.status_code)
        else:
            statuses.append(101)
            await ws.close()
    if mode == "production":
        assert 429 in statuses, statuses
    else:
        assert statuses == [101] * 3


async def hold(pool: Sockets, count: int, forwarded_for: str = "") -> None:
    """Open `count` keep-alive connections, each proven counted by a 200 answer.

    A connection a previous test closed may not be released by the server yet:
    a 429 then means "not yet", and the attempt is repeated until it is.
    """
    async with asyncio.timeout(10):
        held = 0
        while held < count:
            status, _, _ = await pool.get(forwarded_for)
            if status == 200:
                held += 1
                continue
            assert status == 429, status
            await pool.close(pool.open[-1])
            await asyncio.sleep(0.05)  # polling for the server to release a connection


@MODES
async def test_connections_per_address(by_mode: dict[str, ServerProcess], mode: str) -> None:
    """Beyond MAX_CONNECTIONS_PER_ADDRESS a request or a WebSocket gets 429 in production;
    closing one frees a place. Development lets loopback open more."""
    server = by_mode[mode]
    async with sockets(server.port) as pool:
        await hold(pool, 4)
        status, headers, body = await pool.get()
        if mode == "development":
            assert status == 200
            return
        assert status == 429, status
        assert json.loads(body)["error"]["code"] == "rate_limited"
        assert headers["retry-after"] == "1"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url, open_timeout=10)
        assert refused.value.response.status_code == 429
        # Closing one of the four (and the refused one) frees a place: wait until it is seen.
        for pair in pool.open[3:]:
            await pool.close(pair)
        async with asyncio.timeout(10):
            while True:
                status, _, _ = await pool.get()
                if status == 200:
                    break
                await pool.close(pool.open[-1])
                await asyncio.sleep(0.05)  # polling for the server to release a connection


async def test_proxied_clients_are_counted_apart(by_mode: dict[str, ServerProcess]) -> None:
    """Behind a trusted proxy (loopback, uvicorn's default) each X-Forwarded-For client has
    its own MAX_CONNECTIONS_PER_ADDRESS: the proxy's address is not capped as one client."""
    server = by_mode["production"]
    async with sockets(server.port) as pool:
        await hold(pool, 4, forwarded_for="198.51.100.7")
        status, _, _ = await pool.get(forwarded_for="198.51.100.7")
        assert status == 429
        status, _, _ = await pool.get(forwarded_for="198.51.100.8")
        assert status == 200
        status, _, _ = await pool.get()
        assert status == 200


# -- F3: request-body deadline -----------------------------------------------------


@pytest.fixture(scope="module")
async def body_deadline(
    server_env: dict[str, str], redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[ServerProcess]:
    """A process whose request bodies must arrive within 1 s (headers get 30 s)."""
    env = {
        **server_env,
        "REDIS_PREFIX": f"{redis_prefix}-body",
        "BODY_TIMEOUT": "1",
        "HANDSHAKE_TIMEOUT": "30",
    }
    server = ServerProcess(env, "body")
    try:
        async with running(server):
            yield server
    finally:
        await drop_keys(redis_client, f"{redis_prefix}-body")


def post_head(length: int) -> bytes:
    return (
        "POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_body_that_never_comes_is_cut_off(body_deadline: ServerProcess) -> None:
    """Complete headers and a body that stops after a few bytes: the connection is closed."""
    async with sockets(body_deadline.port) as pool:
        reader, writer = await pool.connect()
        writer.write(post_head(100) + b'{"user')
        await writer.drain()
        # Before the deadline existed this read waited for ever (the timeout bounds a hang).
        assert await asyncio.wait_for(reader.read(), 10) == b""
        status, _, _ = await pool.get()
        assert status == 200


async def test_trickled_body_is_cut_off(body_deadline: ServerProcess) -> None:
    """A body sent a byte every 0.2 s is cut off at the body deadline, not served."""
    async with sockets(body_deadline.port) as pool:
        reader, writer = await pool.connect()
        body = json.dumps({"username": "trickle", "password": "x" * 60}).encode()
        writer.write(post_head(len(body)))
        closed = asyncio.create_task(reader.read())
        try:
            for byte in body:
                if closed.done():
                    break
                with contextlib.suppress(ConnectionError):
                    writer.write(bytes([byte]))
                    await writer.drain()
                await asyncio.sleep(0.2)  # pacing the trickle, not synchronisation
            assert await asyncio.wait_for(closed, 10) == b""
            assert closed.done()
        finally:
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closed


async def test_websocket_outlives_the_body_deadline(body_deadline: ServerProcess) -> None:
    """An upgrade has no body: a WebSocket open past BODY_TIMEOUT keeps working."""
    api = await Api.new_user(body_deadline.url, "long")
    ws = await Ws.connect(body_deadline.ws_url, api.token)
    try:
        await asyncio.sleep(1.5)  # letting the body deadline pass, not synchronisation
        pong = await ws.call({"type": "ping"})
        assert pong["type"] == "pong"
    finally:
        await ws.close()
        await api.close()


# -- F11: WebSockets count toward LIMIT_CONCURRENCY ----------------------------------


async def test_websockets_beyond_limit_concurrency_get_503(private_env: dict[str, str]) -> None:
    """With LIMIT_CONCURRENCY=3, a fourth open WebSocket is refused with 503 `unavailable`;
    once one closes, a new one is welcome."""
    env = {
        **private_env,
        "LIMIT_CONCURRENCY": "3",
        "HELLO_TIMEOUT": "60",
    }
    server = ServerProcess(env, "ws-limit")
    async with running(server):
        opened: list[Any] = []
        try:
            for _ in range(3):
                opened.append(await websockets.connect(server.ws_url, open_timeout=10))
            with pytest.raises(websockets.InvalidStatus) as refused:
                opened.append(await websockets.connect(server.ws_url, open_timeout=10))
            assert refused.value.response.status_code == 503
            body = json.loads(refused.value.response.body or b"{}")
            assert body["error"]["code"] == "unavailable"
            await opened.pop().close()
            async with asyncio.timeout(10):
                while True:
                    try:
                        opened.append(await websockets.connect(server.ws_url, open_timeout=10))
                        break
                    except websockets.InvalidStatus as exc:
                        assert exc.response.status_code == 503
                        await asyncio.sleep(0.05)  # polling for the server to see the close
        finally:
            for ws in opened:
                await ws.close()
