-- What the SLA engine fired for each ticket, and its next SLA instant (indexed, so tickets whose actor is
-- passivated, or that were live before a restart, are found without loading every ticket).
ALTER TABLE execution_tickets ADD COLUMN IF NOT EXISTS sla_state JSONB NOT NULL DEFAULT '{}';
ALTER TABLE execution_tickets ADD COLUMN IF NOT EXISTS next_due_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS execution_tickets_next_due_at_idx
    ON execution_tickets (next_due_at, ticket_id) WHERE next_due_at IS NOT NULL;
