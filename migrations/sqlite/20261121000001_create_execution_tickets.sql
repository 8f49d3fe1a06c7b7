-- Execution tickets (embedded SQLite store: timestamps as RFC 3339 text, JSON as text). Validation happens in the service; these constraints are only a backstop.
CREATE TABLE IF NOT EXISTS execution_tickets (
    ticket_id              TEXT PRIMARY KEY CHECK (length(ticket_id) BETWEEN 1 AND 255),
    plan_id                TEXT NOT NULL,
    intent_id              TEXT NOT NULL,
    decision_id            TEXT NOT NULL,
    correlation_id         TEXT,
    trace_id               TEXT,
    span_id                TEXT,
    task_id                TEXT NOT NULL,
    task_type              TEXT NOT NULL,
    description            TEXT NOT NULL,
    dependencies           TEXT NOT NULL DEFAULT '[]',
    status                 TEXT NOT NULL,
    priority               TEXT NOT NULL,
    risk_band              TEXT NOT NULL,
    sla_deadline           TEXT NOT NULL,
    sla_timeout_ms         BIGINT NOT NULL CHECK (sla_timeout_ms > 0),
    sla_max_retries        INTEGER NOT NULL CHECK (sla_max_retries >= 0),
    qos_delivery_mode      TEXT NOT NULL,
    qos_consistency        TEXT NOT NULL,
    qos_durability         TEXT NOT NULL,
    parameters             TEXT NOT NULL DEFAULT '{}',
    required_capabilities  TEXT NOT NULL DEFAULT '[]',
    security_level         TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    started_at             TEXT,
    completed_at           TEXT,
    estimated_duration_ms  BIGINT,
    actual_duration_ms     BIGINT,
    retry_count            INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    error_message          TEXT,
    compensation_ticket_id TEXT,
    metadata               TEXT NOT NULL DEFAULT '{}',
    schema_version         INTEGER NOT NULL DEFAULT 1,
    version                BIGINT NOT NULL CHECK (version >= 1),
    updated_at             TEXT NOT NULL,
    CHECK (completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at)
);

CREATE INDEX IF NOT EXISTS execution_tickets_plan_id_idx ON execution_tickets (plan_id);
CREATE INDEX IF NOT EXISTS execution_tickets_intent_id_idx ON execution_tickets (intent_id);
CREATE INDEX IF NOT EXISTS execution_tickets_status_priority_idx ON execution_tickets (status, priority);
CREATE INDEX IF NOT EXISTS execution_tickets_created_at_idx ON execution_tickets (created_at);
