-- Rooms people find and run (issue 13): topics, slow mode, roles, mutes, bans, an
-- audit log, and a directory of public rooms by size.

-- pg_trgm is in PostgreSQL's contrib and trusted (PostgreSQL 13+): the database owner
-- may create it. It serves the directory's "name or topic contains q" filter.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE rooms
    ADD COLUMN topic        text NOT NULL DEFAULT '' CHECK (char_length(topic) <= 500),
    ADD COLUMN slow_mode    integer NOT NULL DEFAULT 0 CHECK (slow_mode BETWEEN 0 AND 21600),
    -- kept by the members_count trigger below, so the directory orders by an index
    -- rather than counting members of every public room per request
    ADD COLUMN member_count integer NOT NULL DEFAULT 0;

ALTER TABLE members
    ADD COLUMN role         text NOT NULL DEFAULT 'member'
                            CHECK (role IN ('owner', 'moderator', 'member')),
    -- a mute ends by itself: no job has to lift it
    ADD COLUMN muted_until  timestamptz,
    -- slow mode compares against this, read and written in the send's own statement
    ADD COLUMN last_sent_at timestamptz;

-- Existing rooms: their creators own them (DMs have no owner: both people are members).
UPDATE members m SET role = 'owner'
FROM rooms r
WHERE r.id = m.room_id AND r.created_by = m.user_id AND r.dm_key IS NULL;

UPDATE rooms r SET member_count = (SELECT count(*) FROM members m WHERE m.room_id = r.id);

-- A room's creator is its owner whenever they are a member, whichever statement put them
-- in (create_room, a join after leaving): the rule lives here, not in every insert.
CREATE FUNCTION members_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM rooms
               WHERE id = NEW.room_id AND created_by = NEW.user_id AND dm_key IS NULL) THEN
        NEW.role := 'owner';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER members_owner BEFORE INSERT ON members
    FOR EACH ROW EXECUTE FUNCTION members_owner();

-- member_count moves by one per row and never recounts. It updates the room row, which
-- sends lock too: removals take that lock first (store.py), so the order is always
-- room, then member, as in the sends, and nothing deadlocks.
-- A newcomer who is banned is refused here, after the room's lock: a ban holds that
-- lock until it commits, and this check's snapshot is taken after it, so a join or an
-- add racing a ban cannot slip in (the statements also check bans, but with a snapshot
-- from before the ban committed). SQLSTATE CHB01: store.py answers it with 403.
CREATE FUNCTION members_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE rooms SET member_count = member_count + 1 WHERE id = NEW.room_id;
        IF EXISTS (SELECT 1 FROM bans WHERE room_id = NEW.room_id AND user_id = NEW.user_id) THEN
            RAISE EXCEPTION 'banned from room %', NEW.room_id USING ERRCODE = 'CHB01';
        END IF;
    ELSE
        UPDATE rooms SET member_count = member_count - 1 WHERE id = OLD.room_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER members_count AFTER INSERT OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION members_count();

-- Who may not come back into a room until unbanned. Not a member row: the ban outlives
-- the membership it ended.
CREATE TABLE bans (
    room_id     bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    by_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reason      text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- Every moderation act, written in the same transaction as the act.
CREATE TABLE audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id     bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    actor_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    action      text NOT NULL
                CHECK (action IN ('delete', 'remove', 'mute', 'unmute', 'ban', 'unban', 'role', 'update')),
    target_id   bigint REFERENCES users (id) ON DELETE CASCADE,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The log of a room, newest first (keyset on id).
CREATE INDEX audit_room_idx ON audit (room_id, id DESC);

-- The directory (bench/directory.py: EXPLAIN ANALYZE on 100,000 rooms, PostgreSQL 15).
-- Without q: an Index Scan of rooms_directory_idx in order, stopping at the limit
-- (0.1-0.8 ms). With q of three characters or more that few rooms match: a BitmapOr
-- of rooms_name_trgm_idx and rooms_topic_trgm_idx, then a sort of the few matches
-- (1-11 ms, 8 ms for a q that matches nothing). With a common q ('python', 'a'): the
-- same walk of rooms_directory_idx with a filter, stopping at the limit (1-5 ms).
-- store.py forces a custom plan for the search: the generic plan cannot see how rare
-- q is and walks rooms_directory_idx for every q (300 ms for one matching nothing).
-- A q of one or two characters gives no trigram, so a rare one walks the whole
-- directory index (~200 ms on 100,000 rooms).
CREATE INDEX rooms_directory_idx ON rooms (member_count DESC, id)
    WHERE NOT private AND dm_key IS NULL;
CREATE INDEX rooms_name_trgm_idx ON rooms USING gin (name gin_trgm_ops)
    WHERE NOT private AND dm_key IS NULL;
CREATE INDEX rooms_topic_trgm_idx ON rooms USING gin (topic gin_trgm_ops)
    WHERE NOT private AND dm_key IS NULL;
