-- ticket_fence, the same function, planned once per session. PL/pgSQL caches its statements' plans, but the
-- plan cache compared the generic plan of the lease lookup (which assumes 10 shards in `unnest`) with the custom
-- plans for the actual one to three, found it dearer and planned the statement afresh at every call: 0.15–0.2 ms
-- per group commit, most of PostgreSQL's cost of a small one (pgbench, one client: an INSERT with the fence took
-- 0.21–0.25 ms, without it 0.06 ms; with this setting 0.08 ms). Each statement of the function looks up a primary
-- key, so the generic plan is the right one for any batch. Safe during a rolling upgrade: the answers are the
-- same.
ALTER FUNCTION ticket_fence(text, integer[], bigint[]) SET plan_cache_mode = force_generic_plan;
