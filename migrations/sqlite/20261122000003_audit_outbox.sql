-- The audit outbox (see the PostgreSQL migration of the same name).
CREATE TABLE IF NOT EXISTS ticket_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    ticket_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    version     INTEGER,
    actor       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    details     TEXT NOT NULL DEFAULT 'null',
    shipped     INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS ticket_events_ticket_idx ON ticket_events (ticket_id, seq);
CREATE INDEX IF NOT EXISTS ticket_events_unshipped_idx ON ticket_events (seq) WHERE NOT shipped;
