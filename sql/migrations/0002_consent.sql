-- Membership by consent (issue 10): DMs known by their pair, blocks, and a ledger of
-- who put whom into a room, so that being added can be capped per person.

-- The two people of a DM, read from dm_key ("low:high"), so that every query can name
-- the other person of the caller without parsing text, and no client need guess from a name.
ALTER TABLE rooms
    ADD COLUMN dm_low  bigint GENERATED ALWAYS AS (split_part(dm_key, ':', 1)::bigint) STORED,
    ADD COLUMN dm_high bigint GENERATED ALWAYS AS (split_part(dm_key, ':', 2)::bigint) STORED;

-- blocker_id no longer wants blocked_id to open a DM with them or put them in rooms.
CREATE TABLE blocks (
    blocker_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);

-- Every time someone made another user a member (an add, or the DM they opened).
-- A ledger rather than columns on members: a membership removed and added again
-- must count twice, and members rows go when people leave. Rows older than the
-- window are pruned by the next add of the same target.
CREATE TABLE member_adds (
    target_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    actor_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id    bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    added_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX member_adds_target_idx ON member_adds (target_id, added_at);
