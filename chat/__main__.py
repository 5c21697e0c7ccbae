"""`python -m chat serve | migrate`: the commands the Procfile and the Makefile run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import logs
from .config import ConfigError, Settings

log = logging.getLogger("chat")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


def _database(settings: Settings, embedded: bool) -> tuple[Settings, object]:
    """Fill in DATABASE_URL from an embedded PostgreSQL when asked and none is set."""
    if settings.database_url or not embedded:
        if not settings.database_url:
            sys.exit("configuration error: DATABASE_URL is not set (or pass --embedded-db)")
        return settings, None
    from . import devdb

    url, handle = devdb.start()
    os.environ["DATABASE_URL"] = url
    return Settings.from_env(), handle


def migrate(args: argparse.Namespace) -> None:
    settings, _handle = _database(_settings(), args.embedded_db)
    import asyncpg

    from .migrate import migrate as run

    async def main() -> None:
        assert settings.database_url
        conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout)
        try:
            applied = await run(conn)
        finally:
            await conn.close()
        print(f"migrated: {len(applied)} applied" + (f" ({applied})" if applied else ""))

    asyncio.run(main())


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings, _handle = _database(_settings(), args.embedded_db)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    log.info("serving", extra={"host": host, "port": port, "env": settings.chat_env})
    os.environ["HANDSHAKE_TIMEOUT"] = str(settings.handshake_timeout)
    os.environ["CLOSE_TIMEOUT"] = str(settings.close_timeout)
    from .closing import ClosingWebSocketProtocol
    from .handshake import DeadlineHttpProtocol

    uvicorn.run(
        "chat.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        http=DeadlineHttpProtocol,
        ws=ClosingWebSocketProtocol,
        log_config=None,
        access_log=False,
        server_header=False,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.heartbeat,
        ws_ping_timeout=settings.heartbeat,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=round(settings.graceful_shutdown),
        limit_concurrency=settings.limit_concurrency,
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve HTTP and WebSocket (migrating first if needed)")
    p_serve.add_argument("--host", help="default: $HOST or 127.0.0.1")
    p_serve.add_argument("--port", type=int, help="default: $PORT or 8000")
    p_serve.add_argument("--workers", type=int, default=None, help="uvicorn worker processes")
    p_serve.add_argument(
        "--embedded-db",
        action="store_true",
        help="start an embedded PostgreSQL if DATABASE_URL is unset",
    )
    p_serve.set_defaults(run=serve)
    p_migrate = sub.add_parser("migrate", help="apply sql/migrations and exit")
    p_migrate.add_argument("--embedded-db", action="store_true")
    p_migrate.set_defaults(run=migrate)
    args = parser.parse_args(argv)
    settings = _settings()
    logs.setup(settings.log_level, settings.log_format)
    args.run(args)


if __name__ == "__main__":
    main()
