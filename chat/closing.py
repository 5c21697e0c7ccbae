"""uvicorn's WebSocket protocol, with closing handshakes that finish at shutdown.

At shutdown uvicorn calls `shutdown()` on every connection, and its WebSocket
protocol then closes the TCP connection at once, even one whose closing
handshake is under way. The app drains first (every WebSocket closed with 1012,
see `Node.drain`), so each such connection has sent its close frame and waits
for the peer's reply; cutting it now means a client that was still sending gets
a reset, which can discard the close frame unread (the client sees 1006, not
1012). This protocol lets the handshake finish: the reply, or uvicorn's own
close timer, ends the connection, and uvicorn waits for that within its
graceful-shutdown timeout. It also tells the HTTP protocol it was upgraded
from when the connection ends (`on_lost`), for the per-address connection count.
`python -m chat serve` passes it to uvicorn.

The other way round, a peer that stopped reading never lets a close end: the
transport's `close()` waits for its write buffer to drain, which it never does,
so the socket, its buffered megabytes and the app's tasks stayed forever (a 1011
from the heartbeat included), and the app's own close waited for the transport
to become writable again. Here every close gets `CLOSE_TIMEOUT` seconds to get
through; then the transport is aborted (a reset, its buffer dropped), which
tells the app the client is gone.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

from .config import process_settings


class ClosingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; shutdown leaves a closing handshake to finish,
    and no close waits on a peer that stopped reading for more than CLOSE_TIMEOUT."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Seconds a close gets to go through (uvicorn's own wait for the close reply too).
        self.close_timeout = process_settings().close_timeout
        # The pending abort of a close that has not got through yet.
        self._abort_timer: TimerHandle | None = None

    def shutdown(self) -> None:
        self._abort_later(self.close_timeout)
        if self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            return  # the peer's close reply (or the close timer) closes the connection
        super().shutdown()

    def keepalive_timeout(self) -> None:
        # The 1011 and the transport's close sit behind whatever the peer did not read.
        super().keepalive_timeout()
        self._abort_later(self.close_timeout)

    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        self._abort_later(self.close_timeout)

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.close"
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and not self.writable.is_set()
        ):
            # uvicorn waits for the write buffer to drain before it writes the close
            # frame; a peer that stopped reading never drains it.
            try:
                await asyncio.wait_for(self.writable.wait(), self.close_timeout)
            except TimeoutError:
                self._abort()
                raise ClientDisconnected() from None
        await super().send(message)
        if message["type"] == "websocket.close":
            # The close timer's `transport.close()` waits for the buffer as well.
            self._abort_later(2 * self.close_timeout)

    async def run_asgi(self) -> None:
        try:
            await super().run_asgi()
        finally:
            # The app is done; the transport's close may still wait on the peer.
            self._abort_later(2 * self.close_timeout)

    # Called once when the connection ends (set by `handshake.DeadlineHttpProtocol`).
    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        try:
            super().connection_lost(exc)
        finally:
            on_lost, self.on_lost = self.on_lost, None
            if on_lost is not None:
                on_lost()

    def _abort_later(self, delay: float) -> None:
        if self._abort_timer is None and not self.disconnected:
            self._abort_timer = self.loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self.disconnected and self.transport is not None:
            self.transport.abort()
