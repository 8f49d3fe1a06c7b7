-- Outbox consumers (MongoDB audit trail, Kafka event stream) move a cursor over (txid, seq) instead of flipping a
-- flag per row: the flags were in partial indexes, so every flip wrote a new version of the row and new entries
-- in its indexes, once per consumer — about a third of the database's work under ingest. `txid` is the writing
-- transaction (top-level, also from a savepoint); a consumer only reads rows whose transaction is older than
-- every transaction still running (below the snapshot's xmin), so no row can commit behind its cursor.
--
-- Rows written before this migration get txid 0 (a catalog default, no table rewrite). Each cursor starts just
-- before the first row its consumer had not taken yet, so nothing waiting is lost; rows after that point that
-- had already been taken are offered once more (at least once: MongoDB stores an event_id once, Kafka readers
-- de-duplicate by event-id).
ALTER TABLE ticket_events ADD COLUMN txid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ticket_events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
-- The consumers read in (txid, seq) order; nothing reads by seq alone any more (the history goes by ticket), so
-- that index is the primary key: one index per row fewer to write than with both.
ALTER TABLE ticket_events DROP CONSTRAINT ticket_events_pkey, ADD PRIMARY KEY (txid, seq);

CREATE TABLE outbox_cursors (
    consumer TEXT PRIMARY KEY,
    txid     BIGINT NOT NULL,
    seq      BIGINT NOT NULL
);
INSERT INTO outbox_cursors (consumer, txid, seq) VALUES
    ('audit', 0, COALESCE((SELECT min(seq) - 1 FROM ticket_events WHERE NOT shipped),
                          (SELECT max(seq) FROM ticket_events), 0)),
    ('events', 0, COALESCE((SELECT min(seq) - 1 FROM ticket_events WHERE NOT published),
                           (SELECT max(seq) FROM ticket_events), 0));

DROP INDEX ticket_events_unshipped_idx;
DROP INDEX ticket_events_unpublished_idx;
ALTER TABLE ticket_events DROP COLUMN shipped, DROP COLUMN published;
