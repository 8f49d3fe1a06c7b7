//! The invariants of the torture run, read from the store's own tables (tickets, the event outbox
//! `ticket_events`, the webhook outbox `webhook_deliveries`) and from the receiver. Each check returns
//! `Err(detail)` when the invariant does not hold.

use std::collections::{BTreeMap, HashSet};

use sqlx::{PgConnection, Row};

use super::load::Ledger;
use super::receiver::Received;

pub type Verdict = Result<(), String>;

/// How many times each invariant was checked, and its failures.
#[derive(Default)]
pub struct Verdicts {
    checks: BTreeMap<&'static str, (u32, Vec<String>)>,
}

impl Verdicts {
    /// Record one check of `name` made at `when` (e.g. "restart 3").
    pub fn record(&mut self, name: &'static str, when: &str, verdict: Verdict) {
        let entry = self.checks.entry(name).or_default();
        entry.0 += 1;
        if let Err(detail) = verdict {
            eprintln!("   FAIL {name} ({when}): {detail}");
            entry.1.push(format!("{when}: {detail}"));
        }
    }

    pub fn all_pass(&self) -> bool {
        self.checks.values().all(|(_, failures)| failures.is_empty())
    }

    /// One line per invariant: PASS/FAIL, how often checked, the first failure.
    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|(name, (n, failures))| match failures.first() {
                None => format!("PASS {name} (checked {n}×)"),
                Some(first) => format!("FAIL {name} ({} of {n} checks failed; first: {first})", failures.len()),
            })
            .collect()
    }
}

/// Every acknowledged create is stored, and every ticket has at least the version last acknowledged for it:
/// (creates verdict, updates verdict).
pub async fn acknowledged(db: &mut PgConnection, acked: &Ledger) -> anyhow::Result<(Verdict, Verdict)> {
    let ids: Vec<String> = acked.acked.keys().cloned().collect();
    let rows = sqlx::query("SELECT ticket_id, version FROM execution_tickets WHERE ticket_id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut *db)
        .await?;
    let stored: std::collections::HashMap<String, i64> =
        rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains_key(*id)).collect();
    let creates = match missing.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} of {} acknowledged creates missing (e.g. {first})", missing.len(), ids.len())),
    };
    let stale: Vec<String> = acked
        .updated
        .iter()
        .filter_map(|(id, v)| match stored.get(id) {
            Some(s) if s >= v => None,
            s => Some(format!("{id}: acknowledged v{v}, stored {s:?}")),
        })
        .collect();
    let updates = match stale.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} acknowledged updates lost (e.g. {first})", stale.len())),
    };
    Ok((creates, updates))
}

async fn count(db: &mut PgConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query(sql).fetch_one(db).await?.get::<i64, _>(0))
}

fn zero(n: i64, what: &str) -> Verdict {
    if n == 0 {
        Ok(())
    } else {
        Err(format!("{n} {what}"))
    }
}

/// No ticket was created twice: one `ticket.created` event per ticket, and a row for each created ticket
/// (one statement, so one snapshot: the load goes on while it runs).
pub async fn no_duplicates(db: &mut PgConnection) -> anyhow::Result<Verdict> {
    let row = sqlx::query(
        "WITH created AS (SELECT ticket_id, count(*) AS n FROM ticket_events WHERE kind = 'ticket.created' \
                          GROUP BY ticket_id) \
         SELECT (SELECT count(*) FROM created WHERE n > 1), \
                (SELECT count(*) FROM created c WHERE NOT EXISTS \
                    (SELECT 1 FROM execution_tickets t WHERE t.ticket_id = c.ticket_id)), \
                (SELECT count(*) FROM execution_tickets t WHERE NOT EXISTS \
                    (SELECT 1 FROM created c WHERE c.ticket_id = t.ticket_id))",
    )
    .fetch_one(db)
    .await?;
    let (twice, no_row, no_event): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(zero(
        twice + no_row + no_event,
        &format!("anomalies: {twice} created twice, {no_row} created without a row, {no_event} rows never created"),
    ))
}

/// Every live ticket whose deadline is not yet breached has its next SLA instant stored (so a restart re-arms
/// it: the breach at least is always ahead of a PENDING or RUNNING ticket).
pub async fn timers_armed(db: &mut PgConnection) -> anyhow::Result<Verdict> {
    let n = count(
        db,
        "SELECT count(*) FROM execution_tickets WHERE status IN ('PENDING', 'RUNNING') \
         AND next_due_at IS NULL AND sla_state->'breached_at' IS NULL",
    )
    .await?;
    Ok(zero(n, "live, unbreached tickets have no next SLA instant"))
}

/// No ticket left untouched since the restart at `since` is more than `grace_ms` past its SLA instant: the
/// timers re-armed at startup fired. Returns that verdict and, apart, how many tickets written since the
/// restart are that late (SLA lag under load, not a lost timer).
pub async fn due_ones_fired(
    db: &mut PgConnection,
    grace_ms: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<(Verdict, i64)> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE updated_at < $2), min(ticket_id) FILTER (WHERE updated_at < $2), \
                count(*) FILTER (WHERE updated_at >= $2) \
         FROM execution_tickets WHERE next_due_at < now() - make_interval(secs => $1::float8 / 1000)",
    )
    .bind(grace_ms as f64)
    .bind(since)
    .fetch_one(db)
    .await?;
    let (n, example, lagging): (i64, Option<String>, i64) = (row.get(0), row.get(1), row.get(2));
    let verdict = zero(
        n,
        &format!(
            "tickets unchanged since the restart and more than {grace_ms} ms past their SLA instant (e.g. {example:?})"
        ),
    );
    Ok((verdict, lagging))
}

/// No SLA rule fired twice: one warning per fraction, one breach, one start-overdue per PENDING spell, one
/// timeout per attempt.
pub async fn sla_once(db: &mut PgConnection) -> anyhow::Result<Verdict> {
    let n = count(
        db,
        "SELECT count(*) FROM (SELECT 1 FROM ticket_events WHERE actor = 'sla' \
         GROUP BY ticket_id, kind, details->>'fraction', details->>'attempt', details->>'pending_since' \
         HAVING count(*) > 1) d",
    )
    .await?;
    Ok(zero(n, "SLA events recorded twice"))
}

pub async fn sla_events(db: &mut PgConnection) -> anyhow::Result<i64> {
    count(db, "SELECT count(*) FROM ticket_events WHERE actor = 'sla'").await
}

/// Every event of a subscribed kind has its delivery to the subscription in the webhook outbox (both are
/// written in the change's transaction; an event committed without one is lost to the subscriber).
pub async fn deliveries_enqueued(db: &mut PgConnection, subscription: &str, kinds: &[&str]) -> anyhow::Result<Verdict> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let row = sqlx::query(
        "WITH ev AS (SELECT ticket_id, kind, at, count(*) AS n FROM ticket_events WHERE kind = ANY($1) \
                     GROUP BY 1, 2, 3), \
              dl AS (SELECT ticket_id, event_type, at, count(*) AS n FROM webhook_deliveries \
                     WHERE subscription_id = $2 GROUP BY 1, 2, 3) \
         SELECT coalesce(sum(ev.n - coalesce(dl.n, 0)), 0)::bigint, min(ev.kind || ' of ' || ev.ticket_id) \
         FROM ev LEFT JOIN dl ON dl.ticket_id = ev.ticket_id AND dl.event_type = ev.kind AND dl.at = ev.at \
         WHERE ev.n > coalesce(dl.n, 0)",
    )
    .bind(&kinds)
    .bind(subscription)
    .fetch_one(db)
    .await?;
    let (n, example): (i64, Option<String>) = (row.get(0), row.get(1));
    Ok(zero(n, &format!("subscribed events without a webhook delivery (e.g. {example:?})")))
}

/// The subscription's deliveries: (all ids, how many are not yet delivered).
pub async fn deliveries(db: &mut PgConnection, subscription: &str) -> anyhow::Result<(Vec<String>, i64)> {
    let rows = sqlx::query("SELECT id, status FROM webhook_deliveries WHERE subscription_id = $1")
        .bind(subscription)
        .fetch_all(db)
        .await?;
    let pending = rows.iter().filter(|r| r.get::<String, _>(1) != "delivered").count() as i64;
    Ok((rows.iter().map(|r| r.get::<String, _>(0)).collect(), pending))
}

/// Every delivery in the outbox reached the receiver (at least once), and every signature verified.
pub fn all_received(ids: &[String], pending: i64, got: &Received) -> (Verdict, Verdict) {
    let lost: Vec<&String> = ids.iter().filter(|id| !got.by_id.contains_key(*id)).collect();
    let received = match (lost.first(), pending) {
        (None, 0) => Ok(()),
        (first, _) => Err(format!(
            "{} of {} deliveries never received, {pending} not delivered (e.g. {first:?})",
            lost.len(),
            ids.len()
        )),
    };
    let signed = zero(got.bad_signatures as i64, "requests whose signature did not verify");
    (received, signed)
}

/// Every Kafka ticket the broker acknowledged is stored, and created once (redelivered messages after a
/// kill are recognised as the same ticket).
pub async fn kafka_stored(db: &mut PgConnection, produced: &[String]) -> anyhow::Result<Verdict> {
    let rows = sqlx::query(
        "SELECT t.ticket_id, (SELECT count(*) FROM ticket_events e \
                              WHERE e.ticket_id = t.ticket_id AND e.kind = 'ticket.created') \
         FROM execution_tickets t WHERE t.ticket_id = ANY($1)",
    )
    .bind(produced)
    .fetch_all(db)
    .await?;
    let stored: HashSet<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    let missing: Vec<&String> = produced.iter().filter(|id| !stored.contains(*id)).collect();
    let twice = rows.iter().filter(|r| r.get::<i64, _>(1) != 1).count();
    Ok(match (missing.first(), twice) {
        (None, 0) => Ok(()),
        (first, _) => Err(format!(
            "{} of {} Kafka tickets not stored (e.g. {first:?}), {twice} without exactly one ticket.created",
            missing.len(),
            produced.len()
        )),
    })
}
