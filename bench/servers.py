"""The servers under test: two processes of each target, sharing PostgreSQL and Redis.

- chat:     our server, `python -m chat serve` as the Procfile runs it;
- chat-cluster: the same with `REDIS_CLUSTER=true` on a private Redis Cluster
            (`BenchCluster`: 3 masters, no replicas, started for the run);
- pysio:    python-socketio + AsyncRedisManager under uvicorn (bench/peers/pysio_app.py);
- node:     Node's socket.io + @socket.io/redis-adapter (bench/peers/node/server.js);
- raw:      the `websockets` library + redis-py pub/sub, no framework (bench/peers/raw_ws.py).

Compression is off everywhere. Each process logs to bench/out/logs/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import cluster_port, free_port

from .common import proc_cpu_seconds, proc_rss_kib

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOGS = BENCH / "out" / "logs"

TARGETS = ("chat", "pysio", "node", "raw")
# The wire protocol each target speaks (see bench/worker.py).
PROTOCOL = {
    "chat": "chat",
    "chat-cluster": "chat",
    "pysio": "socketio",
    "node": "socketio",
    "raw": "raw",
}
WS_PATH = {
    "chat": "/ws",
    "chat-cluster": "/ws",
    "pysio": "/socket.io/?EIO=4&transport=websocket",
    "node": "/socket.io/?EIO=4&transport=websocket",
    "raw": "/",
}


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_kib(self.pid)

    async def start(self, timeout: float = 60) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{self.name}.log"
        self.proc = _spawn(self.argv, self.env, self.log_path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError(f"{self.name} did not listen:\n{self.tail()}") from None
                await asyncio.sleep(0.1)

    def tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(150):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.proc.kill()
        self.proc.wait()


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


class BenchCluster:
    """A private Redis Cluster for a run: `masters` redis-server nodes in bench/out/cluster."""

    def __init__(self, masters: int = 3, cpus: str | None = None) -> None:
        self.ports = [cluster_port() for _ in range(masters)]
        self.cpus = cpus
        self.folder = BENCH / "out" / "cluster"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.ports]

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            argv = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            ]  # fmt: skip
            self.procs.append(
                _spawn(_pin(argv, self.cpus), dict(os.environ), LOGS / f"redis-{port}.log")
            )
        for port in self.ports:
            for _ in range(100):
                ping = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True)
                if b"PONG" in ping.stdout:
                    break
                time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for _ in range(200):
            info = subprocess.run(
                ["redis-cli", "-p", str(self.ports[0]), "CLUSTER", "INFO"], capture_output=True
            )
            if b"cluster_state:ok" in info.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("the bench Redis Cluster did not become ok")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _pin(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def chat_servers(
    database_url: str, redis_url: str, prefix: str, extra_env: dict[str, str], cpus: str | None
) -> list[Server]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "CHAT_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        # Benchmarks only: cheap password hashing so that thousands of sign-ups take seconds.
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
        # The per-user budgets (sends; joins, leaves and reads; replays) would cap the
        # offered load of users with many connections; lift them.
        "SEND_RATE": "100000",
        "SEND_BURST": "100000",
        "CONTROL_RATE": "100000",
        "CONTROL_BURST": "1000000",
        "REPLAY_RATE": "10000000",
        "REPLAY_BURST": "100000000",
        "RATE_LIMIT_CLOSE_AFTER": "1000000",
        "HANDSHAKE_RATE": "100000",
        "LIMIT_CONCURRENCY": "100000",
        "MAX_CONNECTIONS_PER_USER": "1000",
        "WS_COMPRESSION": "false",
        **extra_env,
    }
    servers = []
    for name in ("chat-a", "chat-b"):
        port = free_port()
        argv = [sys.executable, "-m", "chat", "serve", "--host", "127.0.0.1", "--port", str(port)]
        servers.append(Server(name, _pin(argv, cpus), env, port))
    return servers


def peer_servers(target: str, redis_url: str, prefix: str, cpus: str | None) -> list[Server]:
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_PREFIX": prefix}
    servers = []
    for name in ("a", "b"):
        port = free_port()
        if target == "pysio":
            argv = [
                sys.executable, "-m", "uvicorn", "bench.peers.pysio_app:app",
                "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning",
                "--ws-per-message-deflate", "false",
            ]  # fmt: skip
        elif target == "node":
            node = shutil.which("node") or "node"
            argv = [node, str(BENCH / "peers" / "node" / "server.js"), str(port)]
        elif target == "raw":
            argv = [sys.executable, "-m", "bench.peers.raw_ws", "--port", str(port)]
        else:
            raise ValueError(target)
        servers.append(Server(f"{target}-{name}", _pin(argv, cpus), env, port))
    return servers
