//! PostgreSQL ticket store (production). Migrations from `migrations/postgres` are embedded and applied at
//! startup (sqlx takes an advisory lock, so replicas starting together do not race).

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::query::{Query, QueryAs};
use sqlx::Postgres;

use super::copy::BinaryCopy;
use super::{Dialect, SqlStore};

/// See the module docs.
pub type PgTicketStore = SqlStore<Postgres>;

/// Batches of at most this many rows are written by one `INSERT … SELECT unnest(arrays)` rather than by COPY (see
/// `insert_many`).
const SMALL_BATCH: usize = 32;

/// A group commit with more audit records than this is not written by one statement (`commit_statement`) but in a
/// transaction, where they go in by COPY. Client requests come with one or two records each; a burst of SLA
/// breaches or a bulk ingest brings thousands.
const STATEMENT_AUDITS: usize = 256;

/// How long a store call waits for a pooled connection before it fails with `Unavailable`
/// (`POSTGRES_ACQUIRE_TIMEOUT_MS`). While the database is down a new connection cannot be made, so every
/// call that needs one waits this long: short enough that callers get a prompt 503, long enough to ride out
/// a moment of pool contention under load.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

impl PgTicketStore {
    /// Connect (retrying for up to `connect_timeout` while the server comes up) and migrate, with the
    /// default acquire timeout.
    pub async fn connect(options: PgConnectOptions, pool_size: u32, connect_timeout: Duration) -> anyhow::Result<Self> {
        Self::connect_with(options, pool_size, connect_timeout, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`connect`](Self::connect), with calls waiting at most `acquire_timeout` for a connection.
    pub async fn connect_with(
        options: PgConnectOptions,
        pool_size: u32,
        connect_timeout: Duration,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let pool = loop {
            match Self::pool_options(pool_size, acquire_timeout).connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).context("connecting to PostgreSQL"),
            }
        };
        sqlx::migrate!("./migrations/postgres").run(&pool).await.context("applying PostgreSQL migrations")?;
        Ok(SqlStore::new(pool, commit_connections(pool_size)))
    }

    /// A store whose pool connects on first use, without migrating: for a database known to be migrated, or
    /// one that may be unreachable (tests of failure handling).
    pub fn lazy(options: PgConnectOptions, pool_size: u32, acquire_timeout: Duration) -> Self {
        let pool = Self::pool_options(pool_size, acquire_timeout).connect_lazy_with(options);
        SqlStore::new(pool, commit_connections(pool_size))
    }

    /// A pooled connection is pinged before use only when it sat idle for [`PING_IF_IDLE_FOR`](super::PING_IF_IDLE_FOR): sqlx's default
    /// pings on every acquire, a round trip before every store call (under load a tenth of the service's CPU on
    /// status updates, and the same again in PostgreSQL). A connection busy a moment ago is alive or fails its
    /// call like any other; one idle across a database restart is caught by the ping and replaced.
    ///
    /// The pool has `pool_size` less the group commits' own connections (`commit_conn.rs`).
    fn pool_options(pool_size: u32, acquire_timeout: Duration) -> PgPoolOptions {
        use sqlx::Connection as _;
        PgPoolOptions::new()
            .max_connections((pool_size as usize - commit_connections(pool_size)).max(1) as u32)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= super::PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
    }
}

/// How many of `POSTGRES_POOL_SIZE` connections the group commits open for themselves (`commit_conn.rs`): half,
/// so that reads always find the other half in the pool.
fn commit_connections(pool_size: u32) -> usize {
    pool_size as usize / 2
}

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    const OUTBOX_HORIZON: &'static str = OUTBOX_HORIZON;
    const DEPENDENTS: &'static str = PgTicketStore::DEPENDENTS;
    const DEPENDS_ON: (&'static str, &'static str) =
        ("dependencies <> '[]'::jsonb AND dependencies @> jsonb_build_array(", "::text)");

    /// An array the primary key's index probes once per id.
    fn select_many_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "{} WHERE ticket_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::text::jsonb)))",
                *super::row::SELECT
            )
        });
        &SQL
    }

    fn audit_pending_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| super::audit_pending_sql(OUTBOX_HORIZON));
        &SQL
    }

    /// The dependents by the GIN index (one lookup per candidate, as `DEPENDENTS`); compensation ids compared
    /// under the ticket id's collation (mixed collations cannot be compared).
    fn prune_tickets_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            use super::retention::UNFINISHED;
            super::retention::prune_tickets_sql(&format!(
                "NOT EXISTS (SELECT 1 FROM execution_tickets d WHERE d.dependencies <> '[]'::jsonb \
                 AND d.dependencies @> jsonb_build_array(c.ticket_id) AND d.status IN {UNFINISHED}) \
                 AND NOT EXISTS (SELECT 1 FROM execution_tickets o WHERE o.status = 'COMPENSATING' \
                 AND o.compensation_ticket_id COLLATE \"C\" = c.ticket_id)",
                UNFINISHED = *UNFINISHED
            ))
        });
        &SQL
    }

    /// Transaction-scoped, so it ends with the batch: replicas take turns batch by batch. The key is the bytes of
    /// "ticketpr" (the instance lock's is "ticketsv").
    const PRUNE_GUARD: Option<&'static str> = Some("SELECT pg_try_advisory_xact_lock(8388345093869039730)");

    /// All plain updates of a group commit in one statement, `UPDATE … FROM (SELECT unnest(arrays))`: one round trip
    /// and one prepared statement whatever the batch size (a VALUES list would be a new statement, parsed
    /// and planned again, for every size). Each row is guarded by its expected version.
    async fn update_many(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[(&actors::Ticket, i64)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        static SQL: LazyLock<String> = LazyLock::new(|| format!("{} RETURNING t.ticket_id", update_sql(1, false)));
        if rows.is_empty() {
            return Ok(Default::default());
        }
        let query = bind_lifecycles(sqlx::query(&SQL), rows.iter().map(|(t, v)| (*t, *v)));
        ids(query.fetch_all(&mut **tx).await?)
    }

    /// New tickets; returns the ids inserted (an id already stored is not: the caller reports it).
    ///
    /// A large batch (bulk ingestion) goes in by binary COPY (see `BinaryCopy`), inside a savepoint. COPY
    /// cannot skip a row: if one id is already stored (a redelivered Kafka message, a client's retried create)
    /// the COPY fails as a whole, the savepoint undoes it and the batch goes in again with `INSERT … ON
    /// CONFLICT DO NOTHING`, which reports which ids were new. A small batch (the usual group commit of client
    /// creates) goes straight to that INSERT: one round trip instead of four (savepoint, COPY start, COPY data,
    /// release), each a wake-up of both processes.
    async fn insert_many(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[(usize, &actors::Ticket)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        use super::row::{TicketRow, COLUMNS};
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("COPY execution_tickets ({}) FROM STDIN (FORMAT binary)", COLUMNS.join(", ")));
        if rows.is_empty() {
            return Ok(Default::default());
        }
        if rows.len() <= SMALL_BATCH {
            return PgTicketStore::insert_new(tx, rows).await;
        }
        let mut copy = BinaryCopy::new();
        for (_, t) in rows {
            PgTicketStore::ticket_row(&mut copy, TicketRow::from(*t)).map_err(sqlx::Error::Encode)?;
        }
        sqlx::query("SAVEPOINT bulk_insert").execute(&mut **tx).await?;
        match copy.send(tx, &SQL).await {
            Ok(_) => {
                sqlx::query("RELEASE SAVEPOINT bulk_insert").execute(&mut **tx).await?;
                Ok(rows.iter().map(|(_, t)| t.ticket_id.clone()).collect())
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                sqlx::query("ROLLBACK TO SAVEPOINT bulk_insert").execute(&mut **tx).await?;
                PgTicketStore::insert_new(tx, rows).await
            }
            Err(e) => Err(e),
        }
    }

    /// The group commit of plain units in one statement (see [`Dialect::commit_statement`]): data-modifying CTEs
    /// for the fence, the new tickets, the updates and the audit records, in the implicit transaction of the
    /// statement. The parts of one statement do not see each other's rows, so what depends on another part reads
    /// its output: a row is written only if its unit's shard is not among those `ticket_fence` found lost (the
    /// fence runs first, as the other parts read it; it locks as in a transaction, held until this one ends),
    /// and an audit record only if the insert or update it rides on was written. Not for a batch of more than
    /// `SMALL_BATCH` new tickets or `STATEMENT_AUDITS` audit records: bulk rows go in faster by COPY, in a
    /// transaction.
    const ONE_STATEMENT_COMMIT: bool = true;

    fn fits_one_statement(batch: &super::Plain<'_>) -> bool {
        batch.inserts.len() <= SMALL_BATCH && batch.audits.len() <= STATEMENT_AUDITS
    }

    /// See [`fits_one_statement`](Self::fits_one_statement).
    async fn commit_statement(
        conn: &mut sqlx::PgConnection,
        batch: &super::Plain<'_>,
    ) -> Result<super::Written, sqlx::Error> {
        use sqlx::Row as _;
        // One statement per shape, each planned when first run: a plan made while the table is still small (a
        // fresh database's first creates) would look its updates up by a scan of the whole table until the next
        // ANALYZE, so the update part is prepared only once there are updates to make.
        static SQL: [LazyLock<String>; 3] = [
            LazyLock::new(|| commit_sql(true, false)),
            LazyLock::new(|| commit_sql(false, true)),
            LazyLock::new(|| commit_sql(true, true)),
        ];
        let (inserts, updates) = (!batch.inserts.is_empty(), !batch.updates.is_empty());
        let sql: &str = match (inserts, updates) {
            (true, true) => &SQL[2],
            (false, true) => &SQL[1],
            _ => &SQL[0],
        };
        let (member, shards, epochs) = match &batch.fence {
            Some((member, shards, epochs)) => (*member, shards.as_slice(), epochs.as_slice()),
            None => ("", &[][..], &[][..]),
        };
        let mut query = sqlx::query(sql).bind(member).bind(shards).bind(epochs);
        if inserts || !updates {
            query = bind_tickets(query, batch.inserts.iter().map(|(t, _)| *t));
            query = query.bind(batch.inserts.iter().map(|(_, s)| *s).collect::<Vec<i32>>());
        }
        if updates {
            query = bind_lifecycles(query, batch.updates.iter().map(|(t, v, _)| (*t, *v)));
            query = query.bind(batch.updates.iter().map(|(_, _, s)| *s).collect::<Vec<i32>>());
        }
        let query = bind_audits(query, batch.audits.iter().map(|(a, _)| *a));
        let query = query.bind(batch.audits.iter().map(|(_, on)| *on).collect::<Vec<_>>());
        let row = query.fetch_one(conn).await?;
        let lost: Vec<i32> = row.try_get(0)?;
        let lost = lost.into_iter().filter_map(|s| u16::try_from(s).ok()).collect();
        let inserted: Vec<String> = row.try_get(1)?;
        let updated: Vec<String> = row.try_get(2)?;
        Ok((lost, inserted.into_iter().collect(), updated.into_iter().collect()))
    }

    /// One call of `ticket_fence` (a function, so its two statements run in one round trip, each with a snapshot
    /// of its own: the lock first, then the leases as they are once it is held).
    async fn fenced_out(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        fence: &actors::store::Fence,
    ) -> Result<std::collections::HashSet<u16>, sqlx::Error> {
        let (shards, epochs) = super::fence_pairs(fence);
        if shards.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let lost: Vec<i32> = sqlx::query_scalar("SELECT ticket_fence($1, $2, $3)")
            .bind(&fence.member)
            .bind(&shards)
            .bind(&epochs)
            .fetch_one(&mut **tx)
            .await?;
        Ok(lost.into_iter().filter_map(|s| u16::try_from(s).ok()).collect())
    }

    /// Audit records into the outbox in one binary COPY (nothing to conflict with: the key is generated).
    async fn insert_audits(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        events: &[&actors::history::AuditEvent],
    ) -> Result<(), sqlx::Error> {
        use super::row::AUDIT_COLUMNS;
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("COPY ticket_events ({AUDIT_COLUMNS}) FROM STDIN (FORMAT binary)"));
        // A small batch in one statement (one round trip; COPY takes two), as for tickets (`insert_many`).
        static INSERT: LazyLock<String> = LazyLock::new(|| {
            let names: Vec<&str> = AUDIT_COLUMNS.split(", ").collect();
            format!(
                "INSERT INTO ticket_events ({AUDIT_COLUMNS}) SELECT * FROM {} AS a",
                unnested(&AUDIT_TYPES, &names, 1)
            )
        });
        if events.is_empty() {
            return Ok(());
        }
        if events.len() <= SMALL_BATCH {
            bind_audits(sqlx::query(&INSERT), events.iter().copied()).execute(&mut **tx).await?;
            return Ok(());
        }
        let mut copy = BinaryCopy::new();
        for e in events {
            PgTicketStore::audit_row(&mut copy, e).map_err(sqlx::Error::Encode)?;
        }
        copy.send(tx, &SQL).await?;
        Ok(())
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn shorten<'q, 'a: 'q>(query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        query
    }

    fn shorten_as<'q, 'a: 'q, O>(
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
    }
}

impl PgTicketStore {
    /// One COPY row of a ticket, in [`COLUMNS`](super::row::COLUMNS) order.
    fn ticket_row(copy: &mut BinaryCopy, r: super::row::TicketRow) -> Result<(), sqlx::error::BoxDynError> {
        copy.row(37);
        copy.field(r.ticket_id)?;
        copy.field(r.plan_id)?;
        copy.field(r.intent_id)?;
        copy.field(r.decision_id)?;
        copy.field(r.correlation_id)?;
        copy.field(r.trace_id)?;
        copy.field(r.span_id)?;
        copy.field(r.task_id)?;
        copy.field(r.task_type)?;
        copy.field(r.description)?;
        copy.field(r.dependencies)?;
        copy.field(r.status)?;
        copy.field(r.priority)?;
        copy.field(r.risk_band)?;
        copy.field(r.sla_deadline)?;
        copy.field(r.sla_timeout_ms)?;
        copy.field(r.sla_max_retries)?;
        copy.field(r.qos_delivery_mode)?;
        copy.field(r.qos_consistency)?;
        copy.field(r.qos_durability)?;
        copy.field(r.parameters)?;
        copy.field(r.required_capabilities)?;
        copy.field(r.security_level)?;
        copy.field(r.created_at)?;
        copy.field(r.started_at)?;
        copy.field(r.completed_at)?;
        copy.field(r.estimated_duration_ms)?;
        copy.field(r.actual_duration_ms)?;
        copy.field(r.retry_count)?;
        copy.field(r.error_message)?;
        copy.field(r.compensation_ticket_id)?;
        copy.field(r.metadata)?;
        copy.field(r.schema_version)?;
        copy.field(r.version)?;
        copy.field(r.updated_at)?;
        copy.field(r.sla_state)?;
        copy.field(r.next_due_at)
    }

    /// New tickets in one `INSERT … SELECT unnest(arrays) ON CONFLICT DO NOTHING RETURNING ticket_id`.
    async fn insert_new(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[(usize, &actors::Ticket)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        static SQL: LazyLock<String> = LazyLock::new(|| format!("{} RETURNING ticket_id", insert_sql(1, false)));
        if rows.is_empty() {
            return Ok(Default::default());
        }
        ids(bind_tickets(sqlx::query(&SQL), rows.iter().map(|(_, t)| *t)).fetch_all(&mut **tx).await?)
    }

    fn audit_row(copy: &mut BinaryCopy, e: &actors::history::AuditEvent) -> Result<(), sqlx::error::BoxDynError> {
        copy.row(10);
        copy.field(e.event_id.as_str())?;
        copy.field(e.ticket_id.as_str())?;
        copy.field(e.kind.as_str())?;
        copy.field(e.from_status.as_deref())?;
        copy.field(e.to_status.as_deref())?;
        copy.field(e.version)?;
        copy.field(e.actor.as_str())?;
        copy.field(e.at)?;
        copy.field(sqlx::types::Json(&e.details))?;
        copy.field(e.traceparent.as_deref())
    }
}

/// Turn rows into one array per column, bound in order to `$query`:
/// `let query = columns!(iter, |row| { name: expr, … } => sqlx::query(&SQL));`
///
/// A macro, not a function: it declares one vector per named column, each of its column's own type (13 and 37
/// of them), fills them in one pass over the rows and binds them in order. A function could only take or return
/// such a list as a tuple or struct written out per statement, i.e. every column named three times.
macro_rules! columns {
    ($rows:expr, |$row:pat_param| { $($name:ident : $value:expr),* $(,)? } => $query:expr) => {{
        let rows = $rows;
        let n = rows.len();
        $( let mut $name = Vec::with_capacity(n); )*
        for $row in rows {
            $( $name.push($value); )*
        }
        $query $( .bind($name) )*
    }};
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// The array types of a ticket row, in [`COLUMNS`](super::row::COLUMNS) order (see [`bind_tickets`]).
const TICKET_TYPES: [&str; 37] = [
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "text",
    "text",
    "text",
    "timestamptz",
    "bigint",
    "integer",
    "text",
    "text",
    "text",
    "jsonb",
    "jsonb",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "bigint",
    "bigint",
    "integer",
    "text",
    "text",
    "jsonb",
    "integer",
    "bigint",
    "timestamptz",
    "jsonb",
    "timestamptz",
];

/// The array types of an update: the ticket id, the [`LIFECYCLE`](super::row::LIFECYCLE) columns, the expected
/// version (see [`bind_lifecycles`]).
const LIFECYCLE_TYPES: [&str; 13] = [
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "bigint",
    "integer",
    "text",
    "text",
    "bigint",
    "timestamptz",
    "jsonb",
    "timestamptz",
    "bigint",
];

/// The array types of an outbox row, in [`AUDIT_COLUMNS`](super::row::AUDIT_COLUMNS) order (see [`bind_audits`]).
const AUDIT_TYPES: [&str; 10] = ["text", "text", "text", "text", "text", "bigint", "text", "bigint", "jsonb", "text"];

/// `(SELECT unnest($first::type[]) AS name, …)`: rows made of one array parameter per column, numbered from
/// `first`, the columns named `names`.
///
/// Why in the select list and not `FROM UNNEST(a, b, …)`: in FROM, PostgreSQL runs each array's `unnest` on its
/// own and materializes it in a tuplestore (a 16 KB allocation each) before joining them up. A commit statement has
/// about 50 arrays, and that cost more than the rows themselves: in pgbench, 40 one-element arrays took 60 µs per
/// statement in FROM and 27 µs in the select list, where they run in lockstep, one row at a time. Both forms stop
/// at the longest array and fill the shorter ones with NULLs; the arrays bound here all have the same length.
fn unnested(types: &[&str], names: &[&str], first: usize) -> String {
    debug_assert_eq!(types.len(), names.len());
    let columns: Vec<String> = (types.iter().zip(names).enumerate())
        .map(|(i, (t, name))| format!("unnest(${}::{t}[]) AS {name}", first + i))
        .collect();
    format!("(SELECT {})", columns.join(", "))
}

/// `cte.a, cte.b, …` of a comma-separated column list.
fn qualified(cte: &str, columns: &[&str]) -> String {
    columns.iter().map(|c| format!("{cte}.{c}")).collect::<Vec<_>>().join(", ")
}

/// The fence condition of the one-statement commit (see `commit_statement`): the row's unit is of a shard still
/// held (-1, not fenced, is never lost). The cast makes the fence's one array the list; without it `ALL (…)`
/// would take the subquery's rows as the list and compare a shard with an array.
const HELD: &str = "<> ALL ((SELECT lost FROM fence)::integer[])";

/// New tickets from one array per column, numbered from `first`, `ON CONFLICT DO NOTHING`. `fenced`: one more
/// array, each row's fence shard, and only rows of shards still held (see `commit_statement`).
fn insert_sql(first: usize, fenced: bool) -> String {
    use super::row::COLUMNS;
    let (mut types, mut names) = (TICKET_TYPES.to_vec(), COLUMNS.to_vec());
    let cond = match fenced {
        true => {
            types.push("integer");
            names.push("fence_shard");
            format!(" WHERE v.fence_shard {HELD}")
        }
        false => String::new(),
    };
    format!(
        "INSERT INTO execution_tickets ({}) SELECT {} FROM {} AS v{cond} ON CONFLICT (ticket_id) DO NOTHING",
        COLUMNS.join(", "),
        qualified("v", &COLUMNS),
        unnested(&types, &names, first),
    )
}

/// Updates from one array per column, numbered from `first` (`UPDATE … FROM (SELECT unnest(arrays))`: one prepared
/// statement whatever the batch size), each row guarded by its expected version. `fenced`: as [`insert_sql`].
fn update_sql(first: usize, fenced: bool) -> String {
    use super::row::LIFECYCLE;
    let sets: Vec<String> = LIFECYCLE.iter().map(|c| format!("{c} = v.{c}")).collect();
    let mut types = LIFECYCLE_TYPES.to_vec();
    let mut names: Vec<&str> = [&["ticket_id"][..], &LIFECYCLE, &["expected_version"]].concat();
    let cond = match fenced {
        true => {
            types.push("integer");
            names.push("fence_shard");
            format!(" AND v.fence_shard {HELD}")
        }
        false => String::new(),
    };
    format!(
        "UPDATE execution_tickets AS t SET {} FROM {} AS v \
         WHERE t.ticket_id = v.ticket_id AND t.version = v.expected_version{cond}",
        sets.join(", "),
        unnested(&types, &names, first),
    )
}

/// The one-statement group commit (see `commit_statement`) with a part for new tickets, for updates, or both. Its
/// parameters: this replica, the fence's shards and epochs; each part's arrays and its fence shards; the audit
/// records' arrays and the ticket each rides on.
fn commit_sql(inserts: bool, updates: bool) -> String {
    use super::row::{AUDIT_COLUMNS, COLUMNS, LIFECYCLE};
    let audit_columns: Vec<&str> = AUDIT_COLUMNS.split(", ").collect();
    let mut next = 4;
    let mut parts = vec!["fence AS MATERIALIZED (SELECT CASE WHEN cardinality($2::integer[]) = 0 \
        THEN '{}'::integer[] ELSE ticket_fence($1::text, $2, $3::bigint[]) END AS lost)"
        .to_owned()];
    let mut written = Vec::new();
    if inserts {
        parts.push(format!("ins AS ({} RETURNING ticket_id)", insert_sql(next, true)));
        written.push("SELECT ticket_id FROM ins");
        next += COLUMNS.len() + 1;
    }
    if updates {
        parts.push(format!("upd AS ({} RETURNING t.ticket_id)", update_sql(next, true)));
        written.push("SELECT ticket_id FROM upd");
        next += LIFECYCLE.len() + 3;
    }
    let types = [&AUDIT_TYPES[..], &["text"]].concat();
    let names = [&audit_columns[..], &["unit"]].concat();
    parts.push(format!(
        "aud AS (INSERT INTO ticket_events ({AUDIT_COLUMNS}) SELECT {} FROM {} AS a \
         WHERE a.unit IS NULL OR a.unit IN ({}))",
        qualified("a", &audit_columns),
        unnested(&types, &names, next),
        written.join(" UNION ALL "),
    ));
    let ids = |part: &str, present: bool| match present {
        true => format!("ARRAY(SELECT ticket_id FROM {part})"),
        false => "'{}'::text[]".to_owned(),
    };
    format!(
        "WITH {} SELECT (SELECT lost FROM fence), {}, {}",
        parts.join(", "),
        ids("ins", inserts),
        ids("upd", updates)
    )
}

/// The tickets' columns bound as arrays ([`TICKET_TYPES`]).
fn bind_tickets<'q, 'a>(query: PgQuery<'q>, rows: impl ExactSizeIterator<Item = &'a actors::Ticket>) -> PgQuery<'q> {
    use super::row::TicketRow;
    columns!(rows.map(TicketRow::from), |r| {
        ticket_id: r.ticket_id,
        plan_id: r.plan_id,
        intent_id: r.intent_id,
        decision_id: r.decision_id,
        correlation_id: r.correlation_id,
        trace_id: r.trace_id,
        span_id: r.span_id,
        task_id: r.task_id,
        task_type: r.task_type,
        description: r.description,
        dependencies: r.dependencies,
        status: r.status,
        priority: r.priority,
        risk_band: r.risk_band,
        sla_deadline: r.sla_deadline,
        sla_timeout_ms: r.sla_timeout_ms,
        sla_max_retries: r.sla_max_retries,
        qos_delivery_mode: r.qos_delivery_mode,
        qos_consistency: r.qos_consistency,
        qos_durability: r.qos_durability,
        parameters: r.parameters,
        required_capabilities: r.required_capabilities,
        security_level: r.security_level,
        created_at: r.created_at,
        started_at: r.started_at,
        completed_at: r.completed_at,
        estimated_duration_ms: r.estimated_duration_ms,
        actual_duration_ms: r.actual_duration_ms,
        retry_count: r.retry_count,
        error_message: r.error_message,
        compensation_ticket_id: r.compensation_ticket_id,
        metadata: r.metadata,
        schema_version: r.schema_version,
        version: r.version,
        updated_at: r.updated_at,
        sla_state: r.sla_state,
        next_due_at: r.next_due_at,
    } => query)
}

/// Updates bound as arrays ([`LIFECYCLE_TYPES`]): the ticket's lifecycle columns and the version it must have.
fn bind_lifecycles<'q, 'a>(
    query: PgQuery<'q>,
    rows: impl ExactSizeIterator<Item = (&'a actors::Ticket, i64)>,
) -> PgQuery<'q> {
    use super::row::LifecycleRow;
    columns!(rows.map(|(t, v)| (LifecycleRow::from(t), v)), |(r, expected)| {
        ticket_id: r.ticket_id,
        status: r.status,
        started_at: r.started_at,
        completed_at: r.completed_at,
        actual_duration_ms: r.actual_duration_ms,
        retry_count: r.retry_count,
        error_message: r.error_message,
        compensation_ticket_id: r.compensation_ticket_id,
        version: r.version,
        updated_at: r.updated_at,
        sla_state: r.sla_state,
        next_due_at: r.next_due_at,
        expected_version: expected,
    } => query)
}

/// Outbox rows bound as arrays ([`AUDIT_TYPES`]).
fn bind_audits<'q>(
    query: PgQuery<'q>,
    events: impl ExactSizeIterator<Item = &'q actors::history::AuditEvent>,
) -> PgQuery<'q> {
    columns!(events, |e| {
        event_id: e.event_id.as_str(),
        ticket_id: e.ticket_id.as_str(),
        kind: e.kind.as_str(),
        from_status: e.from_status.as_deref(),
        to_status: e.to_status.as_deref(),
        version: e.version,
        actor: e.actor.as_str(),
        at: e.at,
        details: sqlx::types::Json(&e.details),
        traceparent: e.traceparent.as_deref(),
    } => query)
}

/// The ids a `… RETURNING ticket_id` statement returned.
fn ids(rows: Vec<sqlx::postgres::PgRow>) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    use sqlx::Row as _;
    rows.iter().map(|r| r.try_get(0)).collect()
}

impl PgTicketStore {
    /// (finished, dependent) pairs: the PENDING tickets that list one of the ids of `$1` (a JSON array) among
    /// their dependencies. The candidates come from the GIN index alone, one probe per id (`@> ANY`, a bitmap
    /// scan; a join on the ids let the planner scan the whole table instead), in a materialized CTE,
    /// and only then are filtered by status: with stale statistics (a burst of creates since the last ANALYZE)
    /// the planner otherwise walked the status index's every PENDING entry, or AND-ed it with the GIN's — 1 ms
    /// per lookup in `ticket-bench crud`, 30 ms at 100 000 PENDING tickets — and every COMPLETED, FAILED or
    /// CANCELLED change is looked up.
    pub const DEPENDENTS: &'static str = "WITH c AS MATERIALIZED (SELECT ticket_id, status, dependencies \
        FROM execution_tickets WHERE dependencies <> '[]'::jsonb AND dependencies @> ANY (ARRAY(\
        SELECT jsonb_build_array(x) FROM jsonb_array_elements_text($1::text::jsonb) x))) \
        SELECT DISTINCT f.id, c.ticket_id FROM c, jsonb_array_elements_text($1::text::jsonb) f(id) \
        WHERE c.status = 'PENDING' AND c.dependencies @> jsonb_build_array(f.id)";
}

/// The oldest transaction id that may still write an outbox row of **this database**, as seen by the
/// statement's snapshot: its `xmax`, or the oldest transaction it sees running that is not known to belong to
/// another database of the server. Every transaction below it has ended before the snapshot was taken, so its
/// rows are all visible (or rolled back), and no later one can write a smaller `txid` (ids only grow).
///
/// Why not the snapshot's `xmin`: that is server-wide, so another application's long transaction in another
/// database held this service's shipping back. A transaction is bound to its database for life, so one that
/// `pg_stat_activity` (or `pg_prepared_xacts`) shows in another database cannot write here; autovacuum never
/// writes user rows. That list is read after the snapshot was taken: a running transaction that has ended by
/// then is simply not excluded (held back for one more poll), so the rule only errs towards waiting. Needs no
/// privilege: `datname` and `backend_xid` are shown to every role (`backend_type` only with
/// `pg_read_all_stats`; without it autovacuum's transactions in this database also hold back briefly).
/// The list must be read fresh: this runs as a statement of its own, outside any transaction that read the
/// activity view before (PostgreSQL caches it until the transaction ends).
const OUTBOX_HORIZON: &str = "(WITH foreign_xids AS MATERIALIZED ( \
             SELECT backend_xid AS xid FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
             AND (datname <> current_database() OR backend_type = 'autovacuum worker') \
             UNION ALL SELECT transaction FROM pg_prepared_xacts WHERE database <> current_database()) \
         SELECT LEAST(pg_snapshot_xmax(s)::text::bigint, (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) x \
                      WHERE xid(x) NOT IN (SELECT xid FROM foreign_xids))) \
         FROM pg_current_snapshot() s)";
