"""The ordered-delivery core with plain data: no PostgreSQL, Redis or socket.

`RoomLine` and `Position` are driven the way the node drives them; "the
database" here is a list of frames by seq, and a fill reads from it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chat.delivery import Offer, Position, RoomLine


def frame(seq: int) -> str:
    return f"m{seq}"


def seqs(pairs: list[tuple[int, str]]) -> list[int]:
    return [seq for seq, _ in pairs]


def fill(line: RoomLine, stored: int) -> list[int]:
    """Run a fill to the end against a database holding seqs 1..stored; what it handed on."""
    out: list[int] = []
    while True:
        released, after = line.fill_from()
        out += seqs(released)
        if after is None:
            return out
        rows = list(range(after + 1, stored + 1))
        if not rows:
            return out
        for seq in rows:
            out += seqs(line.fetched(seq, frame(seq)))


def test_in_order_frames_go_straight_through() -> None:
    """Each next seq is handed on at once, with no fill."""
    line = RoomLine(pending_limit=10)
    assert line.start(0) == []
    for seq in (1, 2, 3):
        arrival = line.live(seq, frame(seq))
        assert arrival.deliver == [(seq, frame(seq))]
        assert not arrival.fill and not arrival.lost


def test_out_of_order_arrival_waits_for_the_missing_one() -> None:
    """A frame ahead of a gap is held and asks for a fill; the missing one releases both."""
    line = RoomLine(pending_limit=10)
    line.start(0)
    early = line.live(2, frame(2))
    assert early.deliver == [] and early.fill
    assert seqs(line.live(1, frame(1)).deliver) == [1, 2]
    assert line.pending == {}


def test_a_repeat_is_dropped() -> None:
    """A frame at or below the delivered seq is handed on never again."""
    line = RoomLine(pending_limit=10)
    line.start(0)
    line.live(1, frame(1))
    again = line.live(1, frame(1))
    assert again.deliver == [] and not again.fill
    assert line.live(0, frame(0)).deliver == []


def test_a_gap_is_filled_from_the_database() -> None:
    """Frames lost by the broker are read back, and the held one follows them in order."""
    line = RoomLine(pending_limit=10)
    line.start(0)
    assert line.live(4, frame(4)).fill
    assert fill(line, stored=4) == [1, 2, 3, 4]
    assert line.delivered == 4
    assert line.fill_from() == ([], None)


def test_a_fill_racing_a_live_frame_hands_each_on_once() -> None:
    """The live frame wins the race; the fill's copies of what it delivered are dropped."""
    line = RoomLine(pending_limit=10)
    line.start(0)
    assert line.live(3, frame(3)).fill
    _, after = line.fill_from()
    assert after == 0
    rows = [1, 2, 3]  # the fill read these; before it hands them on, 1 and 2 arrive live
    assert seqs(line.live(1, frame(1)).deliver) == [1]
    assert seqs(line.live(2, frame(2)).deliver) == [2, 3]
    assert [seqs(line.fetched(seq, frame(seq))) for seq in rows] == [[], [], []]
    assert line.delivered == 3


def test_frames_before_the_first_join_read_wait_for_the_starting_point() -> None:
    """Frames published between subscribing and reading the newest seq are kept, not lost."""
    line = RoomLine(pending_limit=10)
    arrival = line.live(6, frame(6))
    assert arrival.deliver == [] and not arrival.fill  # nothing is known missing yet
    line.live(5, frame(5))
    assert seqs(line.start(4)) == [5, 6]
    # A later join's read does not move the starting point back.
    assert line.start(2) == [] and line.delivered == 6


def test_the_pending_limit_gives_the_room_up() -> None:
    """More frames held behind a gap than the limit: the room is lost and its holdings dropped."""
    line = RoomLine(pending_limit=3)
    line.start(0)
    assert [line.live(seq, frame(seq)).lost for seq in (2, 3, 4)] == [False, False, False]
    assert line.live(5, frame(5)).lost
    assert line.pending == {}


def test_reconcile_finds_a_room_behind() -> None:
    """A newest seq above the delivered one makes the fill read up to it."""
    line = RoomLine(pending_limit=10)
    line.start(2)
    assert not line.known(2)
    assert line.known(5)
    assert fill(line, stored=5) == [3, 4, 5]
    assert not line.known(5)


def test_a_join_replay_overlapping_live_frames() -> None:
    """Live frames during a replay are skipped; the replay brings them; then live resumes."""
    line = RoomLine(pending_limit=10)
    line.start(5)
    position = Position(2)  # joined with since=2
    assert position.replaying
    # Live frames arrive while the replay reads 3..6 from the database.
    for seq in (6, 7):
        (delivered,) = seqs(line.live(seq, frame(seq)).deliver)
        assert position.offer(delivered) is Offer.SKIP
    got = [seq for seq in range(3, 8) if position.replayed(seq)]
    assert position.caught_up(line.delivered)
    assert position.finish() == []
    assert got == [3, 4, 5, 6, 7]
    assert position.offer(8) is Offer.SEND
    assert position.offer(8) is Offer.SKIP


def test_two_replays_never_give_a_seq_twice() -> None:
    """Rows read by two overlapping replays count once."""
    position = Position(0)
    first = [seq for seq in (1, 2, 3) if position.replayed(seq)]
    second = [seq for seq in (2, 3, 4) if position.replayed(seq)]
    assert first + second == [1, 2, 3, 4]


def test_a_live_gap_sends_the_connection_to_a_replay() -> None:
    """A connection that missed a frame is marked replaying; the live path skips it meanwhile."""
    position = Position(0)
    position.finish()
    assert position.offer(1) is Offer.SEND
    assert position.offer(3) is Offer.BEHIND
    assert position.replaying
    assert position.offer(4) is Offer.SKIP
    assert [seq for seq in (2, 3, 4) if position.replayed(seq)] == [2, 3, 4]


def test_held_frames_follow_the_replay_and_shed_ephemeral_first() -> None:
    """Frames without a seq wait for the replay; at the limit typing goes before edits."""
    position = Position(0)
    assert position.hold("typing", True, limit=2)
    assert position.hold("edited-1", False, limit=2)
    assert position.hold("typing-2", True, limit=2)  # dropped, not an overflow
    assert position.hold("edited-2", False, limit=2)  # sheds the first typing
    assert not position.hold("edited-3", False, limit=2)  # only edits left: overflow
    assert position.finish() == [("edited-1", False), ("edited-2", False)]
    assert not position.replaying


def test_a_rejoin_restarts_the_replay_from_its_since() -> None:
    """Joining again while joined replays from the new starting point."""
    position = Position(5)
    position.finish()
    position.restart(2)
    assert position.replaying and position.last == 2
    position.skip_to(9)
    assert position.last == 9


@given(
    stored=st.integers(min_value=1, max_value=40),
    data=st.data(),
)
def test_any_arrival_order_with_losses_and_repeats_delivers_each_once_in_order(
    stored: int, data: st.DataObject
) -> None:
    """Whatever the broker does (reorder, repeat, lose), live frames plus a fill give 1..n once."""
    arrivals = data.draw(
        st.lists(st.integers(min_value=1, max_value=stored), max_size=3 * stored), label="arrivals"
    )
    line = RoomLine(pending_limit=1000)
    line.start(0)
    position = Position(0)
    position.finish()
    got: list[int] = []

    def hand_on(pairs: list[tuple[int, str]]) -> None:
        for seq, _ in pairs:
            if position.offer(seq) is Offer.SEND:
                got.append(seq)
            elif position.replaying:  # the node would replay it from the database
                got.extend(s for s in range(position.last + 1, seq + 1) if position.replayed(s))
                position.finish()

    for seq in arrivals:
        hand_on(line.live(seq, frame(seq)).deliver)
    line.known(stored)  # the reconcile finds what the broker lost
    while True:
        released, after = line.fill_from()
        hand_on(released)
        if after is None:
            break
        for seq in range(after + 1, stored + 1):
            hand_on(line.fetched(seq, frame(seq)))
    assert got == list(range(1, stored + 1))
