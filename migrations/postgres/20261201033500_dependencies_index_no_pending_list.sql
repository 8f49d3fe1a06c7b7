-- The dependents lookup (`dependencies @> [id]`, made on every status change that can ready or block other
-- tickets) must not scan a GIN pending list. With the default fastupdate, new index entries are appended to an
-- unsorted pending list that every search reads in full until VACUUM merges it: with tickets created at a few
-- thousand per second, each lookup took ~3 ms (60 000 pending rows) instead of ~0.03 ms, and status updates
-- spent most of PostgreSQL's time there.
-- Without fastupdate every insert updates the index itself — and a ticket without dependencies (`[]`, most of
-- them) is an "empty item" entry, one posting tree shared by all of them, which every insert and every non-HOT
-- update (each SLA write moves next_due_at) then had to go through (ingest fell to about half). So the index
-- holds only tickets that have dependencies; the lookup states the same predicate so the planner uses it.
DROP INDEX IF EXISTS execution_tickets_dependencies_idx;
CREATE INDEX execution_tickets_dependencies_idx ON execution_tickets USING gin (dependencies jsonb_path_ops)
    WITH (fastupdate = off) WHERE dependencies <> '[]'::jsonb;
