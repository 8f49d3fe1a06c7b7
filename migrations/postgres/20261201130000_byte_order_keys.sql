-- Index keys that are identifiers or enum names compare byte by byte (COLLATE "C"), and B-tree indexes whose
-- keys are unique do not try to deduplicate.
-- Why: at ingest rates most of PostgreSQL's time goes into B-tree inserts (six per ticket, two per audit
-- record). Under the database's default collation each text comparison goes through the C library's collation
-- (`strcoll`, after copying both strings to make them NUL-terminated); under "C" it is one `memcmp`. Nothing
-- sorts these columns for people to read: ticket ids only break ties between equal `created_at`, and byte order
-- is the order the embedded (SQLite) store uses. A leaf page about to split is first scanned for duplicates
-- to merge; in an index whose keys end with a unique column there are none, so that scan is wasted. (Indexes
-- ending with `created_at` keep deduplication: many tickets share a millisecond.)
-- Upgrade cost: changing a column's collation rebuilds the indexes on it (not the table) while holding a lock on
-- the table; `deduplicate_items` only changes how later inserts are made.
ALTER TABLE execution_tickets
    ALTER COLUMN ticket_id TYPE TEXT COLLATE "C",
    ALTER COLUMN plan_id TYPE TEXT COLLATE "C",
    ALTER COLUMN intent_id TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN priority TYPE TEXT COLLATE "C";
-- Compared with execution_tickets.ticket_id (joins must not mix collations).
ALTER TABLE ticket_events ALTER COLUMN ticket_id TYPE TEXT COLLATE "C";
ALTER TABLE webhook_deliveries ALTER COLUMN ticket_id TYPE TEXT COLLATE "C";
ALTER INDEX execution_tickets_next_due_at_idx SET (deduplicate_items = off);
ALTER INDEX ticket_events_ticket_idx SET (deduplicate_items = off);
