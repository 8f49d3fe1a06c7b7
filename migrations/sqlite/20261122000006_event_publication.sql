-- Ticket events published to Kafka (see the PostgreSQL migration of the same name): a flag of its own per
-- outbox row; rows written before this migration count as published.
ALTER TABLE ticket_events ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
UPDATE ticket_events SET published = 1;
CREATE INDEX IF NOT EXISTS ticket_events_unpublished_idx ON ticket_events (seq) WHERE NOT published;
