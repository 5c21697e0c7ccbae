"""Every setting of the server, read once from the environment or a `.env` file.

`Settings.from_env()` is the only place that looks at `os.environ`. A value that
does not parse fails at start-up with a `ConfigError` naming the setting, so a
typo in a deployment is found before the first client connects, not later.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

ENVIRONMENTS = ("development", "staging", "production")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a `.env` file: `NAME=value` lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for number, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{p}:{number}: expected NAME=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            raise ValueError(
                f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return text

    return parse


def _origins(text: str) -> tuple[str, ...]:
    origins = []
    for item in text.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.com")
        origins.append(origin.lower())
    return tuple(origins)


def _environment(text: str) -> str:
    if text not in ENVIRONMENTS:
        raise ValueError(f"must be one of {', '.join(ENVIRONMENTS)}")
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _prefix(text: str) -> str:
    if not text or len(text) > 64 or not all(c.isalnum() or c in "_-." for c in text):
        raise ValueError("must be 1-64 letters, digits, '_', '-' or '.'")
    return text


def _identity(text: str) -> str:
    return text


def _log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError("must be json or text")
    return text


def _secret(text: str) -> str:
    # RFC 7518 3.2: an HS256 key is at least as long as the hash (32 bytes).
    if len(text.encode("utf-8")) < 32:
        raise ValueError("must be at least 32 bytes long")
    return text


def _claim(text: str) -> str:
    # An issuer or audience is compared as typed; white space in one is a copy-paste slip.
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be non-empty with no white space")
    return text


def setting(default: T, parse: Callable[[str], T]) -> T:
    """A field of `Settings`: its default and the parser that validates its variable.

    The name and type are the field's own, so each setting is declared once, here.
    """
    return dataclasses.field(default=default, metadata={"parse": parse})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The server's configuration; each field's environment variable is its upper-cased name."""

    # Where the server runs and what backs it.
    chat_env: str = setting("development", _environment)
    database_url: str | None = setting(None, _url("postgres", "postgresql"))
    # A streaming replica for reads that may lag (history pages, and the directory,
    # search and thread lists through `Store.read`); unset, everything reads the primary.
    database_read_url: str | None = setting(None, _url("postgres", "postgresql"))
    # Seconds the replica's replay may be behind the primary before reads bypass it.
    read_max_lag: float = setting(5.0, _float(0, 3600))
    redis_url: str | None = setting(None, _url("redis", "rediss", "unix"))
    # Prefix of every Redis key and channel, so several services can share one Redis.
    redis_prefix: str = setting("chat", _prefix)
    # REDIS_URL names one node of a Redis Cluster (the others are discovered).
    redis_cluster: bool = setting(False, _bool)
    host: str = setting("127.0.0.1", _identity)
    port: int = setting(8000, _int(0, 65535))
    allowed_origins: tuple[str, ...] = setting((), _origins)
    log_level: str = setting("INFO", _log_level)
    log_format: str = setting("json", _log_format)
    # PostgreSQL pool.
    db_pool_min: int = setting(2, _int(1, 1000))
    db_pool_max: int = setting(10, _int(1, 1000))
    db_command_timeout: float = setting(5.0, _float(0.1, 600))
    db_connect_timeout: float = setting(2.0, _float(0.1, 600))
    # Request and frame limits.
    max_http_body_bytes: int = setting(65536, _int(1024, 64 * 1024 * 1024))
    max_frame_bytes: int = setting(65536, _int(1024, 64 * 1024 * 1024))
    hello_timeout: float = setting(10.0, _float(0.1, 600))
    # Seconds for a client to send a request's headers (a WebSocket handshake too).
    handshake_timeout: float = setting(10.0, _float(0.1, 600))
    # Seconds for a client to send a request's whole body, counted from its headers.
    body_timeout: float = setting(10.0, _float(0.1, 600))
    # Open TCP connections per client address per process (WebSockets included).
    max_connections_per_address: int = setting(256, _int(1, 10000000))
    # WebSocket handshakes per second per client address (bursts of twice that).
    handshake_rate: float = setting(50.0, _float(0.1, 1000000))
    heartbeat: float = setting(20.0, _float(1, 3600))
    ws_compression: bool = setting(False, _bool)
    # Sends, edits and deletes per user and process, over WebSocket and HTTP together.
    send_rate: float = setting(20.0, _float(0.1, 100000))
    send_burst: int = setting(50, _int(1, 1000000))
    # Joins, leaves and reads per user and process.
    control_rate: float = setting(20.0, _float(0.1, 100000))
    control_burst: int = setting(500, _int(1, 1000000))
    rate_limit_close_after: int = setting(100, _int(1, 1000000))
    typing_rate: float = setting(1.0, _float(0.01, 1000))
    replay_limit: int = setting(1000, _int(1, 100000))
    # Replayed message frames per user and process (joins with `since`): beyond it a
    # join's replay is cut short (`truncated`), the rest left to the history API.
    replay_rate: float = setting(1000.0, _float(0.1, 10000000))
    replay_burst: int = setting(5000, _int(1, 100000000))
    outbound_queue_frames: int = setting(2000, _int(16, 10000000))
    outbound_queue_bytes: int = setting(4 * 1024 * 1024, _int(65536, 1 << 34))
    # Seconds a replay or a reply waits for room in a full send queue before the
    # connection is closed with 1013 (the client stopped reading).
    send_timeout: float = setting(10.0, _float(0.1, 3600))
    # Seconds a WebSocket close may wait on a peer that reads nothing (its buffered data
    # and close frame unsent) before the connection is cut.
    close_timeout: float = setting(10.0, _float(0.1, 3600))
    max_rooms_per_connection: int = setting(500, _int(1, 100000))
    max_connections_per_user: int = setting(50, _int(1, 100000))
    # How many times an hour others may make one user a member of a room (adds and new
    # DMs, counted per target on every process): beyond it, 429.
    member_adds_per_hour: int = setting(100, _int(1, 1000000))
    # Fan-out and recovery.
    gap_grace: float = setting(0.05, _float(0, 10))
    reconcile_interval: float = setting(3.0, _float(0.05, 3600))
    # Seconds between re-reads of memberships and sessions (removals and log-outs whose
    # broadcast was lost, sessions that expired while idle) while the broker link is up.
    access_recheck: float = setting(30.0, _float(0.05, 86400))
    presence_ttl: float = setting(30.0, _float(1, 3600))
    # Seconds a room's presence changes gather before one presence_diff goes out with
    # the net joins and leaves (a join and a leave of the same user cancel out).
    presence_coalesce: float = setting(0.15, _float(0, 10))
    # Sessions and passwords.
    session_idle_days: float = setting(30.0, _float(0.0001, 36500))
    argon2_memory_kib: int = setting(19456, _int(8, 4 * 1024 * 1024))
    argon2_time_cost: int = setting(2, _int(1, 100))
    # Threads hashing passwords, and hashes that may wait for one; beyond, 503.
    argon2_threads: int = setting(2, _int(1, 256))
    argon2_queue: int = setting(16, _int(0, 100000))
    # Wrong log-ins before an account (any case of its username) or a client
    # address is locked out; each further one doubles the lock, up to the longest.
    login_free_failures: int = setting(5, _int(1, 1000))
    login_address_free_failures: int = setting(20, _int(1, 1000000))
    login_delay: float = setting(1.0, _float(0.1, 3600))
    login_delay_max: float = setting(900.0, _float(0.1, 86400))
    # Sign-up attempts per client address in a window of seconds.
    signups_per_address: int = setting(20, _int(1, 1000000))
    signup_window: float = setting(3600.0, _float(1, 86400))
    # Shutdown.
    graceful_shutdown: float = setting(10.0, _float(0, 3600))
    limit_concurrency: int = setting(10000, _int(1, 10000000))
    # Group commit: at most this many insert batches in flight; sends that arrive
    # meanwhile wait and go together in the next batch (one statement, one commit).
    write_batches: int = setting(4, _int(1, 64))
    write_batch_size: int = setting(500, _int(1, 10000))
    # While a batch is in flight, new sends gather this long (seconds) before the next
    # batch starts, instead of taking a free lane one by one.
    write_batch_window: float = setting(0.002, _float(0, 1))
    # Outgoing webhooks (issue 15). Loopback, private, link-local and multicast URLs are
    # refused unless this is true (tests, or a bot beside the server).
    webhook_allow_private: bool = setting(False, _bool)
    # Seconds a delivery may take in all (connect, send, answer) before it is retried.
    webhook_timeout: float = setting(10.0, _float(0.01, 600))
    # Retry delays: the first, doubling up to the cap, until the event is this old.
    webhook_retry_base: float = setting(1.0, _float(0.001, 3600))
    webhook_retry_max: float = setting(300.0, _float(0.001, 86400))
    webhook_give_up: float = setting(86400.0, _float(0.01, 30 * 86400))
    # Seconds between looks for due events (a delivery that succeeds looks again at once).
    webhook_poll_interval: float = setting(0.5, _float(0.01, 60))
    # Seconds a claimed event stays this process's; a killed process's claims run out after it.
    webhook_lease: float = setting(30.0, _float(0.05, 3600))
    # Deliveries in flight per process (and the HTTP pool's connections).
    webhook_concurrency: int = setting(32, _int(1, 10000))
    # The most of a webhook's answer that is read (the rest is ignored).
    webhook_max_response_bytes: int = setting(65536, _int(1024, 16 * 1024 * 1024))
    # JWT sign-in (issue 15): HS256 with a shared secret, or RS256/ES256 keys from a JWKS.
    auth_jwt_secret: str | None = setting(None, _secret)
    auth_jwt_jwks_url: str | None = setting(None, _url("https", "http"))
    auth_jwt_issuer: str | None = setting(None, _claim)
    auth_jwt_audience: str | None = setting(None, _claim)
    # Seconds the JWKS is kept; an unknown `kid` fetches it again, at most once this often.
    auth_jwt_jwks_ttl: float = setting(3600.0, _float(1, 86400 * 7))
    auth_jwt_jwks_refetch: float = setting(30.0, _float(0.01, 86400))

    @property
    def production(self) -> bool:
        return self.chat_env == "production"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | None = ".env"
    ) -> Settings:
        """Read every setting; the process environment wins over the `.env` file."""
        values: dict[str, str] = dict(read_env_file(env_file)) if env_file else {}
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = field.name.upper()
            raw = values.get(name)
            if raw is None or (raw == "" and field.default is None):
                continue
            parser = field.metadata["parse"]
            try:
                kwargs[field.name] = parser(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that cannot work, and unsafe defaults in production."""
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.login_delay > self.login_delay_max:
            raise ConfigError("LOGIN_DELAY must not exceed LOGIN_DELAY_MAX")
        if self.webhook_lease <= self.webhook_timeout:
            raise ConfigError(
                "WEBHOOK_LEASE must exceed WEBHOOK_TIMEOUT: a claim must outlast its delivery"
            )
        if self.auth_jwt_secret and self.auth_jwt_jwks_url:
            raise ConfigError("set AUTH_JWT_SECRET or AUTH_JWT_JWKS_URL, not both")
        if self.production:
            if not self.database_url:
                raise ConfigError(
                    "CHAT_ENV=production needs DATABASE_URL: "
                    "the embedded PostgreSQL is for development"
                )
            if not self.redis_url:
                raise ConfigError(
                    "CHAT_ENV=production needs REDIS_URL: "
                    "the in-process broker serves one process only"
                )
            if self.argon2_memory_kib < 19456 or self.argon2_time_cost < 2:
                raise ConfigError(
                    "CHAT_ENV=production needs ARGON2_MEMORY_KIB>=19456 and ARGON2_TIME_COST>=2"
                )


@functools.cache
def process_settings() -> Settings:
    """The settings, read once per process from the environment `python -m chat serve` checked.

    For uvicorn's protocol classes (`handshake.py`, `closing.py`): its worker
    processes build them, not the app factory, so each reads the settings itself.
    """
    return Settings.from_env()
