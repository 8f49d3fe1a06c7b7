-- The audit outbox: one row per committed change, written in the change's own transaction. `seq` orders a
-- ticket's history and the shipping; `shipped` flips once the AuditActor has stored the row in MongoDB. The
-- rows stay as the local history (GET …/history reads them, whether or not MongoDB is configured).
CREATE TABLE IF NOT EXISTS ticket_events (
    seq         BIGSERIAL PRIMARY KEY,
    event_id    TEXT NOT NULL,
    ticket_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    version     BIGINT,
    actor       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    details     JSONB NOT NULL DEFAULT 'null',
    shipped     BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX IF NOT EXISTS ticket_events_ticket_idx ON ticket_events (ticket_id, seq);
CREATE INDEX IF NOT EXISTS ticket_events_unshipped_idx ON ticket_events (seq) WHERE NOT shipped;
