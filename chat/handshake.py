"""Deadlines on each HTTP request's headers and body, and a cap on connections per address.

uvicorn times out idle keep-alive connections but not a request whose headers
or body arrive one byte at a time, or never (slowloris): each would hold a
connection, and a slot of LIMIT_CONCURRENCY, for ever. This protocol class arms
a timer when a connection opens and when each request begins
(`HANDSHAKE_TIMEOUT`), re-arms it for the body once the headers are complete
(`BODY_TIMEOUT`), and closes the connection if the request is not whole by
then. A WebSocket upgrade has no body: its timer stops with its headers.

It also counts the open connections of each client address in this process,
once a connection's first request has its headers in; beyond
`MAX_CONNECTIONS_PER_ADDRESS` that request gets 429 and the connection is
closed, so one address cannot take every slot. The address is the one the app
sees: behind a proxy that uvicorn trusts (`FORWARDED_ALLOW_IPS`), the client's
from `X-Forwarded-For`, not the proxy's, which would otherwise cap everyone
together. Loopback is exempt outside production (`limits.exempt`).
`python -m chat serve` passes this class to uvicorn as the HTTP protocol.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .closing import ClosingWebSocketProtocol
from .config import process_settings
from .limits import exempt
from .protocol import ErrorBody, ErrorOut, encode

_TOO_MANY_BODY = encode(
    ErrorOut(error=ErrorBody(code="rate_limited", message="too many connections from this address"))
)
_TOO_MANY_HEAD = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_TOO_MANY_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]
# The same answer written straight to the socket, for a WebSocket upgrade (no ASGI cycle).
_TOO_MANY_RAW = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    + b"".join(name + b": " + value + b"\r\n" for name, value in _TOO_MANY_HEAD)
    + b"\r\n"
    + _TOO_MANY_BODY
)

# Open connections per counted client address, in this process.
_open: dict[str, int] = {}


class Proxies:
    """uvicorn's rule for whose `X-Forwarded-For` to believe (`FORWARDED_ALLOW_IPS`)."""

    def __init__(self, allowed: str | list[str]) -> None:
        items = [i.strip() for i in allowed.split(",")] if isinstance(allowed, str) else allowed
        # "*": every peer is a trusted proxy.
        self.everyone = "*" in items
        # The trusted addresses and networks (an address is a network of one).
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in items:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                continue  # a Unix socket name or a typo: trusts no IP peer

    def trusted(self, host: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address as uvicorn gives it to the app: each proxy appends the
        address it heard from, so the client is the last one no trusted proxy added."""
        if forwarded_for is None or not self.trusted(peer):
            return peer
        hosts = [_host(h) for h in forwarded_for.split(",") if h.strip()]
        if not hosts:
            return peer
        if not self.everyone:
            for host in reversed(hosts):
                if not self.trusted(host):
                    return host
        return hosts[0]


def _host(entry: str) -> str:
    """The address of an X-Forwarded-For entry, without a port or IPv6 brackets."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


@functools.cache
def _proxies(allowed: str) -> Proxies:
    # Parsed once per process, not per connection.
    return Proxies(allowed)


async def _too_many(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app that answers every request of a connection over the address's cap."""
    await send({"type": "http.response.start", "status": 429, "headers": _TOO_MANY_HEAD})
    await send({"type": "http.response.body", "body": _TOO_MANY_BODY})


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request deadlines and a per-address connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = process_settings()
        # The timer that closes the connection if the headers or the body are late.
        self._deadline: asyncio.TimerHandle | None = None
        # Seconds for a request's headers, then for its body (HANDSHAKE_TIMEOUT, BODY_TIMEOUT).
        self._header_limit = settings.handshake_timeout
        self._body_limit = settings.body_timeout
        # MAX_CONNECTIONS_PER_ADDRESS, and whether loopback counts too (production).
        self._per_address = settings.max_connections_per_address
        self._production = settings.production
        # Whose X-Forwarded-For names the client (None: uvicorn's proxy headers are off).
        allowed = self.config.forwarded_allow_ips
        self._proxies = (
            _proxies(allowed if isinstance(allowed, str) else ",".join(allowed))
            if self.config.proxy_headers
            else None
        )
        # Whether this connection's address has been decided (at its first request).
        self._placed = False
        # The address this connection is counted under in `_open`, if it is.
        self._counted: str | None = None
        # Over the address's cap: its request gets 429, then the connection closes.
        self._refused = False

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

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
        self._arm(self._header_limit)

    def _place(self) -> None:
        """Count the connection under its client's address, or refuse it over the cap.

        Done once the first request's headers are in: a proxied client's address is
        only known from them, and answering 429 before the client has sent its
        request could reset the connection before it reads the answer.
        """
        self._placed = True
        if self.client is None:
            return  # a Unix socket: no address
        address = self.client[0]
        if self._proxies is not None:
            forwarded = [v for k, v in self.headers if k == b"x-forwarded-for"]
            if forwarded:
                address = self._proxies.client(address, b",".join(forwarded).decode("latin-1"))
        if exempt(address, self._production):
            return
        count = _open.get(address, 0)
        if count >= self._per_address:
            self._refused = True
            self.app = _too_many
            return
        _open[address] = count + 1
        self._counted = address

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._header_limit)

    def on_headers_complete(self) -> None:
        if not self._placed:
            self._place()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._disarm()  # a WebSocket: no body; its own pings watch it from here
        else:
            self._arm(self._body_limit)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._refused:
            self._disarm()
            self.transport.write(_TOO_MANY_RAW)
            self.transport.close()
            return
        super().handle_websocket_upgrade()
        # The WebSocket protocol owns the connection now, and hears of its end: it
        # keeps the connection counted against its address until then.
        protocol = self.transport.get_protocol()
        if isinstance(protocol, ClosingWebSocketProtocol):
            protocol.on_lost = self._release
        else:
            self._release()

    def _release(self) -> None:
        if self._counted is not None:
            left = _open.get(self._counted, 1) - 1
            if left > 0:
                _open[self._counted] = left
            else:
                _open.pop(self._counted, None)
            self._counted = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)
