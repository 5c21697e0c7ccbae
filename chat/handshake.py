"""A deadline on the HTTP request line and headers, WebSocket handshakes included.

uvicorn times out idle keep-alive connections but not a request whose headers
arrive one byte at a time (slowloris). This protocol class arms a timer when a
connection opens and when each request begins, and closes the connection if
its headers are not complete by then. `python -m chat serve` passes it to
uvicorn as the HTTP protocol.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout() -> float:
    # Read from the environment so that every uvicorn worker process sees it.
    return float(os.environ.get("HANDSHAKE_TIMEOUT", "10"))


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The timer that closes the connection if the headers are late.
        self._deadline: asyncio.TimerHandle | None = None
        self._limit = _timeout()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self._limit, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
