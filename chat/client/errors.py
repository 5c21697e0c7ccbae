"""The client's errors: a request refused, the connection stopped, the client closed."""

from __future__ import annotations

from ..errors import FINAL_CLOSES, Close

# What to do after each close code that forbids reconnecting as is (the server's list).
FATAL_CLOSES: dict[int, str] = {
    Close.UNAUTHORIZED: "the token is invalid or was revoked (or no hello was sent in time); "
    "log in again",
    Close.RATE_LIMITED: "too many sends, edits or deletes were refused as rate limited; slow down",
}
assert FATAL_CLOSES.keys() == FINAL_CLOSES, "advice for every final close code"


class ClientError(Exception):
    """Every error this client raises on purpose."""


class ServerError(ClientError):
    """The server answered a request with an error (a WebSocket `error` frame or an HTTP error)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        where = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{where}{code}: {message}")
        # One of the contract's codes: invalid, unauthorized, forbidden, not_found, ...
        self.code = code
        # The server's explanation, in plain words.
        self.message = message
        # The HTTP status, or None for a WebSocket reply.
        self.status = status


class ConnectionStopped(ClientError):
    """The server closed the connection in a way that forbids reconnecting (4001, 4008),
    or refused the handshake outright; the client has stopped."""

    def __init__(self, code: int, reason: str, advice: str) -> None:
        said = f" ({reason})" if reason else ""
        super().__init__(
            f"the server closed the connection with code {code}{said}: {advice}. "
            "The client does not reconnect after this."
        )
        # The WebSocket close code (or the HTTP status of a refused handshake).
        self.code = code
        # The reason the server gave, possibly empty.
        self.reason = reason


class ClientClosed(ClientError):
    """The client was closed with `close()`; make a new one to go on."""

    def __init__(self) -> None:
        super().__init__("the client is closed: create a new ChatClient to connect again")
