-- Webhook subscriptions and the delivery outbox (see the PostgreSQL migration of the same name).
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id                   TEXT PRIMARY KEY,
    body                 TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        INTEGER,
    disabled_reason      TEXT,
    created_at           INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT,
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    ticket_id       TEXT NOT NULL,
    at              INTEGER NOT NULL,
    data            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_subscription_idx ON webhook_deliveries (subscription_id, created_at);
