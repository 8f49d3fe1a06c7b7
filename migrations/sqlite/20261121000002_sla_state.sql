-- What the SLA engine fired for each ticket, and its next SLA instant (indexed).
ALTER TABLE execution_tickets ADD COLUMN sla_state TEXT NOT NULL DEFAULT '{}';
ALTER TABLE execution_tickets ADD COLUMN next_due_at TEXT;
CREATE INDEX IF NOT EXISTS execution_tickets_next_due_at_idx
    ON execution_tickets (next_due_at, ticket_id) WHERE next_due_at IS NOT NULL;
