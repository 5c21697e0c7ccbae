-- Accounts and sessions. Parameters are $1, $2, ...; names are looked up once at import.

-- name: create_user
INSERT INTO users (username, password_hash)
VALUES ($1, $2)
RETURNING id, username, bot;

-- name: create_bot
INSERT INTO users (username, bot, owner_id)
VALUES ($1, true, $2)
RETURNING id, username, bot;

-- name: user_for_login
SELECT id, username, bot, password_hash
FROM users
WHERE lower(username) = lower($1) AND NOT bot;

-- name: user_by_username
SELECT id, username, bot
FROM users
WHERE lower(username) = lower($1);

-- name: create_session
INSERT INTO sessions (token_hash, user_id, expires_idle)
VALUES ($1, $2, $3);

-- name: session_user
-- $2: idle expiry in seconds. last_used_at is written at most once a minute per token.
WITH s AS (
    SELECT user_id
    FROM sessions
    WHERE token_hash = $1
      AND (NOT expires_idle OR last_used_at > now() - make_interval(secs => $2))
), touched AS (
    UPDATE sessions SET last_used_at = now()
    WHERE token_hash = $1
      AND last_used_at < now() - interval '60 seconds'
      AND EXISTS (SELECT 1 FROM s)
)
SELECT u.id, u.username, u.bot
FROM s JOIN users u ON u.id = s.user_id;

-- name: delete_session
DELETE FROM sessions WHERE token_hash = $1 RETURNING user_id;

-- name: live_sessions
-- Which of these tokens still have a session: re-read when the broker link was down,
-- since a log-out published meanwhile never arrived, and every ACCESS_RECHECK. $2: idle
-- expiry in seconds, the rule of session_user, so an idle-expired session's socket closes.
SELECT token_hash FROM sessions
WHERE token_hash = ANY($1::bytea[])
  AND (NOT expires_idle OR last_used_at > now() - make_interval(secs => $2));
