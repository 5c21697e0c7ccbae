-- Rooms, membership, direct messages and read positions.

-- name: create_room
WITH r AS (
    INSERT INTO rooms (name, private, created_by)
    VALUES ($1, $2, $3)
    RETURNING id, name, private
), m AS (
    INSERT INTO members (room_id, user_id) SELECT id, $3 FROM r
)
SELECT r.id, r.name, r.private, u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot
FROM r, users u
WHERE u.id = $3;

-- name: room
SELECT r.id, r.name, r.private, u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot
FROM rooms r JOIN users u ON u.id = r.created_by
WHERE r.id = $1;

-- name: room_access
-- Whether the room exists, who made it, its newest seq and whether $2 is a member.
SELECT r.private, r.created_by, r.last_seq, (m.user_id IS NOT NULL) AS member
FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2
WHERE r.id = $1;

-- name: rooms_of_user
SELECT r.id, r.name, r.private, u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       r.last_seq, greatest(r.last_seq - m.read_seq, 0) AS unread
FROM members m
JOIN rooms r ON r.id = m.room_id
JOIN users u ON u.id = r.created_by
WHERE m.user_id = $1
ORDER BY r.id;

-- name: add_member
-- A newcomer starts with the room read: its history is not news to them.
INSERT INTO members (room_id, user_id, read_seq)
SELECT id, $2, last_seq FROM rooms WHERE id = $1
ON CONFLICT DO NOTHING;

-- name: remove_member
DELETE FROM members WHERE room_id = $1 AND user_id = $2
RETURNING user_id;

-- name: create_dm
-- One room per pair: the unique dm_key makes two racing creators meet on one row.
WITH new AS (
    INSERT INTO rooms (name, private, created_by, dm_key)
    VALUES ($3, true, $1, $4)
    ON CONFLICT (dm_key) DO NOTHING
    RETURNING id
), m AS (
    INSERT INTO members (room_id, user_id)
    SELECT new.id, x FROM new, unnest(ARRAY[$1::bigint, $2::bigint]) AS x
)
SELECT id FROM new;

-- name: dm_room_id
-- The pair's existing room, with either of them who had left it back in (as of now).
WITH r AS (
    SELECT id, last_seq FROM rooms WHERE dm_key = $1
), m AS (
    INSERT INTO members (room_id, user_id, read_seq)
    SELECT r.id, x, r.last_seq FROM r, unnest(ARRAY[$2::bigint, $3::bigint]) AS x
    ON CONFLICT DO NOTHING
)
SELECT id FROM r;

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
