"""Bots' webhooks and the outbox of their events.

A part of `Store`: only this package knows asyncpg.
"""

from __future__ import annotations

from ..protocol import (
    Delivery,
)
from ..sql import QUERIES
from .base import ClaimedEvent, EventParts, StoreBase, _user, message_from_row

Q_SET_WEBHOOK = QUERIES["set_webhook"]
Q_DELETE_WEBHOOK = QUERIES["delete_webhook"]
Q_CLAIM_WEBHOOK_EVENTS = QUERIES["claim_webhook_events"]
Q_WEBHOOK_EVENT_PARTS = QUERIES["webhook_event_parts"]
Q_FINISH_WEBHOOK_EVENT = QUERIES["finish_webhook_event"]
Q_RETRY_WEBHOOK_EVENT = QUERIES["retry_webhook_event"]
Q_RELEASE_WEBHOOK_LEASES = QUERIES["release_webhook_leases"]
Q_OLDEST_PENDING_WEBHOOK_EVENT = QUERIES["oldest_pending_webhook_event"]
Q_WEBHOOK_DELIVERIES = QUERIES["webhook_deliveries"]


class WebhookQueries(StoreBase):
    """Bots' webhooks and the outbox of their events."""

    # -- webhooks (issue 15) ------------------------------------------------

    async def set_webhook(self, bot: int, url: str, secret: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_SET_WEBHOOK, bot, url, secret)

    async def delete_webhook(self, bot: int) -> bool:
        """Remove the bot's webhook and fail its pending events; False if it had none."""
        async with self._conn() as conn:
            return await conn.fetchval(Q_DELETE_WEBHOOK, bot) is not None

    async def claim_webhook_events(
        self, limit: int, lease: str, seconds: float
    ) -> list[ClaimedEvent]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_CLAIM_WEBHOOK_EVENTS, limit, seconds, lease)
        return [
            ClaimedEvent(
                r["id"], r["bot_id"], r["room_id"], r["message_id"], r["attempts"], r["age"]
            )
            for r in rows
        ]

    async def webhook_event_parts(self, bot: int, message: int) -> EventParts | None:
        """None if the bot or the message is gone (deleted with their room or account)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q_WEBHOOK_EVENT_PARTS, bot, message)
        if row is None:
            return None
        return EventParts(row["url"], row["secret"], _user(row, "bot_"), message_from_row(row))

    async def finish_webhook_event(
        self, event: int, lease: str, status: str, http: int | None, error: str | None
    ) -> float | None:
        """Mark an event delivered or failed; its age in seconds, or None if the lease was lost."""
        async with self._conn() as conn:
            age = await conn.fetchval(Q_FINISH_WEBHOOK_EVENT, event, lease, status, http, error)
        return None if age is None else float(age)

    async def retry_webhook_event(
        self, event: int, lease: str, delay: float, give_up: float, http: int | None, error: str
    ) -> str | None:
        """Schedule the next attempt (or fail the event past `give_up`); the status it is
        left in, or None if the lease was lost."""
        async with self._conn() as conn:
            status = await conn.fetchval(
                Q_RETRY_WEBHOOK_EVENT, event, lease, delay, give_up, http, error
            )
        return None if status is None else str(status)

    async def release_webhook_leases(self, lease: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q_RELEASE_WEBHOOK_LEASES, lease)

    async def oldest_pending_webhook_event(self) -> float:
        """Seconds since the oldest pending event was written (0 when none is pending)."""
        async with self._conn() as conn:
            return float(await conn.fetchval(Q_OLDEST_PENDING_WEBHOOK_EVENT))

    async def webhook_deliveries(self, bot: int, limit: int) -> list[Delivery]:
        async with self._conn() as conn:
            rows = await conn.fetch(Q_WEBHOOK_DELIVERIES, bot, limit)
        return [
            Delivery(
                id=r["id"],
                room=r["room_id"],
                message_id=r["message_id"],
                status=r["status"],
                attempts=r["attempts"],
                last_status=r["last_status"],
                last_error=r["last_error"],
            )
            for r in rows
        ]
