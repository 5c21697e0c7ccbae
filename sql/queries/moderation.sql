-- Rooms people find and run (issue 13): the directory, settings, roles, mutes, bans and
-- the audit log. Every act that changes something writes its audit row in the same
-- statement; store.py runs each after taking the room's row lock (lock_rooms), the
-- order sends take locks in.

-- name: directory
-- Public rooms, most members first: an index scan of rooms_directory_idx, in order.
SELECT r.id, r.name, r.private, r.topic, r.slow_mode, r.member_count,
       u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       NULL::bigint AS dm_id, NULL::text AS dm_username, NULL::boolean AS dm_bot
FROM rooms r JOIN users u ON u.id = r.created_by
WHERE NOT r.private AND r.dm_key IS NULL
ORDER BY r.member_count DESC, r.id
LIMIT $1;

-- name: directory_search
-- $1 is an ILIKE pattern, `%q%` with q's own % _ \ escaped (chat/moderation.py).
SELECT r.id, r.name, r.private, r.topic, r.slow_mode, r.member_count,
       u.id AS creator_id, u.username AS creator_username, u.bot AS creator_bot,
       NULL::bigint AS dm_id, NULL::text AS dm_username, NULL::boolean AS dm_bot
FROM rooms r JOIN users u ON u.id = r.created_by
WHERE NOT r.private AND r.dm_key IS NULL AND (r.name ILIKE $1 OR r.topic ILIKE $1)
ORDER BY r.member_count DESC, r.id
LIMIT $2;

-- name: custom_plans
-- For the rest of the transaction: plan each statement for its own parameters.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: update_room
-- A null parameter leaves its column as it is; the audit row lists what was asked.
WITH updated AS (
    UPDATE rooms SET name = coalesce($3, name), topic = coalesce($4, topic),
                     slow_mode = coalesce($5, slow_mode)
    WHERE id = $1
    RETURNING id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, detail)
    SELECT id, $2, 'update', $6::jsonb FROM updated
)
SELECT id FROM updated;

-- name: member_role
SELECT role FROM members WHERE room_id = $1 AND user_id = $2;

-- name: members_page
-- By user id, from after $2: keyset paging over the primary key.
SELECT u.id, u.username, u.bot, m.role
FROM members m JOIN users u ON u.id = m.user_id
WHERE m.room_id = $1 AND m.user_id > $2
ORDER BY m.user_id
LIMIT $3;

-- name: set_role
-- Never the owner's row: nobody acts on the owner (access.py refused it first).
WITH changed AS (
    UPDATE members SET role = $4
    WHERE room_id = $1 AND user_id = $3 AND role <> 'owner'
    RETURNING user_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id, detail)
    SELECT $1, $2, 'role', user_id, jsonb_build_object('role', $4::text) FROM changed
)
SELECT user_id FROM changed;

-- name: mute
-- Only a `member` is muted: owner and moderators cannot be.
WITH muted AS (
    UPDATE members SET muted_until = now() + make_interval(secs => $4)
    WHERE room_id = $1 AND user_id = $3 AND role = 'member'
    RETURNING user_id, muted_until
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id, detail)
    SELECT $1, $2, 'mute', user_id,
           jsonb_build_object('seconds', $4::integer, 'until', muted_until) FROM muted
)
SELECT user_id FROM muted;

-- name: unmute
WITH unmuted AS (
    UPDATE members SET muted_until = NULL
    WHERE room_id = $1 AND user_id = $3
    RETURNING user_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id)
    SELECT $1, $2, 'unmute', user_id FROM unmuted
)
SELECT user_id FROM unmuted;

-- name: ban
-- The ban, the end of the membership (if any) and the audit row in one statement.
-- Owner and moderators cannot be banned: a member row of theirs stops it all.
WITH target AS (
    SELECT $3::bigint AS user_id
    WHERE NOT EXISTS (SELECT 1 FROM members
                      WHERE room_id = $1 AND user_id = $3 AND role <> 'member')
), banned AS (
    INSERT INTO bans (room_id, user_id, by_id, reason)
    SELECT $1, user_id, $2, $4 FROM target
    ON CONFLICT (room_id, user_id) DO UPDATE SET by_id = $2, reason = $4, created_at = now()
    RETURNING user_id
), gone AS (
    DELETE FROM members WHERE room_id = $1 AND user_id IN (SELECT user_id FROM banned)
    RETURNING user_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id, detail)
    SELECT $1, $2, 'ban', user_id, jsonb_build_object('reason', $4::text) FROM banned
)
SELECT user_id, EXISTS (SELECT 1 FROM gone) AS was_member FROM banned;

-- name: unban
WITH lifted AS (
    DELETE FROM bans WHERE room_id = $1 AND user_id = $3
    RETURNING user_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id)
    SELECT $1, $2, 'unban', user_id FROM lifted
)
SELECT user_id FROM lifted;

-- name: bans
SELECT u.id, u.username, u.bot, by_u.id AS by_id, by_u.username AS by_username,
       by_u.bot AS by_bot, b.reason, b.created_at
FROM bans b
JOIN users u ON u.id = b.user_id
JOIN users by_u ON by_u.id = b.by_id
WHERE b.room_id = $1
ORDER BY b.created_at DESC, b.user_id
LIMIT $2;

-- name: remove_member_by
-- $2 removes $3 (someone else): the removal and its audit row together.
WITH gone AS (
    DELETE FROM members WHERE room_id = $1 AND user_id = $3
    RETURNING user_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id)
    SELECT $1, $2, 'remove', user_id FROM gone
)
SELECT user_id FROM gone;

-- name: delete_message_by
-- A moderator deletes someone else's message: the tombstone and its audit row together.
WITH deleted AS (
    UPDATE messages SET body = NULL, deleted = true
    WHERE id = $3 AND room_id = $1
    RETURNING seq, sender_id
), logged AS (
    INSERT INTO audit (room_id, actor_id, action, target_id, detail)
    SELECT $1, $2, 'delete', sender_id, jsonb_build_object('id', $3::bigint, 'seq', seq)
    FROM deleted
)
SELECT seq FROM deleted;

-- name: audit
SELECT a.id, a.created_at, a.action, a.detail,
       u.id AS actor_id, u.username AS actor_username, u.bot AS actor_bot,
       t.id AS target_id, t.username AS target_username, t.bot AS target_bot
FROM audit a
JOIN users u ON u.id = a.actor_id
LEFT JOIN users t ON t.id = a.target_id
WHERE a.room_id = $1
ORDER BY a.id DESC
LIMIT $2;
