"""The one error family of the server, with its HTTP statuses and close codes.

Every failure a client can cause is a `ChatError` carrying one of the contract's
codes; `app.py` turns it into an HTTP error body or a WebSocket `error` frame.
"""

from __future__ import annotations

from typing import Literal

Code = Literal[
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "too_large",
    "unavailable",
    "internal",
]

HTTP_STATUS: dict[str, int] = {
    "invalid": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "too_large": 413,
    "unavailable": 503,
    "internal": 500,
}


class ChatError(Exception):
    """A failure with a contract code and a message meant for the client."""

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        # One of the contract's codes.
        self.code: Code = code
        # Plain words for the client; never a secret.
        self.message = message
        # HTTP status, when it differs from the code's usual one (400 for non-JSON).
        self.status = status if status is not None else HTTP_STATUS[code]
        # Seconds before a retry can succeed, sent as HTTP `Retry-After`, when known.
        self.retry_after = retry_after


def invalid(message: str, *, status: int | None = None) -> ChatError:
    return ChatError("invalid", message, status=status)


def forbidden(message: str = "you are not a member of this room") -> ChatError:
    return ChatError("forbidden", message)


def not_found(message: str) -> ChatError:
    return ChatError("not_found", message)


def unavailable(message: str = "a backing service is unavailable; retry") -> ChatError:
    return ChatError("unavailable", message)


class Close:
    """WebSocket close codes the server uses, each with its meaning for clients."""

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009  # a frame over the size limit
    INTERNAL = 1011  # no answer to pings, or a server fault
    RESTART = 1012  # server shutting down, or it lost track of a room: resume with since
    TRY_AGAIN = 1013  # the client read too slowly for its send queue: resume with since
    UNAUTHORIZED = 4001  # bad or revoked token, or no hello in time: do not reconnect as is
    RATE_LIMITED = 4008  # too many refused frames: do not reconnect until fixed
    TOO_MANY = 4029  # too many connections for this user: retry later


# After these the contract says: do not reconnect until the cause is fixed. The SDK
# imports this; the browser client gets both from /static/js/closes.js (app.py).
FINAL_CLOSES = frozenset({Close.UNAUTHORIZED, Close.RATE_LIMITED})


def close_codes() -> dict[str, int]:
    """Every close code by name, for clients that cannot import this module."""
    return {name: value for name, value in vars(Close).items() if name.isupper()}
