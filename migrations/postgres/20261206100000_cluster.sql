-- Cluster mode (issue #16): replicas on one database share the tickets by virtual shard (256, for ever).
--
-- cluster_members: one row per running replica (its id is new at every start), its advertised gRPC address and
-- its last heartbeat. Every commit of a replica takes a KEY SHARE lock on its own row (ticket_fence below); a
-- takeover of its shards takes FOR UPDATE on it, so the takeover waits for the commits in flight and a commit
-- that starts after it sees the new lease. Heartbeats change no key column, so they never wait for commits.
CREATE TABLE cluster_members (
    member_id    text PRIMARY KEY,
    address      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- shard_leases: who serves each virtual shard, until when, and at which epoch (+1 at every change of owner).
-- A released lease keeps its owner with expires_at in the past, so the successor knows whose commits to wait for.
CREATE TABLE shard_leases (
    shard      integer PRIMARY KEY CHECK (shard >= 0 AND shard < 256),
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO shard_leases (shard) SELECT generate_series(0, 255);

-- The fence of a group commit: which of `shards` (at `epochs`) `me` no longer holds. First the KEY SHARE lock on
-- its member row (held until the commit ends), then — in a statement of its own, so with a snapshot taken after
-- the lock was granted — the leases. Empty array: every unit may commit. A writer without a member row (it left,
-- or was removed) holds nothing: a takeover would not wait for it. The second snapshot is only fresh under READ
-- COMMITTED (each statement its own snapshot), so any other isolation is refused loudly rather than fenced wrongly.
CREATE FUNCTION ticket_fence(me text, shards integer[], epochs bigint[]) RETURNS integer[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ticket_fence needs READ COMMITTED, not %', current_setting('transaction_isolation');
    END IF;
    PERFORM 1 FROM cluster_members WHERE member_id = me FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN shards;
    END IF;
    RETURN ARRAY(
        SELECT x.s FROM unnest(shards, epochs) AS x(s, e)
        WHERE NOT EXISTS (SELECT 1 FROM shard_leases l WHERE l.shard = x.s AND l.owner = me AND l.epoch = x.e)
    );
END
$$;
