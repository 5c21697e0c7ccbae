-- Threads, reactions, mentions and who to notify (issue 12).

-- name: thread_root
-- What a `thread` field names: the message's room and its root (a reply's root, so
-- that a reply to a reply belongs to the same root).
SELECT room_id, coalesce(thread_id, id) AS root_id FROM messages WHERE id = $1;

-- name: thread_after
-- A thread's oldest replies above a seq, ascending (messages_thread_idx).
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.thread_id = $1 AND m.seq > $2
ORDER BY m.seq
LIMIT $3;

-- name: thread_before
-- A thread's newest replies below a seq, descending (the caller reverses them).
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.thread_id = $1 AND m.seq < $2
ORDER BY m.seq DESC
LIMIT $3;

-- name: threads_of_user
-- The followed threads of $1 with a reply, in rooms they are still a member of, most
-- recent reply first; unread: replies by others above the thread's read position.
-- Sorted over the user's own follows (their primary key prefix), each root by its key.
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot,
       (SELECT count(*) FROM messages x
        WHERE x.thread_id = m.id AND x.seq > f.read_seq AND x.sender_id <> $1
          AND NOT x.deleted) AS unread
FROM thread_follows f
JOIN messages m ON m.id = f.root_id
JOIN users u ON u.id = m.sender_id
JOIN members mb ON mb.room_id = f.room_id AND mb.user_id = $1
WHERE f.user_id = $1 AND m.reply_count > 0
ORDER BY m.last_reply_at DESC, m.id DESC
LIMIT $2;

-- name: set_thread_read
-- A thread's read position only moves forward and never past the room's newest seq.
UPDATE thread_follows f SET read_seq = greatest(f.read_seq, least($4::bigint, r.last_seq))
FROM rooms r
WHERE f.user_id = $1 AND f.root_id = $3 AND f.room_id = $2 AND r.id = f.room_id
RETURNING f.read_seq;

-- name: thread_followers
-- Who follows a thread (to notify them of a reply).
SELECT user_id FROM thread_follows WHERE root_id = $1;

-- name: room_kind
-- A DM's two people (null for other rooms): a room's kind never changes, so it is cached.
SELECT dm_low, dm_high FROM rooms WHERE id = $1;

-- name: room_member_ids
-- Everyone an @room tells.
SELECT user_id FROM members WHERE room_id = $1;

-- name: lock_message
-- A reaction change holds the message's row: changes to one message go one at a time on
-- every process, so the distinct-emoji cap and the stored aggregate stay exact. NO KEY
-- UPDATE so that replies referencing the message (thread_id) are not held up.
SELECT deleted FROM messages WHERE id = $2 AND room_id = $1 FOR NO KEY UPDATE;

-- name: reaction_state
-- How many distinct emoji the message holds, and whether $2 is one of them.
SELECT count(DISTINCT emoji) AS n, coalesce(bool_or(emoji = $2), false) AS has
FROM reactions WHERE message_id = $1;

-- name: add_reaction
INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING 1;

-- name: remove_reaction
DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3
RETURNING 1;

-- name: refresh_reactions
-- The contract's aggregate, written onto the message: emoji by first use, the first
-- 50 reactors of each.
WITH agg AS (
    SELECT emoji, count(*) AS n, min(ord) AS first,
           (array_agg(user_id ORDER BY ord))[1:50] AS users
    FROM reactions WHERE message_id = $1 GROUP BY emoji
)
UPDATE messages SET reactions = (
    SELECT jsonb_agg(jsonb_build_object('emoji', emoji, 'count', n, 'users', users)
                     ORDER BY first)
    FROM agg)
WHERE id = $1
RETURNING seq, reactions;

-- name: message_reactions
SELECT seq, reactions, deleted FROM messages WHERE id = $2 AND room_id = $1;

-- name: mention_counts
-- Per room of $1: unread messages (above the read position, by others, not deleted)
-- that mention $1 by name or say @room.
SELECT mb.room_id, count(DISTINCT x.id) AS n
FROM members mb
JOIN LATERAL (
    SELECT mn.message_id AS id FROM mentions mn
    WHERE mn.user_id = $1 AND mn.room_id = mb.room_id AND mn.seq > mb.read_seq
    UNION
    SELECT mr.id FROM messages mr
    WHERE mr.room_id = mb.room_id AND mr.mention_room AND mr.seq > mb.read_seq
) hit ON true
JOIN messages x ON x.id = hit.id AND NOT x.deleted AND x.sender_id <> $1
WHERE mb.user_id = $1
GROUP BY mb.room_id;

-- name: mentions_of_user
-- Messages mentioning $1 by name or saying @room in rooms they are a member of, newest
-- first, below message id $2 (keyset). Each side is read newest first by its index and
-- cut at $3 before they are merged.
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.id IN (
    (SELECT mn.message_id FROM mentions mn
     JOIN members mb ON mb.room_id = mn.room_id AND mb.user_id = $1
     WHERE mn.user_id = $1 AND mn.message_id < $2
     ORDER BY mn.message_id DESC LIMIT $3)
    UNION
    (SELECT r.id FROM members mb
     CROSS JOIN LATERAL (
         SELECT x.id FROM messages x
         WHERE x.room_id = mb.room_id AND x.mention_room AND x.id < $2
         ORDER BY x.seq DESC LIMIT $3) r
     WHERE mb.user_id = $1)
) AND NOT m.deleted
ORDER BY m.id DESC
LIMIT $3;
