-- Bot tokens: the owner rotates or revokes them.

-- name: bot_by_username
-- A bot (never a person) by name, in any case, with its owner.
SELECT id, username, bot, owner_id
FROM users
WHERE lower(username) = lower($1) AND bot;

-- name: replace_sessions
-- Every session of user $1 ends; with a hash in $2 a new one (a bot's: no idle expiry)
-- starts in the same statement, so there is never a moment with both or neither.
-- Answers the ended sessions' hashes, whose sockets are then closed on every process.
WITH gone AS (
    DELETE FROM sessions WHERE user_id = $1 RETURNING token_hash
), fresh AS (
    INSERT INTO sessions (token_hash, user_id, expires_idle)
    SELECT $2::bytea, $1, false WHERE $2::bytea IS NOT NULL
)
SELECT token_hash FROM gone;
