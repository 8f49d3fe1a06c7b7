-- The W3C traceparent of the work that made a change: audit records (and the events published from them) and
-- webhook deliveries carry it, so a receiver's span joins the trace of the request that caused the event.
ALTER TABLE ticket_events ADD COLUMN traceparent TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN traceparent TEXT;
