-- Webhook subscriptions: the owner's part (url, events, filters, paused, secrets) as one JSON document, and
-- the delivery health the service maintains in columns of its own (so neither overwrites the other).
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id                   TEXT PRIMARY KEY,
    body                 JSONB NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        BIGINT,
    disabled_reason      TEXT,
    created_at           BIGINT NOT NULL
);

-- The delivery outbox: written in the transaction of the change that caused it; `id` is the webhook-id.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT,
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    ticket_id       TEXT NOT NULL,
    at              BIGINT NOT NULL,
    data            JSONB NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    next_attempt_at BIGINT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_subscription_idx ON webhook_deliveries (subscription_id, created_at);

-- Dependents of a ticket (ticket.ready / ticket.blocked): which tickets list it in their dependencies.
CREATE INDEX IF NOT EXISTS execution_tickets_dependencies_idx ON execution_tickets USING gin (dependencies jsonb_path_ops);
