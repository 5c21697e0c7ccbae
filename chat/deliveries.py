"""The webhook delivery worker: every process runs one, all sharing the outbox in PostgreSQL.

An event belongs to a lane, its (bot, room); only a lane's head (its pending
event of lowest seq) is ever attempted, so a lane is delivered in seq order
with one event in flight. The worker claims due heads with
`FOR UPDATE SKIP LOCKED` in a short transaction and marks each with a *lease*
(`lease`, `leased_until`) rather than holding the row lock over the HTTP call:
a lock would keep a transaction, and a pooled connection, open for up to the
10 s timeout per delivery, while a lease costs nothing between the claim and
the answer, and the lease of a process that was SIGKILLed simply runs out
(`WEBHOOK_LEASE`) for another process to take the event over. A lease that
ran out while its holder was still waiting (it cannot, as the lease outlasts
the timeout, but clocks and pauses happen) finishes nothing: every update is
conditioned on the lease that claimed the event. Delivery is at least once.

Memory does not grow with a backlog: a claim reads at most as many heads as
there are free slots (`WEBHOOK_CONCURRENCY`), and a webhook that is down only
has its lanes' heads waiting for their retry in PostgreSQL, not in here. A
lane waiting for a retry holds up only itself.

Each attempt resolves the URL's host again and connects to an address that
passes the rule of `webhooks.py` (the request goes to that address, with the
name in `Host` and in TLS SNI), so DNS that changed since the URL was set
cannot turn a webhook into a request to the inside. Redirects are not
followed, and at most `WEBHOOK_MAX_RESPONSE_BYTES` of an answer are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec

from . import metrics
from .config import Settings
from .errors import ChatError
from .protocol import FrameError, User, WebhookAnswer, WebhookEvent, check_body, encode
from .store import ClaimedEvent, Store
from .webhooks import forbidden_address, parse_url, resolve, sign

log = logging.getLogger("chat.deliveries")

# How the bot's reply is sent: (bot, room, body, client_id, thread) -> stored, fanned out.
SendReply = Callable[[User, int, str, str, int | None], Awaitable[object]]

# Seconds between refreshes of the oldest-pending gauge (a query over all processes' events).
GAUGE_INTERVAL = 5.0

_answer_decoder = msgspec.json.Decoder(WebhookAnswer)


class Retry(Exception):
    """This attempt failed in a way worth retrying: a timeout, a connection error, 429, 5xx."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class Fail(Exception):
    """This event fails for good: another 4xx, a refused address, its message gone."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 1 s doubling, capped."""
    exponent = min(attempts - 1, 60)  # 2**60 seconds is past any cap
    return float(min(settings.webhook_retry_base * 2**exponent, settings.webhook_retry_max))


class DeliveryWorker:
    """Claims due webhook events and delivers them, a bounded number at a time."""

    def __init__(self, settings: Settings, store: Store, send_reply: SendReply) -> None:
        self.settings = settings
        self.store = store
        self.send_reply = send_reply
        # This process's claims carry this lease id; a restarted process is another one.
        self.lease = secrets.token_hex(8)
        # One pool for every webhook: keep-alive per address, bounded by the concurrency.
        # trust_env off: no proxy from the environment may carry the requests elsewhere.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.webhook_timeout),
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=settings.webhook_concurrency,
                max_keepalive_connections=settings.webhook_concurrency,
            ),
            trust_env=False,
        )
        # Deliveries in flight, at most WEBHOOK_CONCURRENCY.
        self.inflight: set[asyncio.Task[None]] = set()
        # Set when a slot frees or a lane moves on, to claim again without waiting a poll.
        self.wake = asyncio.Event()
        # When the oldest-pending gauge was last refreshed (monotonic seconds).
        self._gauged = 0.0

    async def run(self) -> None:
        """Claim and deliver until cancelled; PostgreSQL being away only pauses it."""
        try:
            while True:
                self.wake.clear()
                try:
                    await self._claim()
                    await self._gauge()
                except ChatError:
                    pass  # PostgreSQL is away: the next poll tries again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.webhook_poll_interval)
        finally:
            for task in list(self.inflight):
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)

    async def close(self) -> None:
        """Hand back this process's claims (due at once) and close the HTTP pool."""
        with contextlib.suppress(ChatError):
            await self.store.release_webhook_leases(self.lease)
        await self.client.aclose()

    async def _claim(self) -> None:
        free = self.settings.webhook_concurrency - len(self.inflight)
        if free <= 0:
            return
        claimed = await self.store.claim_webhook_events(
            free, self.lease, self.settings.webhook_lease
        )
        for event in claimed:
            task = asyncio.ensure_future(self._deliver(event))
            self.inflight.add(task)
            task.add_done_callback(self._done)
        metrics.WEBHOOK_IN_FLIGHT.set(len(self.inflight))

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        metrics.WEBHOOK_IN_FLIGHT.set(len(self.inflight))
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed", exc_info=task.exception())
        self.wake.set()

    async def _gauge(self) -> None:
        now = time.monotonic()
        if now - self._gauged >= GAUGE_INTERVAL:
            self._gauged = now
            metrics.WEBHOOK_OLDEST_PENDING.set(await self.store.oldest_pending_webhook_event())

    async def _deliver(self, event: ClaimedEvent) -> None:
        """One attempt at one event, and its outcome written under this process's lease.

        If PostgreSQL is away, the outcome cannot be written: the lease runs out and
        the event is attempted again (at least once, never lost).
        """
        try:
            await self._attempt_and_record(event)
        except ChatError as exc:
            log.warning(
                "webhook outcome not recorded; the lease will run out",
                extra={"event": event.id, "error": exc.code},
            )

    async def _attempt_and_record(self, event: ClaimedEvent) -> None:
        try:
            status = await self._attempt(event)
        except Retry as exc:
            delay = retry_delay(self.settings, event.attempts)
            left = await self.store.retry_webhook_event(
                event.id, self.lease, delay, self.settings.webhook_give_up, exc.status, exc.error
            )
            outcome = "failed" if left == "failed" else "retried"
            metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
            if left == "failed":
                metrics.WEBHOOK_LAG.observe(event.age)
            log.info(
                "webhook attempt failed",
                extra={"event": event.id, "attempts": event.attempts, "status": exc.status},
            )
            return
        except Fail as exc:
            age = await self.store.finish_webhook_event(
                event.id, self.lease, "failed", exc.status, exc.error
            )
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            if age is not None:
                metrics.WEBHOOK_LAG.observe(age)
            log.info("webhook event failed", extra={"event": event.id, "status": exc.status})
            return
        http, error = status
        age = await self.store.finish_webhook_event(event.id, self.lease, "delivered", http, error)
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        if age is not None:
            metrics.WEBHOOK_LAG.observe(age)

    async def _attempt(self, event: ClaimedEvent) -> tuple[int, str | None]:
        """POST the event; (HTTP status, note) on a 2xx, else `Retry` or `Fail`."""
        parts = await self.store.webhook_event_parts(event.bot, event.message)
        if parts is None:
            raise Fail(None, "the message or the bot no longer exists")
        if parts.url is None or parts.secret is None:
            raise Fail(None, "the webhook was removed")
        room = await self.store.room(event.room, parts.bot.id)
        if room is None:
            raise Fail(None, "the room no longer exists")
        body = encode(
            WebhookEvent(
                event="message", delivery=event.id, bot=parts.bot, room=room, message=parts.message
            )
        )
        status, answer = await self._post(parts.url, parts.secret, event.id, body)
        if status == 429 or status >= 500:
            raise Retry(status, f"HTTP {status}")
        if not 200 <= status < 300:
            # Another 4xx fails at once, as the contract says; so does a 3xx, since
            # redirects are not followed and the next attempt would be one too.
            raise Fail(status, f"HTTP {status}")
        # A reply to a message of a thread goes to the same thread.
        return status, await self._reply(event, parts.bot, answer, parts.message.thread)

    async def _post(self, url: str, secret: str, delivery: int, body: bytes) -> tuple[int, bytes]:
        """Send one request to an address that passes the rule; (status, answer read)."""
        scheme, host, port = parse_url(url)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "chat-webhooks/1",
            "X-Chat-Delivery": str(delivery),
            "X-Chat-Timestamp": str(timestamp),
            "X-Chat-Signature": sign(secret, timestamp, body),
        }
        limit = self.settings.webhook_max_response_bytes
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                addresses = await resolve(host, port)
                if not addresses:
                    raise Retry(None, "the webhook host does not resolve")
                if not self.settings.webhook_allow_private and any(
                    forbidden_address(a) for a in addresses
                ):
                    # DNS changed since the URL was set (or the rule was lifted then).
                    raise Fail(None, "refused: the host resolves to a forbidden address")
                # The request goes to the checked address; the name stays in Host and SNI.
                target = httpx.URL(url).copy_with(host=str(addresses[0]))
                original = httpx.URL(url)
                headers["Host"] = original.netloc.decode("ascii")
                extensions = {"sni_hostname": host} if scheme == "https" else {}
                request = self.client.build_request(
                    "POST", target, content=body, headers=headers, extensions=extensions
                )
                response = await self.client.send(request, stream=True)
                try:
                    # Decoded (a gzip answer is read as JSON), and cut off at the limit
                    # as it is decoded, so a compressed bomb costs no more than that.
                    answer = bytearray()
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) > limit:
                            break
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise Retry(None, f"no answer within {self.settings.webhook_timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise Retry(None, f"connection error: {type(exc).__name__}") from None
        except OSError as exc:
            raise Retry(None, f"connection error: {type(exc).__name__}") from None
        return response.status_code, bytes(answer[: limit + 1])

    async def _reply(
        self, event: ClaimedEvent, bot: User, answer: bytes, thread: int | None
    ) -> str | None:
        """Send the answer's `reply` as the bot, once per event; a note for `last_error`.

        The reply's client_id is `webhook-<delivery id>`, so that the idempotent send
        stores it once however often the event is delivered. It is sent before the
        event is marked delivered: a crash between the two redelivers the event, and
        the repeated reply is the first one again.
        """
        if not answer or len(answer) > self.settings.webhook_max_response_bytes:
            return None if not answer else "the answer was too long to read for a reply"
        try:
            reply = _answer_decoder.decode(answer).reply
        except msgspec.DecodeError:
            return None  # any answer but {"reply": TEXT} is only an acknowledgement
        if reply is None:
            return None
        try:
            check_body(reply, "reply")
        except FrameError as exc:
            return f"reply refused: {exc}"
        try:
            await self.send_reply(bot, event.room, reply, f"webhook-{event.id}", thread)
        except ChatError as exc:
            if exc.code == "unavailable":
                raise Retry(None, "the reply could not be stored yet") from None
            return f"reply refused: {exc.message}"
        return None
