-- ticket_fence, the same rule (see 20261206100000_cluster.sql), cheaper for the usual group commit. Its lease
-- check was a hash anti-join over all 256 leases, 0.12 ms, for a batch that touches one to a few shards; a
-- batch of at most 32 shards now looks each one up by the primary key (~6 µs each). Replacing the body in place
-- is safe during a rolling upgrade: old and new replicas get the same answers.
CREATE OR REPLACE FUNCTION ticket_fence(me text, shards integer[], epochs bigint[]) RETURNS integer[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ticket_fence needs READ COMMITTED, not %', current_setting('transaction_isolation');
    END IF;
    PERFORM 1 FROM cluster_members WHERE member_id = me FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN shards;
    END IF;
    IF cardinality(shards) <= 32 THEN
        RETURN ARRAY(
            SELECT x.s FROM unnest(shards, epochs) AS x(s, e)
            WHERE (SELECT l.owner = me AND l.epoch = x.e FROM shard_leases l WHERE l.shard = x.s) IS NOT TRUE
        );
    END IF;
    RETURN ARRAY(
        SELECT x.s FROM unnest(shards, epochs) AS x(s, e)
        WHERE NOT EXISTS (SELECT 1 FROM shard_leases l WHERE l.shard = x.s AND l.owner = me AND l.epoch = x.e)
    );
END
$$;
