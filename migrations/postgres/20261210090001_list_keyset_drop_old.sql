-- no-transaction
-- Every list without filters now reads execution_tickets_created_id_idx; the old (created_at) index only cost
-- inserts. Dropped CONCURRENTLY (see the previous migration), so reads and writes of the table go on meanwhile.
DROP INDEX CONCURRENTLY IF EXISTS execution_tickets_created_at_idx;
