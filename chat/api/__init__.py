"""The HTTP API, one module per concern; `ROUTES` is every route of them, in order.

Each module ends with its own `ROUTES`: a new feature adds a module here and
its routes to this list.
"""

from __future__ import annotations

from . import accounts, conversations, messages, moderation, ops, rooms, search, webhooks

ROUTES = [
    *accounts.ROUTES,
    *webhooks.ROUTES,
    *moderation.ROUTES,
    *rooms.ROUTES,
    *messages.ROUTES,
    *conversations.ROUTES,
    *search.ROUTES,
    *ops.ROUTES,
]
