"""PostgreSQL: the asyncpg pool and every query of `sql/queries`, returning protocol types.

Only this package knows asyncpg. A lost or refused connection, a timed-out
command or a server shutting down becomes `ChatError("unavailable")`, so a
request fails cleanly while PostgreSQL is away and the pool reconnects by
itself once it is back. Constraint violations are matched by exception class.

With `DATABASE_READ_URL`, reads that may lag (history pages here; the
directory, search and thread lists through `Store.read`) go to a streaming
replica while `Replica` says it is usable: up, and its replay at most
`READ_MAX_LAG` behind, measured every second by comparing LSNs, never per
query. A replica that is behind, down or failing is bypassed at once for the
primary; nothing waits for it. Everything that must be current (sends, acks,
gap repair, replay after `join`, access checks) always reads the primary.
"""

from __future__ import annotations

from .accounts import AccountQueries
from .base import (
    CHECK_ERRORS,
    LAG_CHECK_INTERVAL,
    MAX_EMOJI,
    REPLICA_TIMEOUT,
    SEARCH_REJECTED,
    SQLSTATE_BANNED,
    UNAVAILABLE_ERRORS,
    Access,
    ClaimedEvent,
    Draft,
    EventParts,
    Replica,
    StoreBase,
    message_from_row,
    reactions_from,
    replay_lag,
)
from .conversations import ConversationQueries
from .messages import MessageQueries
from .moderation import ModerationQueries
from .rooms import RoomQueries
from .webhooks import WebhookQueries


class Store(
    AccountQueries,
    RoomQueries,
    MessageQueries,
    ConversationQueries,
    WebhookQueries,
    ModerationQueries,
):
    """The message store: every read and write of PostgreSQL goes through here."""


__all__ = [
    "CHECK_ERRORS",
    "LAG_CHECK_INTERVAL",
    "MAX_EMOJI",
    "REPLICA_TIMEOUT",
    "SEARCH_REJECTED",
    "SQLSTATE_BANNED",
    "UNAVAILABLE_ERRORS",
    "Access",
    "ClaimedEvent",
    "Draft",
    "EventParts",
    "Replica",
    "Store",
    "StoreBase",
    "message_from_row",
    "reactions_from",
    "replay_lag",
]
