-- Outgoing webhooks (issue 15): the bots' URLs and the outbox of their events.
-- The events are written by the message inserts of messages.sql; the delivery worker
-- (chat/deliveries.py) claims, finishes and reschedules them here.

-- name: set_webhook
-- A new URL and secret for bot $1 (a PUT always makes a new secret).
INSERT INTO webhooks (bot_id, url, secret) VALUES ($1, $2, $3)
ON CONFLICT (bot_id) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
                                   created_at = now();

-- name: delete_webhook
-- The webhook goes, and with it the bot's pending events (failed, so that the owner's
-- list says what became of them). Answers whether there was one.
WITH gone AS (
    DELETE FROM webhooks WHERE bot_id = $1 RETURNING bot_id
), dropped AS (
    UPDATE webhook_events
    SET status = 'failed', last_error = 'the webhook was removed', finished_at = now(),
        lease = NULL, leased_until = NULL
    WHERE bot_id = $1 AND status = 'pending' AND EXISTS (SELECT 1 FROM gone)
)
SELECT bot_id FROM gone;

-- name: claim_webhook_events
-- Claim up to $1 due lane heads for $2 seconds under lease $3. A head is a lane's
-- pending event of lowest seq; one that is leased (in flight on some process) or not
-- yet due (waiting for its retry) holds its lane, which is what keeps one event in
-- flight per (bot, room) and the lane in seq order. FOR UPDATE SKIP LOCKED lets two
-- processes claim at once without waiting on each other; the lease conditions are
-- repeated in the UPDATE because a row another process claimed meanwhile is re-read
-- there at its newest version (the heads CTE saw an older snapshot).
WITH heads AS (
    SELECT DISTINCT ON (bot_id, room_id) id, next_attempt_at, leased_until
    FROM webhook_events
    WHERE status = 'pending'
    ORDER BY bot_id, room_id, seq
), due AS (
    SELECT e.id
    FROM heads h JOIN webhook_events e ON e.id = h.id
    WHERE h.next_attempt_at <= now() AND (h.leased_until IS NULL OR h.leased_until < now())
    ORDER BY h.next_attempt_at
    LIMIT $1
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE webhook_events e
SET lease = $3, leased_until = now() + make_interval(secs => $2), attempts = e.attempts + 1
FROM due
WHERE e.id = due.id AND e.status = 'pending'
  AND (e.leased_until IS NULL OR e.leased_until < now())
RETURNING e.id, e.bot_id, e.room_id, e.message_id, e.attempts,
          extract(epoch FROM now() - e.created_at)::float8 AS age;

-- name: webhook_event_parts
-- What a delivery sends: the webhook (null url if it was removed), the bot, the message.
SELECT w.url, w.secret,
       b.id AS bot_id, b.username AS bot_username, b.bot AS bot_bot,
       m.id, m.room_id, m.seq, m.body, m.client_id, m.created_at, m.edited_at, m.deleted,
       m.thread_id, m.reply_count, m.last_reply_at, m.reactions, m.mentions, m.mention_room,
       u.id AS sender_id, u.username AS sender_username, u.bot AS sender_bot
FROM users b
LEFT JOIN webhooks w ON w.bot_id = b.id
JOIN messages m ON m.id = $2
JOIN users u ON u.id = m.sender_id
WHERE b.id = $1;

-- name: finish_webhook_event
-- The event got its answer: `delivered` or `failed` for good. Only under the lease that
-- claimed it: a claim that ran out and was taken over finishes nothing.
UPDATE webhook_events
SET status = $3, last_status = $4, last_error = $5, finished_at = now(),
    lease = NULL, leased_until = NULL
WHERE id = $1 AND lease = $2 AND status = 'pending'
RETURNING extract(epoch FROM now() - created_at)::float8 AS age;

-- name: retry_webhook_event
-- Another attempt in $3 seconds, or `failed` when that would be later than $4 seconds
-- after the event was written (the give-up age). Answers the status it is left in.
UPDATE webhook_events
SET status = CASE WHEN now() + make_interval(secs => $3)
                       > created_at + make_interval(secs => $4)
                  THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => $3),
    finished_at = CASE WHEN now() + make_interval(secs => $3)
                            > created_at + make_interval(secs => $4)
                       THEN now() END,
    last_status = $5, last_error = $6, lease = NULL, leased_until = NULL
WHERE id = $1 AND lease = $2 AND status = 'pending'
RETURNING status;

-- name: release_webhook_leases
-- A stopping process hands back what it had claimed, due at once, so that another
-- process need not wait for the leases to run out.
UPDATE webhook_events
SET lease = NULL, leased_until = NULL, next_attempt_at = now(),
    attempts = greatest(attempts - 1, 0)
WHERE lease = $1 AND status = 'pending';

-- name: oldest_pending_webhook_event
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM webhook_events WHERE status = 'pending';

-- name: webhook_deliveries
-- The bot's events, newest first.
SELECT id, room_id, message_id, status, attempts, last_status, last_error
FROM webhook_events
WHERE bot_id = $1
ORDER BY id DESC
LIMIT $2;

-- name: identity_user
-- The user an identity provider's (issuer, subject) signed in as before.
SELECT u.id, u.username, u.bot
FROM identities i JOIN users u ON u.id = i.user_id
WHERE i.issuer = $1 AND i.subject = $2;

-- name: create_identity_user
-- A user for a first JWT of (issuer $1, subject $2), named $3; no password (they sign
-- in through the provider only). A taken name or a racing first JWT of the same subject
-- fails the whole statement with a unique violation, told apart by its constraint.
WITH u AS (
    INSERT INTO users (username) VALUES ($3) RETURNING id, username, bot
), i AS (
    INSERT INTO identities (issuer, subject, user_id) SELECT $1, $2, id FROM u
)
SELECT id, username, bot FROM u;
