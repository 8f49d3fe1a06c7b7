-- Ticket events published to Kafka from the same outbox as the audit trail. Each outbox consumer has its own
-- flag per row (`shipped`: MongoDB, `published`: Kafka), so one being down never holds the other back; a flag,
-- not a `seq` high-water mark, because sequence numbers are taken before commit and rows commit out of order.
--
-- Rows written before this migration count as published: the history that predates the publisher is not
-- replayed onto the topics at the upgrade (an operator who wants it can set `published = FALSE` on those rows).
-- Added with DEFAULT TRUE and then switched to DEFAULT FALSE, which PostgreSQL does without rewriting the table,
-- and which leaves the partial index small (only rows that still wait).
ALTER TABLE ticket_events ADD COLUMN IF NOT EXISTS published BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE ticket_events ALTER COLUMN published SET DEFAULT FALSE;
CREATE INDEX IF NOT EXISTS ticket_events_unpublished_idx ON ticket_events (seq) WHERE NOT published;

