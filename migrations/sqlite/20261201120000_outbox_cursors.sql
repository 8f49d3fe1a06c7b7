-- Outbox cursors instead of per-row flags (see the PostgreSQL migration of the same name). The embedded store
-- has one writer at a time, so its rows commit in seq order: txid stays 0 and the cursor is in effect over seq.
ALTER TABLE ticket_events ADD COLUMN txid INTEGER NOT NULL DEFAULT 0;
CREATE INDEX ticket_events_outbox_idx ON ticket_events (txid, seq);

CREATE TABLE outbox_cursors (
    consumer TEXT PRIMARY KEY,
    txid     INTEGER NOT NULL,
    seq      INTEGER NOT NULL
);
INSERT INTO outbox_cursors (consumer, txid, seq) VALUES
    ('audit', 0, COALESCE((SELECT min(seq) - 1 FROM ticket_events WHERE NOT shipped),
                          (SELECT max(seq) FROM ticket_events), 0)),
    ('events', 0, COALESCE((SELECT min(seq) - 1 FROM ticket_events WHERE NOT published),
                           (SELECT max(seq) FROM ticket_events), 0));

DROP INDEX ticket_events_unshipped_idx;
DROP INDEX ticket_events_unpublished_idx;
ALTER TABLE ticket_events DROP COLUMN shipped;
ALTER TABLE ticket_events DROP COLUMN published;
