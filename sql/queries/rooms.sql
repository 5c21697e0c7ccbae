-- Rooms, membership, direct messages and read positions.

-- name: create_room
WITH r AS (
    INSERT INTO rooms (name, private, created_by)
    VALUES ($1, $2, $3)
    RETURNING id, name, private, topic, slow_mode
), m AS (
    INSERT INTO members (room_id, user_id) SELECT id, $3 FROM r
)
SELECT r.id, r.name, r.private, r.topic, r.slow_mode,
       u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       NULL::bigint AS dm_id, NULL::text AS dm_username, NULL::boolean AS dm_bot
FROM r, users u
WHERE u.id = $3;

-- name: room
-- $2 is the caller: `dm` is the other person of the pair as they see it (null but for a
-- DM they are one of), read from the room's pair key and never from its name.
SELECT r.id, r.name, r.private, r.topic, r.slow_mode,
       u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       p.id AS dm_id, p.username AS dm_username, p.bot AS dm_bot
FROM rooms r
JOIN users u ON u.id = r.created_by
LEFT JOIN users p ON p.id = CASE WHEN r.dm_low = $2 THEN r.dm_high
                                 WHEN r.dm_high = $2 THEN r.dm_low END
WHERE r.id = $1;

-- name: room_access
-- Whether the room exists, who made it, whether it is a DM, its newest seq and whether
-- $2 is a member; their role, mute, ban and slow-mode state (chat/access.py's inputs).
SELECT r.private, r.created_by, (r.dm_key IS NOT NULL) AS dm, r.last_seq,
       (m.user_id IS NOT NULL) AS member, m.role,
       CASE WHEN m.muted_until > now() THEN m.muted_until END AS muted_until,
       EXISTS (SELECT 1 FROM bans b WHERE b.room_id = r.id AND b.user_id = $2) AS banned,
       r.slow_mode, m.last_sent_at, now() AS now
FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2
WHERE r.id = $1;

-- name: rooms_of_user
SELECT r.id, r.name, r.private, r.topic, r.slow_mode, m.role,
       u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       p.id AS dm_id, p.username AS dm_username, p.bot AS dm_bot,
       r.last_seq, greatest(r.last_seq - m.read_seq, 0) AS unread
FROM members m
JOIN rooms r ON r.id = m.room_id
JOIN users u ON u.id = r.created_by
LEFT JOIN users p ON p.id = CASE WHEN r.dm_low = $1 THEN r.dm_high
                                 WHEN r.dm_high = $1 THEN r.dm_low END
WHERE m.user_id = $1
ORDER BY r.id;

-- name: add_member
-- Oneself (a join): never capped; never while banned (checked here too, so a ban
-- committed after access.py looked still wins).
-- A newcomer starts with the room read: its history is not news to them.
INSERT INTO members (room_id, user_id, read_seq)
SELECT id, $2, last_seq FROM rooms WHERE id = $1
  AND NOT EXISTS (SELECT 1 FROM bans WHERE room_id = $1 AND user_id = $2)
ON CONFLICT DO NOTHING;

-- name: lock_target
-- Taken before counting a target's recent adds, so that concurrent adds of one user (on
-- any process) are counted one after another. NO KEY UPDATE, not UPDATE: it must not
-- hold up the key-share locks that inserts referencing the user take.
SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE;

-- name: add_member_by
-- $3 puts $2 into room $1, unless $2 was put into $5 rooms by others within the last $4
-- seconds. Answers whether $2 was a member already, whether this added them, and the
-- recent count. Old ledger rows of the target go on the way.
WITH pruned AS (
    DELETE FROM member_adds
    WHERE target_id = $2 AND added_at <= now() - make_interval(secs => $4)
), recent AS (
    SELECT count(*) AS n FROM member_adds
    WHERE target_id = $2 AND added_at > now() - make_interval(secs => $4)
), already AS (
    SELECT EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS member
), added AS (
    -- A newcomer starts with the room read: its history is not news to them.
    INSERT INTO members (room_id, user_id, read_seq)
    SELECT r.id, $2, r.last_seq FROM rooms r, recent, already
    WHERE r.id = $1 AND recent.n < $5 AND NOT already.member
      AND NOT EXISTS (SELECT 1 FROM bans WHERE room_id = $1 AND user_id = $2)
    ON CONFLICT DO NOTHING
    RETURNING room_id
), logged AS (
    INSERT INTO member_adds (target_id, actor_id, room_id)
    SELECT $2, $3, room_id FROM added
)
SELECT already.member AS was_member, (SELECT count(*) FROM added) AS added, recent.n AS recent
FROM already, recent;

-- name: recent_adds
-- How many times others put $1 into a room within the last $2 seconds.
SELECT count(*) FROM member_adds
WHERE target_id = $1 AND added_at > now() - make_interval(secs => $2);

-- name: remove_member
DELETE FROM members WHERE room_id = $1 AND user_id = $2
RETURNING user_id;

-- name: create_dm
-- One room per pair: the unique dm_key makes two racing creators meet on one row. The
-- other person ($2) was put into a room by $1: that goes into the ledger of adds.
WITH new AS (
    INSERT INTO rooms (name, private, created_by, dm_key)
    VALUES ($3, true, $1, $4)
    ON CONFLICT (dm_key) DO NOTHING
    RETURNING id
), m AS (
    INSERT INTO members (room_id, user_id)
    SELECT new.id, x FROM new, unnest(ARRAY[$1::bigint, $2::bigint]) AS x
), logged AS (
    INSERT INTO member_adds (target_id, actor_id, room_id)
    SELECT $2, $1, new.id FROM new
)
SELECT id FROM new;

-- name: dm_room_id
-- The pair's existing room, with the caller ($2) back in it (as of now) if they had left.
-- Only the caller: someone who left a DM is back only when they open it themselves.
WITH r AS (
    SELECT id, last_seq FROM rooms WHERE dm_key = $1
), m AS (
    INSERT INTO members (room_id, user_id, read_seq)
    SELECT r.id, $2, r.last_seq FROM r
    ON CONFLICT DO NOTHING
    RETURNING user_id
)
SELECT id, EXISTS (SELECT 1 FROM m) AS rejoined FROM r;

-- name: set_read
-- A read position only moves forward and never past the room's newest seq.
UPDATE members m SET read_seq = greatest(m.read_seq, least($3::bigint, r.last_seq))
FROM rooms r
WHERE m.room_id = $1 AND m.user_id = $2 AND r.id = m.room_id
RETURNING m.read_seq;

-- name: last_seqs
-- The newest seq of many rooms in one round trip: catches messages whose publish was lost.
SELECT id, last_seq FROM rooms WHERE id = ANY($1::bigint[]);

-- name: memberships
-- Which of these rooms and users still go together: re-read when the broker link was
-- down, since a removal published meanwhile never arrived.
SELECT room_id, user_id FROM members
WHERE room_id = ANY($1::bigint[]) AND user_id = ANY($2::bigint[]);

-- name: block
INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING;

-- name: unblock
DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2;

-- name: blocked_users
SELECT u.id, u.username, u.bot
FROM blocks b JOIN users u ON u.id = b.blocked_id
WHERE b.blocker_id = $1
ORDER BY lower(u.username);

-- name: is_blocked
-- Whether $1 blocked $2.
SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $1 AND blocked_id = $2);
