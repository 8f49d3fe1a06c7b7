//! The webhook tables of both SQL stores: subscriptions (the owner's JSON document plus health columns) and
//! the delivery outbox.

use sqlx::{Encode, Executor, IntoArguments, QueryBuilder, Transaction, Type};

use super::{Column, Dialect};

/// The delivery columns, in the order of [`DeliveryRow`].
pub const DELIVERY_COLUMNS: &str = "id, subscription_id, url, event_type, ticket_id, at, data, status, attempts, \
    last_status, last_error, next_attempt_at, created_at, delivered_at, traceparent";

/// The delivery columns as read back: `data` as text, decoded row by row ([`delivery`]), so that one row that
/// does not decode fails alone.
pub const DELIVERY_SELECT: &str = "id, subscription_id, url, event_type, ticket_id, at, CAST(data AS TEXT) AS data, \
    status, attempts, last_status, last_error, next_attempt_at, created_at, delivered_at, traceparent";

/// A delivery as read back.
pub type DeliveryRow = (
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    String,
    String,
    i32,
    Option<i32>,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
);

/// Decode a delivery row; a row that does not decode is `Corrupt`, naming it.
pub fn delivery(r: DeliveryRow) -> Result<actors::webhooks::Delivery, actors::store::StoreError> {
    let corrupt = |what: String| actors::store::StoreError::Corrupt(format!("delivery {}: {what}", r.0));
    let status =
        actors::webhooks::DeliveryStatus::parse(&r.7).ok_or_else(|| corrupt(format!("unknown status {:?}", r.7)))?;
    // Rows written before payloads were bounded may be nested deeper than serde_json's recursion limit.
    let data = serde_json::from_str(&r.6).map_err(|e| corrupt(format!("payload: {e}")))?;
    Ok(build(r, data, status))
}

/// For listings: a row whose payload does not decode is still listed (status, attempts, last error), its `data`
/// replaced by `{"undecodable": reason}`, so that one bad row does not hide a subscription's deliveries.
pub fn delivery_or_placeholder(r: DeliveryRow) -> actors::webhooks::Delivery {
    let data = serde_json::from_str(&r.6).unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
    let status = actors::webhooks::DeliveryStatus::parse(&r.7).unwrap_or(actors::webhooks::DeliveryStatus::Failed);
    build(r, data, status)
}

fn build(
    r: DeliveryRow,
    data: serde_json::Value,
    status: actors::webhooks::DeliveryStatus,
) -> actors::webhooks::Delivery {
    actors::webhooks::Delivery {
        id: r.0,
        subscription_id: r.1,
        url: r.2,
        event_type: r.3,
        ticket_id: r.4,
        at: r.5,
        data,
        status,
        attempts: r.8,
        last_status: r.9,
        last_error: r.10,
        next_attempt_at: r.11,
        created_at: r.12,
        delivered_at: r.13,
        traceparent: r.14,
    }
}

/// A subscription row: id, body, consecutive failures, failing since, disabled reason, created at.
pub type SubscriptionRow = (String, sqlx::types::Json<serde_json::Value>, i32, Option<i64>, Option<String>, i64);

pub fn subscription(r: SubscriptionRow) -> Result<actors::webhooks::Subscription, actors::store::StoreError> {
    let mut s: actors::webhooks::Subscription = serde_json::from_value(r.1 .0)
        .map_err(|e| actors::store::StoreError::Corrupt(format!("subscription {}: {e}", r.0)))?;
    s.id = r.0;
    s.consecutive_failures = r.2;
    s.failing_since = r.3;
    s.disabled_reason = r.4;
    s.created_at = r.5;
    Ok(s)
}

/// Insert deliveries (many per statement) inside a transaction.
pub async fn insert_deliveries<DB: Dialect>(
    tx: &mut Transaction<'_, DB>,
    deliveries: &[&actors::webhooks::Delivery],
) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    sqlx::types::Json<serde_json::Value>: Column<DB>,
{
    for chunk in deliveries.chunks(1000) {
        let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) "));
        q.push_values(chunk, |mut b, d| {
            b.push_bind(d.id.clone())
                .push_bind(d.subscription_id.clone())
                .push_bind(d.url.clone())
                .push_bind(d.event_type.clone())
                .push_bind(d.ticket_id.clone())
                .push_bind(d.at)
                .push_bind(sqlx::types::Json(d.data.clone()))
                .push_bind(d.status.as_str())
                .push_bind(d.attempts)
                .push_bind(d.last_status)
                .push_bind(d.last_error.clone())
                .push_bind(d.next_attempt_at)
                .push_bind(d.created_at)
                .push_bind(d.delivered_at)
                .push_bind(d.traceparent.clone());
        });
        DB::shorten(q.build()).execute(&mut **tx).await?;
    }
    Ok(())
}
