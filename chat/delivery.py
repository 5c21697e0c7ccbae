"""The ordered-delivery core, without I/O: which frame goes where, and when to read PostgreSQL.

PostgreSQL is the truth and the broker is a fast path, so frames may arrive
late, twice, out of order or never. Two pieces of plain state turn that into
"every connection gets each seq once, in order":

- `RoomLine`, one per room this process holds: the newest seq handed to the
  room's connections, the frames that arrived ahead of a gap, and the newest
  seq PostgreSQL is known to have. Live frames, rows read back from
  PostgreSQL and the periodic reconcile go in; out come the frames to hand on,
  in seq order, and whether the gap must be filled from PostgreSQL.
- `Position`, one per connection and joined room: the newest seq that
  connection was given, whether it is being replayed from PostgreSQL (the
  live path skips it meanwhile), and the frames without a seq (edits, typing,
  presence) held until the replay ends, so that after a join the order stays
  ok, presence, replay, live.

Nothing here awaits, reads a socket or a database: `node.py` does the I/O
these decisions ask for, and `tests/test_delivery.py` drives them with plain
data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# A frame's JSON text, encoded once and handed as-is to every recipient.
Frame = str


@dataclass(slots=True)
class Arrival:
    """What a live frame set off."""

    # Frames to hand to the room's connections now, in seq order.
    deliver: list[tuple[int, Frame]] = field(default_factory=list)
    # A gap opened behind this frame: read what is missing from PostgreSQL.
    fill: bool = False
    # Too much is held behind a gap: give the room up (its clients resume with since).
    lost: bool = False


class RoomLine:
    """The order of one room's message frames in this process."""

    __slots__ = ("delivered", "pending", "pending_limit", "target")

    def __init__(self, pending_limit: int) -> None:
        # The newest seq handed to the room's connections; None until the first
        # join has read the room's newest seq from PostgreSQL after subscribing.
        self.delivered: int | None = None
        # Frames that arrived ahead of `delivered + 1`, by seq.
        self.pending: dict[int, Frame] = {}
        # How many frames may wait behind a gap before the room is given up.
        self.pending_limit = pending_limit
        # The newest seq PostgreSQL is known to have: a fill reads at least this far.
        self.target = 0

    def start(self, last: int) -> list[tuple[int, Frame]]:
        """A join read `last`, the room's newest seq; the first one fixes the starting point.

        Returns held frames that are now next in line.
        """
        if self.delivered is None:
            self.delivered = last
        return self._release()

    def live(self, seq: int, frame: Frame) -> Arrival:
        """A message frame from the broker (or stored by this process)."""
        delivered = self.delivered
        if delivered is not None and seq <= delivered:
            return Arrival()  # a repeat, or a fill got there first
        if delivered is None or seq > delivered + 1:
            self.pending[seq] = frame
            if len(self.pending) > self.pending_limit:
                self.pending.clear()
                return Arrival(lost=True)
            # Before the starting point is known nothing is missing yet.
            return Arrival(fill=delivered is not None)
        return Arrival(self._advance(seq, frame))

    def fill_from(self) -> tuple[list[tuple[int, Frame]], int | None]:
        """One round of a fill: held frames now next in line, and where to read from.

        The second item is the seq after which PostgreSQL must be read, or None
        when nothing is known to be missing (the fill is over).
        """
        released = self._release()
        if self.delivered is None:
            return released, None
        want = max(self.target, max(self.pending, default=0))
        return released, (self.delivered if want > self.delivered else None)

    def fetched(self, seq: int, frame: Frame) -> list[tuple[int, Frame]]:
        """A row a fill read from PostgreSQL: handed on if next (a live frame may have won)."""
        if self.delivered is None or seq != self.delivered + 1:
            return []
        return self._advance(seq, frame)

    def known(self, newest: int) -> bool:
        """PostgreSQL's newest seq, from a reconcile; True if the room is behind it."""
        self.target = max(self.target, newest)
        return self.delivered is not None and newest > self.delivered

    def _advance(self, seq: int, frame: Frame) -> list[tuple[int, Frame]]:
        """`seq` is next: it goes, then whatever was waiting right behind it."""
        out = [(seq, frame)]
        self.delivered = seq
        while (following := self.pending.pop(seq + 1, None)) is not None:
            seq += 1
            out.append((seq, following))
            self.delivered = seq
        return out

    def _release(self) -> list[tuple[int, Frame]]:
        """Drop held frames already delivered; hand on those now next in line."""
        if self.delivered is None or not self.pending:
            return []
        for seq in [s for s in self.pending if s <= self.delivered]:
            del self.pending[seq]
        following = self.pending.pop(self.delivered + 1, None)
        if following is None:
            return []
        return self._advance(self.delivered + 1, following)


class Offer(enum.Enum):
    """What a connection does with a live message frame."""

    SEND = "send"  # the next one: queue it
    SKIP = "skip"  # had it already, or a replay will bring it
    BEHIND = "behind"  # a gap: a replay from PostgreSQL must start


class Position:
    """One connection's place in one room it joined."""

    __slots__ = ("held", "last", "replaying")

    def __init__(self, last: int) -> None:
        # The newest seq this connection has been given (or skipped past).
        self.last = last
        # Being replayed from PostgreSQL: the live path leaves it alone meanwhile.
        # A join starts with a replay (which may find nothing to do).
        self.replaying = True
        # Frames without a seq that came during the replay: (frame, ephemeral).
        self.held: list[tuple[Frame, bool]] = []

    def offer(self, seq: int) -> Offer:
        """A live message frame of the room; `BEHIND` marks the position as replaying."""
        if self.replaying:
            return Offer.SKIP
        if seq == self.last + 1:
            self.last = seq
            return Offer.SEND
        if seq <= self.last:
            return Offer.SKIP
        self.replaying = True
        return Offer.BEHIND

    def caught_up(self, delivered: int | None) -> bool:
        """Whether a replay has reached the room's live position."""
        return delivered is None or self.last >= delivered

    def replayed(self, seq: int) -> bool:
        """A row of the replay: True if it is this connection's next (it then counts as given).

        False when the live path or another replay already moved the position.
        """
        if seq != self.last + 1:
            return False
        self.last = seq
        return True

    def skip_to(self, seq: int) -> None:
        """PostgreSQL has nothing after `last` up to `seq` (deleted rooms, a reset): jump."""
        self.last = max(self.last, seq)

    def restart(self, last: int) -> None:
        """Joined again: replay from `last` (a replay under way carries on from there)."""
        self.last = last
        self.replaying = True

    def hold(self, frame: Frame, ephemeral: bool, limit: int) -> bool:
        """Keep a frame without a seq until the replay ends; False if too much is held.

        Ephemeral frames are dropped first when `limit` is reached.
        """
        if len(self.held) >= limit:
            if ephemeral:
                return True
            self.held = [item for item in self.held if not item[1]]
            if len(self.held) >= limit:
                return False
        self.held.append((frame, ephemeral))
        return True

    def finish(self) -> list[tuple[Frame, bool]]:
        """The replay is over: back to live, and the held frames to queue, in order."""
        self.replaying = False
        held, self.held = self.held, []
        return held
