-- no-transaction
-- Keyset paging of GET /api/v1/tickets (`cursor`, the console's tickets table): the list order is
-- `created_at DESC, ticket_id`, and a page after (t, id) reads `created_at <= t` in that order. The old
-- (created_at) index gives the instant but not the ties' order, so every page sorted all tickets of its first
-- instant; this one is read in list order from the cursor on and stops after `limit` rows, at any depth.
-- CONCURRENTLY, outside a transaction (the first line tells sqlx), and alone in its file (several statements in
-- one query string are one implicit transaction): on a large table, writes go on while the index is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS execution_tickets_created_id_idx ON execution_tickets (created_at DESC, ticket_id);
