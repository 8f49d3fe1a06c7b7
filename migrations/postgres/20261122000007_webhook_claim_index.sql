-- Claims take each subscription's due deliveries separately (a budget per endpoint, so a hanging endpoint's
-- backlog neither fills the claim nor is scanned for the others): one index range per subscription. It also
-- serves the legacy targets (subscription_id IS NULL), so the single due-time index goes.
CREATE INDEX IF NOT EXISTS webhook_deliveries_claim_idx ON webhook_deliveries (subscription_id, next_attempt_at)
    WHERE status = 'pending';
DROP INDEX IF EXISTS webhook_deliveries_due_idx;
