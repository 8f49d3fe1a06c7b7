//! Retention (issue #20): deleting finished tickets, taken outbox rows and finished webhook deliveries in small
//! batches. Each batch is one short transaction of at most `limit` rows (bounded lock time, nothing held open
//! that would hold the outbox horizon back); the pruner (`actors::system::pruner`) decides when and how many.
//!
//! What is never deleted is spelled out in [`Retention`]; here is how the SQL makes sure of it:
//! - tickets: a candidate is finished, last changed before the cut-off, listed in no unfinished ticket's
//!   dependencies and the compensation of no COMPENSATING ticket. The outer `DELETE` checks status and age again
//!   on the row as it deletes it, so a ticket retried (FAILED → PENDING is not finished, but a concurrent change
//!   of a finished one, e.g. its late SLA bookkeeping) between the choice and the delete is left alone.
//!   Candidates are found through the list index `(status, priority, created_at)` — every priority is named, so
//!   the cut-off bounds each range (a finished ticket was created before it finished) — and no index is added
//!   that every write would pay for.
//! - outbox rows: a window of up to `limit` rows in cursor order `(txid, seq)`, at or before every given
//!   consumer's cursor, so only rows each of them has taken; of these, those recorded before the cut-off whose
//!   ticket is not an unfinished one.
//! - deliveries: status `delivered` or `failed` (a redelivery makes one `pending` again), created before the
//!   cut-off and not delivered after it.

use std::sync::LazyLock;

use actors::enums::TicketStatus;
use actors::model::Metadata;
use actors::sla::SlaState;
use actors::store::{EventsPruned, Outbox, OutboxPosition, Retention, StoreError};
use actors::Millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};

use super::row::to_time;
use super::{store_error, Column, Dialect, SqlStore};

/// `('COMPLETED', …)`: the statuses of finished tickets, as SQL.
pub(super) static FINISHED: LazyLock<String> = LazyLock::new(|| status_list(true));
/// `('PENDING', …)`: every other status.
pub(super) static UNFINISHED: LazyLock<String> = LazyLock::new(|| status_list(false));

fn status_list(finished: bool) -> String {
    let names: Vec<String> = TicketStatus::SYMBOLS
        .iter()
        .filter(|s| s.parse::<TicketStatus>().is_ok_and(|s| s.is_terminal() == finished))
        .map(|s| format!("'{s}'"))
        .collect();
    format!("({})", names.join(", "))
}

/// The statement deleting one batch of finished tickets; `not_needed` is the driver's condition on the
/// candidate `c` that no unfinished ticket depends on it or is compensated by it.
pub(super) fn prune_tickets_sql(not_needed: &str) -> String {
    let priorities: Vec<String> = actors::enums::Priority::SYMBOLS.iter().map(|p| format!("'{p}'")).collect();
    let finished = &*FINISHED;
    format!(
        "DELETE FROM execution_tickets WHERE ticket_id IN (SELECT c.ticket_id FROM execution_tickets c \
         WHERE c.status IN {finished} AND c.priority IN ({}) AND c.created_at < $1 AND c.updated_at < $1 \
         AND {not_needed} LIMIT $2) AND status IN {finished} AND updated_at < $1",
        priorities.join(", ")
    )
}

/// The outbox rows of one window, in cursor order.
const EVENTS_WINDOW: &str = "SELECT txid, seq, at FROM ticket_events WHERE (txid, seq) > ($1, $2) \
     AND (txid, seq) <= ($3, $4) ORDER BY txid, seq LIMIT $5";

static PRUNE_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM ticket_events WHERE (txid, seq) > ($1, $2) AND (txid, seq) <= ($3, $4) AND at < $5 \
         AND NOT EXISTS (SELECT 1 FROM execution_tickets t WHERE t.ticket_id = ticket_events.ticket_id \
         AND t.status IN {})",
        *UNFINISHED
    )
});

const PRUNE_DELIVERIES: &str = "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
     WHERE status IN ('delivered', 'failed') AND created_at < $1 AND (delivered_at IS NULL OR delivered_at < $1) \
     LIMIT $2) AND status IN ('delivered', 'failed')";

#[async_trait]
impl<DB> Retention for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    bool: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<serde_json::Value>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    async fn prune_tickets(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        if !guard::<DB>(&mut tx).await? {
            return Ok(0);
        }
        let done = sqlx::query::<DB>(DB::prune_tickets_sql())
            .bind(to_time(before))
            .bind(limit)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(DB::rows_affected(&done))
    }

    async fn prune_events(
        &self,
        before: Millis,
        taken_by: &[Outbox],
        after: OutboxPosition,
        limit: i64,
    ) -> Result<EventsPruned, StoreError> {
        // Cursors only move forwards: a row at or before what was read here stays taken.
        let mut upto = OutboxPosition { txid: i64::MAX, seq: i64::MAX };
        for outbox in taken_by {
            upto = upto.min(self.outbox_cursor(*outbox).await?);
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        if !guard::<DB>(&mut tx).await? {
            return Ok(EventsPruned::default());
        }
        let window: Vec<(i64, i64, i64)> = sqlx::query_as::<DB, (i64, i64, i64)>(EVENTS_WINDOW)
            .bind(after.txid)
            .bind(after.seq)
            .bind(upto.txid)
            .bind(upto.seq)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let Some(&(txid, seq, _)) = window.last() else {
            // Ended here, not by dropping `tx`: a dropped transaction is rolled back only once its connection is
            // back in the pool, and until then it holds the guard's lock, so the next call would prune nothing.
            tx.rollback().await.map_err(store_error)?;
            return Ok(EventsPruned::default());
        };
        let end = OutboxPosition { txid, seq };
        let old = window.iter().any(|(_, _, at)| *at < before);
        let mut deleted = 0;
        if old {
            let done = sqlx::query::<DB>(&PRUNE_EVENTS)
                .bind(after.txid)
                .bind(after.seq)
                .bind(end.txid)
                .bind(end.seq)
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            deleted = DB::rows_affected(&done);
        }
        tx.commit().await.map_err(store_error)?;
        Ok(EventsPruned { deleted, window_end: Some(end), more: old && window.len() as i64 >= limit })
    }

    async fn prune_deliveries(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        if !guard::<DB>(&mut tx).await? {
            return Ok(0);
        }
        let done = sqlx::query::<DB>(PRUNE_DELIVERIES)
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(DB::rows_affected(&done))
    }
}

/// Whether this transaction may prune ([`Dialect::PRUNE_GUARD`]).
async fn guard<DB>(tx: &mut sqlx::Transaction<'_, DB>) -> Result<bool, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    bool: Column<DB>,
    usize: ColumnIndex<DB::Row>,
{
    match DB::PRUNE_GUARD {
        None => Ok(true),
        Some(sql) => sqlx::query_scalar::<DB, bool>(sql).fetch_one(&mut **tx).await.map_err(store_error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finished_and_unfinished_statuses_split_every_status() {
        assert_eq!(*super::FINISHED, "('COMPLETED', 'COMPENSATED', 'CANCELLED')");
        assert_eq!(*super::UNFINISHED, "('PENDING', 'RUNNING', 'FAILED', 'COMPENSATING')");
    }
}
