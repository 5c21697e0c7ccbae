-- name: last_seq
-- One room's newest seq, read on the replica before a history page: the page is
-- complete when the replica has replayed up to the primary's newest seq.
SELECT last_seq FROM rooms WHERE id = $1;

-- name: wal_position
-- The primary's WAL position as a number of bytes, recorded each second to age the
-- replica's replay against.
SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint;

-- name: replay_position
-- How far the replica has replayed, in the same unit; NULL on a server not in recovery.
SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint;
