-- Full-text search (issue #14): a tsvector kept with each message, and its index.
--
-- `tsv` is a generated column, so the insert statements stay as they are, an edit
-- re-indexes the message in the same UPDATE and a delete (body NULL) empties it;
-- no trigger reads the row back. The `simple` configuration lower-cases words
-- and nothing else: no stemming and no stop-word list, so "the", "Straße" and
-- "日本語" are found as written, in any language.
--
-- Adding a stored generated column rewrites the table once (about a minute per
-- million messages on the benchmark machine, see docs/benchmarks.md "Search").
ALTER TABLE messages
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body, ''))) STORED;

CREATE INDEX messages_tsv_idx ON messages USING gin (tsv);
