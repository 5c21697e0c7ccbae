"""Outgoing webhooks for bots: the owner's use cases, the address rule and the signature.

The owner sets (`PUT`), removes (`DELETE`) and reads the deliveries of a bot's
webhook. The address rule (no loopback, private, link-local, multicast or
other non-global address unless `WEBHOOK_ALLOW_PRIVATE`) is checked here when
the URL is set, and again by the delivery worker (`deliveries.py`) for the very
address it connects to, since a name can resolve elsewhere by then (DNS
rebinding). The events themselves are written by the message inserts
(`sql/queries/messages.sql`), in the statement that stores the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from urllib.parse import urlsplit

from .errors import forbidden, invalid, not_found
from .protocol import Delivery, User, Webhook
from .store import Store

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    """A signing secret: 256 random bits as URL-safe text."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Chat-Signature` value: HMAC-SHA256 of `TIMESTAMP.BODY` keyed with the secret."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL; `invalid` for anything but http(s) with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid("the webhook URL is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise invalid("the webhook URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise invalid("the webhook URL has no host")
    if any(c.isspace() for c in url):
        raise invalid("the webhook URL must not contain white space")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def forbidden_address(address: IpAddress) -> bool:
    """Whether an address is one a webhook may not reach: anything but a global unicast one.

    `is_global` is false for loopback, private, link-local, shared (CGNAT),
    reserved and unspecified ranges; multicast is checked apart since some
    multicast ranges count as global. An IPv4-mapped IPv6 address is judged as
    the IPv4 address it carries.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_multicast or not address.is_global


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address `host` resolves to (the host itself when it is an address)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[IpAddress] = []
    for info in infos:
        # The address without an IPv6 scope id ("fe80::1%eth0"), which ip_address refuses.
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


async def allowed_addresses(host: str, port: int, allow_private: bool) -> list[IpAddress]:
    """The addresses of `host` a webhook may connect to; `invalid` if there is none.

    Every address must pass, not just one: a name that resolves to a public and a
    private address could be connected to either.
    """
    addresses = await resolve(host, port)
    if not addresses:
        raise invalid(f"the webhook host {host!r} does not resolve")
    if not allow_private and any(forbidden_address(a) for a in addresses):
        raise invalid(
            "the webhook URL's host is or resolves to a loopback, private, link-local "
            "or multicast address"
        )
    return addresses


class Webhooks:
    """The owner's control of a bot's webhook."""

    def __init__(self, store: Store, allow_private: bool) -> None:
        self.store = store
        # WEBHOOK_ALLOW_PRIVATE: the address rule is lifted (tests, a bot beside the server).
        self.allow_private = allow_private

    async def _owned_bot(self, owner: User, username: str) -> User:
        found = await self.store.bot_by_username(username)
        if found is None:
            raise not_found(f"no bot named {username!r}")
        bot, owner_id = found
        if owner_id != owner.id:
            raise forbidden("only the bot's owner manages its webhook")
        return bot

    async def set(self, owner: User, username: str, url: str) -> Webhook:
        """Point the bot's webhook at `url` with a new secret."""
        bot = await self._owned_bot(owner, username)
        _, host, port = parse_url(url)
        await allowed_addresses(host, port, self.allow_private)
        secret = new_secret()
        await self.store.set_webhook(bot.id, url, secret)
        return Webhook(url=url, secret=secret)

    async def delete(self, owner: User, username: str) -> None:
        bot = await self._owned_bot(owner, username)
        if not await self.store.delete_webhook(bot.id):
            raise not_found("this bot has no webhook")

    async def deliveries(self, owner: User, username: str, limit: int) -> list[Delivery]:
        bot = await self._owned_bot(owner, username)
        return await self.store.webhook_deliveries(bot.id, limit)
