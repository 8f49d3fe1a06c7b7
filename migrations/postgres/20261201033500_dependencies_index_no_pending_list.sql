-- The dependents lookup (`dependencies @> [id]`, made on every status change that can ready or block other
-- tickets) must not scan a GIN pending list. With the default fastupdate, new index entries are appended to an
-- unsorted pending list that every search reads in full until VACUUM merges it: with tickets created at a few
-- thousand per second, each lookup took ~3 ms (60 000 pending rows) instead of ~0.03 ms, and status updates
-- spent most of PostgreSQL's time there. Without fastupdate each insert updates the index itself (cheap: most
-- tickets have no or few dependencies). Existing pending entries are merged by the next VACUUM.
ALTER INDEX IF EXISTS execution_tickets_dependencies_idx SET (fastupdate = off);
