-- List queries filter by plan, intent or status+priority and order by created_at: index exactly that. The
-- old (status, priority) index held a handful of distinct keys, so every insert searched a huge run of
-- duplicates (measured: half of an ingest transaction's time went into that one index).
DROP INDEX IF EXISTS execution_tickets_status_priority_idx;
DROP INDEX IF EXISTS execution_tickets_plan_id_idx;
DROP INDEX IF EXISTS execution_tickets_intent_id_idx;
CREATE INDEX IF NOT EXISTS execution_tickets_status_priority_created_idx
    ON execution_tickets (status, priority, created_at);
CREATE INDEX IF NOT EXISTS execution_tickets_plan_created_idx ON execution_tickets (plan_id, created_at);
CREATE INDEX IF NOT EXISTS execution_tickets_intent_created_idx ON execution_tickets (intent_id, created_at);
