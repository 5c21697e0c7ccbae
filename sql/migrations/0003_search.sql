-- Full-text search (issue #14): a tsvector kept with each message, and its index.
--
-- `tsv` is a generated column, so the insert statements stay as they are, an edit
-- re-indexes the message in the same UPDATE and a delete (body NULL) empties it;
-- no trigger reads the row back. The `simple` configuration lower-cases words
-- and nothing else: no stemming and no stop-word list, so "the", "Straße" and
-- "日本語" are found as written, in any language.
--
-- One GIN index on (room_id, tsv), through btree_gin (a trusted contrib extension
-- of PostgreSQL: the database's owner may create it; the embedded PostgreSQL has
-- it too). Measured with EXPLAIN ANALYZE on 1,000,000 seeded messages over 1,000
-- rooms (docs/benchmarks.md, "Search"):
-- - a search of one room is one index scan for the room's matches only: a word
--   in 2% of messages, 18 hits in the room, took 0.4 ms, against 3 ms for a
--   BitmapAnd of a GIN index on tsv alone with the (room_id, seq) btree, which
--   reads every row id of the room (all of them in a room of millions);
-- - a search of all the caller's rooms uses the same index on tsv alone (the
--   planner prefers that to 100 room scans): a rare word reads its few rows
--   (0.8 ms); a common one is found by walking the primary key backwards,
--   newest first, filtering, and stops after a page (0.6 ms for "the", in
--   about three messages of four), which is why search_messages orders by id and is
--   planned per query (sql/queries/search.sql);
-- - it costs the same one GIN insert per message as an index on tsv alone, and
--   is 72 MB against 60 MB per million messages.
--
-- Adding a stored generated column rewrites the table once, and the index is
-- built: together 22-57 s per million messages on the benchmark machine, during
-- which the table is locked (plan the migration of a big deployment for it).
CREATE EXTENSION IF NOT EXISTS btree_gin;

ALTER TABLE messages
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body, ''))) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (room_id, tsv);
