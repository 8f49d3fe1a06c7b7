-- Keyset paging of GET /api/v1/tickets (`cursor`, the console's tickets table): the list order is
-- `created_at DESC, ticket_id`, and a page after (t, id) reads `created_at <= t` in that order. The old
-- (created_at) index gives the instant but not the ties' order, so every page sorted all tickets of its first
-- instant; this one is read in list order from the cursor on and stops after `limit` rows, at any depth.
-- In the migration's transaction, not CONCURRENTLY: sqlx migrates under a session advisory lock, and a second
-- replica waiting for that lock holds a snapshot that CREATE INDEX CONCURRENTLY waits for — a deadlock when
-- replicas start together, leaving an invalid index behind. So writes to the table wait while the index is
-- built. On a large table, build it by hand first, without stopping anything:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS execution_tickets_created_id_idx
--     ON execution_tickets (created_at DESC, ticket_id);
-- (and check `pg_index.indisvalid`); this migration then finds it and only drops the old index.
CREATE INDEX IF NOT EXISTS execution_tickets_created_id_idx ON execution_tickets (created_at DESC, ticket_id);
-- Every list without filters now reads the new index; the old one only cost inserts.
DROP INDEX IF EXISTS execution_tickets_created_at_idx;
