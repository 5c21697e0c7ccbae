"""Per-user budgets of one process: what a user may make it do, by any door.

The per-connection limits (`limits.py`) stop one socket; a user with several
sockets, or with the HTTP API beside them, used to get each limit again. These
budgets belong to the user and are spent by HTTP and WebSocket alike: one for
what writes messages (send, edit, delete, POST), one for what changes
subscriptions or read positions (join, leave, read), and one for replayed
frames (a join with `since` costs one token per message it replays).

Each process counts on its own, like the other limits. The table is bounded:
an entry is dropped once its user has no connection here and its buckets are
full again (it then holds nothing a fresh entry would not), and when it is
full the least recently used entry goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container

from .config import Settings
from .limits import TokenBucket


class UserBudget:
    """One user's buckets on this process."""

    __slots__ = ("control", "replay", "sends")

    def __init__(self, settings: Settings) -> None:
        # send, edit and delete frames, and POSTed messages.
        self.sends = TokenBucket(settings.send_rate, settings.send_burst)
        # join, leave and read frames.
        self.control = TokenBucket(settings.control_rate, settings.control_burst)
        # Message frames replayed on joins with `since`.
        self.replay = TokenBucket(settings.replay_rate, settings.replay_burst)

    def idle(self) -> bool:
        return self.sends.full() and self.control.full() and self.replay.full()


class Budgets:
    """User id -> budget, bounded, least recently used first."""

    def __init__(self, settings: Settings, max_users: int = 100_000) -> None:
        self.settings = settings
        self.max_users = max_users
        self.users: OrderedDict[int, UserBudget] = OrderedDict()

    def of(self, user: int) -> UserBudget:
        budget = self.users.get(user)
        if budget is None:
            budget = self.users[user] = UserBudget(self.settings)
            if len(self.users) > self.max_users:
                self.users.popitem(last=False)
        else:
            self.users.move_to_end(user)
        return budget

    def prune(self, connected: Container[int]) -> None:
        """Drop the entries of users with no connection here whose buckets are full again."""
        for user in [u for u, b in self.users.items() if u not in connected and b.idle()]:
            del self.users[user]
