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
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class ClosingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; shutdown leaves a closing handshake to finish."""

    # Called once when the connection ends (set by `handshake.DeadlineHttpProtocol`).
    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            on_lost, self.on_lost = self.on_lost, None
            if on_lost is not None:
                on_lost()

    def shutdown(self) -> None:
        if self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            return  # the peer's close reply (or the close timer) closes the connection
        super().shutdown()
