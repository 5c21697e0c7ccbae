-- Messages. The per-room seq comes from the room row, updated in the same statement
-- as the insert: gapless, and the row lock makes writers wait only within one room.

-- name: insert_message
-- Stores nothing for a non-member, a muted member, or a member within slow mode
-- (access.refuse says which). A duplicate client_id fails the whole statement
-- (a unique violation), so the seq taken for it is given back with the rollback.
-- A send that starts after a mute committed sees it. Under slow mode, the bump happens
-- only if no send of the room committed since this statement's snapshot (the row lock's
-- re-check sees the newest last_seq): of two racing sends of one member, the loser
-- stores nothing and store.py runs it again under the room's lock, with a snapshot
-- that sees the winner.
-- $5 is the thread's root (checked by the caller to be a root of this room), $6 the
-- lower-cased names after `@` (space-separated, first appearance first; null for none),
-- $7 whether the body says @room. A reply bumps its root's count in this statement,
-- under the room's row lock; names resolve to members here, in the same snapshot.
WITH allowed AS (
    SELECT (m.role = 'member' AND r.slow_mode > 0) AS slow, r.last_seq AS seen
    FROM members m JOIN rooms r ON r.id = m.room_id
    WHERE m.room_id = $1 AND m.user_id = $2
      AND (m.muted_until IS NULL OR m.muted_until <= now())
      AND (m.role <> 'member' OR r.slow_mode = 0 OR m.last_sent_at IS NULL
           OR m.last_sent_at <= now() - make_interval(secs => r.slow_mode))
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1
    WHERE id = $1 AND EXISTS (SELECT 1 FROM allowed a WHERE NOT a.slow OR a.seen = rooms.last_seq)
    RETURNING last_seq
), inserted AS (
    INSERT INTO messages (room_id, seq, sender_id, body, client_id, thread_id, mentions, mention_room)
    SELECT $1, last_seq, $2, $3, $4, $5::bigint,
           CASE WHEN $6::text IS NULL THEN '{}'::bigint[] ELSE (
               SELECT coalesce(array_agg(mb.user_id ORDER BY n.ord), '{}')
               FROM unnest(string_to_array($6::text, ' ')) WITH ORDINALITY AS n(name, ord)
               JOIN users u ON lower(u.username) = n.name
               JOIN members mb ON mb.room_id = $1 AND mb.user_id = u.id) END,
           $7::boolean
    FROM bumped
    RETURNING id, seq, created_at, mentions
), own_read AS (
    -- A sender has read their own message: it never counts as unread for them.
    -- last_sent_at: what slow mode measures the next send against.
    UPDATE members SET read_seq = greatest(members.read_seq, inserted.seq),
                       last_sent_at = inserted.created_at
    FROM inserted
    WHERE members.room_id = $1 AND members.user_id = $2
), replied AS (
    -- greatest: a transaction's now() is its start, so a reply committed after a newer one
    -- (it waited for the room lock) must not move last_reply_at back.
    UPDATE messages r SET reply_count = r.reply_count + 1,
        last_reply_at = greatest(r.last_reply_at, i.created_at)
    FROM inserted i
    WHERE $5::bigint IS NOT NULL AND r.id = $5::bigint AND r.room_id = $1
    RETURNING r.sender_id
), mentioned AS (
    INSERT INTO mentions (user_id, message_id, room_id, seq)
    SELECT DISTINCT unnest(i.mentions), i.id, $1::bigint, i.seq FROM inserted i
), followed AS (
    -- The replier, the root's author and whoever a reply names follow the thread.
    INSERT INTO thread_follows (user_id, root_id, room_id)
    SELECT f.user_id, $5::bigint, $1 FROM (
        SELECT $2::bigint AS user_id FROM inserted
        UNION SELECT sender_id FROM replied
        UNION SELECT unnest(mentions) FROM inserted
    ) f
    WHERE $5::bigint IS NOT NULL
    ON CONFLICT DO NOTHING
), outbox AS (
    -- Webhook events (issue 15) for the room's bots with a webhook, the sender excepted,
    -- written by this statement: stored with the message or not at all.
    INSERT INTO webhook_events (bot_id, room_id, message_id, seq)
    SELECT w.bot_id, $1, inserted.id, inserted.seq
    FROM inserted
    JOIN members bm ON bm.room_id = $1
    JOIN webhooks w ON w.bot_id = bm.user_id
    WHERE w.bot_id <> $2
)
SELECT id, seq, created_at, mentions FROM inserted;

-- name: message_by_client_id
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.room_id = $1 AND m.sender_id = $2 AND m.client_id = $3;

-- name: messages_after
-- The oldest messages above a seq, ascending: replay and `after=` pagination.
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.room_id = $1 AND m.seq > $2
ORDER BY m.seq
LIMIT $3;

-- name: messages_before
-- The newest messages below a seq, descending (the caller reverses them).
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM messages m JOIN users u ON u.id = m.sender_id
WHERE m.room_id = $1 AND m.seq < $2
ORDER BY m.seq DESC
LIMIT $3;

-- name: message_author
-- Who sent a message of the room, and whether it is a tombstone: what access.py
-- needs to decide on an edit or a delete.
SELECT sender_id, deleted FROM messages WHERE id = $2 AND room_id = $1;

-- name: edit_message
-- A new body for a message that is not a tombstone (access.py decided who may). Its
-- mentions are found again ($4 names, $5 @room, as for insert_message).
WITH updated AS (
    UPDATE messages m SET body = $3, edited_at = now(), mention_room = $5::boolean,
        mentions = CASE WHEN $4::text IS NULL THEN '{}'::bigint[] ELSE (
            SELECT coalesce(array_agg(mb.user_id ORDER BY n.ord), '{}')
            FROM unnest(string_to_array($4::text, ' ')) WITH ORDINALITY AS n(name, ord)
            JOIN users u ON lower(u.username) = n.name
            JOIN members mb ON mb.room_id = $1 AND mb.user_id = u.id) END
    WHERE m.id = $2 AND m.room_id = $1 AND NOT m.deleted
    RETURNING m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
              m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions,
              m.mention_room, m.sender_id
), unmentioned AS (
    DELETE FROM mentions x USING updated up
    WHERE x.message_id = up.id AND NOT (x.user_id = ANY (up.mentions))
), mentioned AS (
    INSERT INTO mentions (user_id, message_id, room_id, seq)
    SELECT DISTINCT unnest(up.mentions), up.id, up.room_id, up.seq FROM updated up
    ON CONFLICT DO NOTHING
)
SELECT up.id, up.room_id, up.seq, up.body, up.client_id, up.created_at, up.edited_at, up.deleted,
       up.thread_id, up.reply_count, up.last_reply_at, up.reactions, up.mentions, up.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM updated up JOIN users u ON u.id = up.sender_id;

-- name: delete_message
-- The row stays as a tombstone with its seq (access.py decided who may).
UPDATE messages SET body = NULL, deleted = true
WHERE id = $2 AND room_id = $1
RETURNING seq;

-- name: lock_rooms
-- Group commit takes the room locks in id order first, so two batches never deadlock.
SELECT id FROM rooms WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: insert_messages
-- Group commit: many sends in one statement, each row of a room getting the next seq
-- in array order. Rows whose sender is not a member, or whose client_id is already
-- stored or repeated earlier in the batch, are left out: the caller sends those
-- through insert_message, which answers them one by one. Threads, names and @room
-- ($5-$7) as in insert_message; the replies of the batch are counted per root, so a
-- root gets one update however many of its replies the batch holds.
-- through insert_message, which answers them one by one. Muted senders are left out;
-- under slow mode a member's first row of the batch at most goes in (the rest are
-- refused one by one). lock_rooms ran first: this snapshot sees every earlier send.
WITH input AS (
    SELECT t.room_id, t.sender_id, t.body, t.client_id, t.thread_id, t.names, t.mention_room, t.ord
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                $7::boolean[]) WITH ORDINALITY
         AS t(room_id, sender_id, body, client_id, thread_id, names, mention_room, ord)
), allowed AS (
    SELECT i.* FROM input i
    JOIN members m ON m.room_id = i.room_id AND m.user_id = i.sender_id
    JOIN rooms r ON r.id = i.room_id
    WHERE (m.muted_until IS NULL OR m.muted_until <= now())
      AND (m.role <> 'member' OR r.slow_mode = 0
           OR ((m.last_sent_at IS NULL OR m.last_sent_at <= now() - make_interval(secs => r.slow_mode))
               AND i.ord = (SELECT min(j.ord) FROM input j
                            WHERE j.room_id = i.room_id AND j.sender_id = i.sender_id)))
), fresh AS (
    SELECT a.* FROM allowed a
    WHERE a.client_id IS NULL
       OR (NOT EXISTS (SELECT 1 FROM messages x
                       WHERE x.room_id = a.room_id AND x.sender_id = a.sender_id
                         AND x.client_id = a.client_id)
           AND a.ord = (SELECT min(b.ord) FROM allowed b
                        WHERE b.room_id = a.room_id AND b.sender_id = a.sender_id
                          AND b.client_id = a.client_id))
), counts AS (
    SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id
), bumped AS (
    UPDATE rooms r SET last_seq = r.last_seq + c.n
    FROM counts c WHERE r.id = c.room_id
    RETURNING r.id, r.last_seq - c.n AS base
), numbered AS (
    SELECT f.ord, f.room_id, f.sender_id, f.body, f.client_id, f.thread_id, f.names,
           f.mention_room,
           b.base + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord) AS seq
    FROM fresh f JOIN bumped b ON b.id = f.room_id
), inserted AS (
    INSERT INTO messages (room_id, seq, sender_id, body, client_id, thread_id, mentions, mention_room)
    SELECT n.room_id, n.seq, n.sender_id, n.body, n.client_id, n.thread_id,
           CASE WHEN n.names IS NULL THEN '{}'::bigint[] ELSE (
               SELECT coalesce(array_agg(mb.user_id ORDER BY x.ord), '{}')
               FROM unnest(string_to_array(n.names, ' ')) WITH ORDINALITY AS x(name, ord)
               JOIN users u ON lower(u.username) = x.name
               JOIN members mb ON mb.room_id = n.room_id AND mb.user_id = u.id) END,
           n.mention_room
    FROM numbered n
    RETURNING id, room_id, seq, created_at, sender_id, thread_id, mentions
), own_read AS (
    -- A sender has read their own messages: they never count as unread for them.
    UPDATE members m SET read_seq = greatest(m.read_seq, n.seq), last_sent_at = now()
    FROM (SELECT room_id, sender_id, max(seq) AS seq FROM numbered GROUP BY room_id, sender_id) n
    WHERE m.room_id = n.room_id AND m.user_id = n.sender_id
), replies AS (
    SELECT thread_id, room_id, count(*) AS n, max(created_at) AS at
    FROM inserted WHERE thread_id IS NOT NULL GROUP BY thread_id, room_id
), replied AS (
    UPDATE messages r SET reply_count = r.reply_count + p.n,
        last_reply_at = greatest(r.last_reply_at, p.at)
    FROM replies p
    WHERE r.id = p.thread_id AND r.room_id = p.room_id
    RETURNING r.id, r.room_id, r.sender_id
), mentioned AS (
    INSERT INTO mentions (user_id, message_id, room_id, seq)
    SELECT DISTINCT unnest(i.mentions), i.id, i.room_id, i.seq FROM inserted i
), followed AS (
    INSERT INTO thread_follows (user_id, root_id, room_id)
    SELECT f.user_id, f.root_id, f.room_id FROM (
        SELECT i.sender_id AS user_id, i.thread_id AS root_id, i.room_id
        FROM inserted i WHERE i.thread_id IS NOT NULL
        UNION SELECT rp.sender_id, rp.id, rp.room_id FROM replied rp
        UNION SELECT unnest(i.mentions), i.thread_id, i.room_id
        FROM inserted i WHERE i.thread_id IS NOT NULL
    ) f
    ON CONFLICT DO NOTHING
), outbox AS (
    -- Webhook events (issue 15), as in insert_message: in the batch's own statement.
    INSERT INTO webhook_events (bot_id, room_id, message_id, seq)
    SELECT w.bot_id, n.room_id, ins.id, n.seq
    FROM numbered n
    JOIN inserted ins ON ins.room_id = n.room_id AND ins.seq = n.seq
    JOIN members bm ON bm.room_id = n.room_id
    JOIN webhooks w ON w.bot_id = bm.user_id
    WHERE w.bot_id <> n.sender_id
)
SELECT n.ord, ins.id, ins.seq, ins.created_at, ins.mentions
FROM numbered n JOIN inserted ins ON ins.room_id = n.room_id AND ins.seq = n.seq;

-- name: insert_message_plain
-- A message with no thread and no mention: the statement from before conversations,
-- so that a plain message costs what it did (no thread, mention or follow CTEs):
-- through insert_message(s) plain messages take 11-13 % more PostgreSQL time
-- (`python -m bench.insert_plain`). A change to the insert path is made in all four.
-- Stores nothing for a non-member, a muted member, or a member within slow mode
-- (access.refuse says which). A duplicate client_id fails the whole statement
-- (a unique violation), so the seq taken for it is given back with the rollback.
-- A send that starts after a mute committed sees it. Under slow mode, the bump happens
-- only if no send of the room committed since this statement's snapshot (the row lock's
-- re-check sees the newest last_seq): of two racing sends of one member, the loser
-- stores nothing and store.py runs it again under the room's lock, with a snapshot
-- that sees the winner.
WITH allowed AS (
    SELECT (m.role = 'member' AND r.slow_mode > 0) AS slow, r.last_seq AS seen
    FROM members m JOIN rooms r ON r.id = m.room_id
    WHERE m.room_id = $1 AND m.user_id = $2
      AND (m.muted_until IS NULL OR m.muted_until <= now())
      AND (m.role <> 'member' OR r.slow_mode = 0 OR m.last_sent_at IS NULL
           OR m.last_sent_at <= now() - make_interval(secs => r.slow_mode))
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1
    WHERE id = $1 AND EXISTS (SELECT 1 FROM allowed a WHERE NOT a.slow OR a.seen = rooms.last_seq)
    RETURNING last_seq
), inserted AS (
    INSERT INTO messages (room_id, seq, sender_id, body, client_id)
    SELECT $1, last_seq, $2, $3, $4 FROM bumped
    RETURNING id, seq, created_at
), own_read AS (
    -- A sender has read their own message: it never counts as unread for them.
    -- last_sent_at: what slow mode measures the next send against.
    UPDATE members SET read_seq = greatest(members.read_seq, inserted.seq),
                       last_sent_at = inserted.created_at
    FROM inserted
    WHERE members.room_id = $1 AND members.user_id = $2
), outbox AS (
    -- Webhook events (issue 15) for the room's bots with a webhook, the sender excepted,
    -- written by this statement: stored with the message or not at all.
    INSERT INTO webhook_events (bot_id, room_id, message_id, seq)
    SELECT w.bot_id, $1, inserted.id, inserted.seq
    FROM inserted
    JOIN members bm ON bm.room_id = $1
    JOIN webhooks w ON w.bot_id = bm.user_id
    WHERE w.bot_id <> $2
)
SELECT id, seq, created_at, '{}'::bigint[] AS mentions FROM inserted;

-- name: insert_messages_plain
-- Group commit of plain messages only (no thread, no mention): the statement from before
-- conversations, so that they cost what they did.
-- Group commit: many sends in one statement, each row of a room getting the next seq
-- in array order. Rows whose sender is not a member, or whose client_id is already
-- stored or repeated earlier in the batch, are left out: the caller sends those
-- through insert_message, which answers them one by one.
-- Group commit: many sends in one statement, each row of a room getting the next seq
-- in array order. Rows whose sender is not a member, or whose client_id is already
-- stored or repeated earlier in the batch, are left out: the caller sends those
-- through insert_message, which answers them one by one. Muted senders are left out;
-- under slow mode a member's first row of the batch at most goes in (the rest are
-- refused one by one). lock_rooms ran first: this snapshot sees every earlier send.
WITH input AS (
    SELECT t.room_id, t.sender_id, t.body, t.client_id, t.ord
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY
         AS t(room_id, sender_id, body, client_id, ord)
), allowed AS (
    SELECT i.* FROM input i
    JOIN members m ON m.room_id = i.room_id AND m.user_id = i.sender_id
    JOIN rooms r ON r.id = i.room_id
    WHERE (m.muted_until IS NULL OR m.muted_until <= now())
      AND (m.role <> 'member' OR r.slow_mode = 0
           OR ((m.last_sent_at IS NULL OR m.last_sent_at <= now() - make_interval(secs => r.slow_mode))
               AND i.ord = (SELECT min(j.ord) FROM input j
                            WHERE j.room_id = i.room_id AND j.sender_id = i.sender_id)))
), fresh AS (
    SELECT a.* FROM allowed a
    WHERE a.client_id IS NULL
       OR (NOT EXISTS (SELECT 1 FROM messages x
                       WHERE x.room_id = a.room_id AND x.sender_id = a.sender_id
                         AND x.client_id = a.client_id)
           AND a.ord = (SELECT min(b.ord) FROM allowed b
                        WHERE b.room_id = a.room_id AND b.sender_id = a.sender_id
                          AND b.client_id = a.client_id))
), counts AS (
    SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id
), bumped AS (
    UPDATE rooms r SET last_seq = r.last_seq + c.n
    FROM counts c WHERE r.id = c.room_id
    RETURNING r.id, r.last_seq - c.n AS base
), numbered AS (
    SELECT f.ord, f.room_id, f.sender_id, f.body, f.client_id,
           b.base + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord) AS seq
    FROM fresh f JOIN bumped b ON b.id = f.room_id
), inserted AS (
    INSERT INTO messages (room_id, seq, sender_id, body, client_id)
    SELECT room_id, seq, sender_id, body, client_id FROM numbered
    RETURNING id, room_id, seq, created_at
), own_read AS (
    -- A sender has read their own messages: they never count as unread for them.
    UPDATE members m SET read_seq = greatest(m.read_seq, n.seq), last_sent_at = now()
    FROM (SELECT room_id, sender_id, max(seq) AS seq FROM numbered GROUP BY room_id, sender_id) n
    WHERE m.room_id = n.room_id AND m.user_id = n.sender_id
), outbox AS (
    -- Webhook events (issue 15), as in insert_message: in the batch's own statement.
    INSERT INTO webhook_events (bot_id, room_id, message_id, seq)
    SELECT w.bot_id, n.room_id, ins.id, n.seq
    FROM numbered n
    JOIN inserted ins ON ins.room_id = n.room_id AND ins.seq = n.seq
    JOIN members bm ON bm.room_id = n.room_id
    JOIN webhooks w ON w.bot_id = bm.user_id
    WHERE w.bot_id <> n.sender_id
)
SELECT n.ord, ins.id, ins.seq, ins.created_at, '{}'::bigint[] AS mentions
FROM numbered n JOIN inserted ins ON ins.room_id = n.room_id AND ins.seq = n.seq;
