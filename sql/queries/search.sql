-- Full-text search (chat/search.py builds the to_tsquery input; docs/protocol.md "Search").

-- name: search_prepare
-- One round trip before the search: the tsquery (empty when no operand held a
-- word), whether the index can answer it (not when every term is excluded), the
-- rooms to search (the caller's memberships as of now, only $3 when given) and
-- whether $3 exists. set_config(..., true) lasts until the end of this
-- transaction: search_messages is planned for its own tsquery every time, never
-- by a generic plan cached on the connection, because the right plan depends on
-- how common the words are (see sql/migrations/0003_search.sql).
SELECT q::text AS query,
       numnode(q) AS nodes,
       numnode(q) > 0 AND querytree(q) <> 'T' AS indexable,
       ARRAY(SELECT room_id FROM members
             WHERE user_id = $2 AND ($3::bigint IS NULL OR room_id = $3)
             ORDER BY room_id) AS rooms,
       ($3::bigint IS NULL OR EXISTS (SELECT 1 FROM rooms WHERE id = $3)) AS room_exists,
       set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode
FROM to_tsquery('simple', $1) AS q;

-- name: search_custom_plan
-- On the connection that runs search_messages (the read replica's, when in use):
-- plan it for its own tsquery, as search_prepare does on the primary.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: search_messages
-- The newest matches below the message id $3, then their highlights: ts_headline
-- runs on the page only. It marks matches with U+E000 and U+E001; the body's own
-- private-use characters of those two code points become U+FFFD first (same
-- length), so every marker is one ts_headline put there (chat/search.py).
SELECT m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot,
       ts_headline('simple', translate(m.body, E'\uE000\uE001', E'\uFFFD\uFFFD'), $2::tsquery,
                   E'HighlightAll=true, StartSel=\uE000, StopSel=\uE001') AS headline
FROM (
    SELECT id FROM messages
    WHERE room_id = ANY($1::bigint[]) AND tsv @@ $2::tsquery AND id < $3 AND NOT deleted
    ORDER BY id DESC
    LIMIT $4
) hit
JOIN messages m ON m.id = hit.id
JOIN users u ON u.id = m.sender_id
ORDER BY m.id DESC;
