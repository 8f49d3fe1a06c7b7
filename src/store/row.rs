//! The `execution_tickets` row, shared by both SQL stores: the column list, the SQL built from it, and the
//! conversion between a row and a [`Ticket`].

use std::sync::LazyLock;

use actors::enums::TicketStatus;
use actors::model::{Metadata, Millis, Qos, Sla, TicketSpec};
use actors::sla::SlaState;
use actors::store::StoreError;
use actors::Ticket;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::query_builder::Separated;
use sqlx::types::Json;
use sqlx::{Database, Encode, Type};

use super::Column;

/// Column order of every INSERT, UPDATE and SELECT (and of [`bind_row`]).
pub const COLUMNS: [&str; 37] = [
    "ticket_id",
    "plan_id",
    "intent_id",
    "decision_id",
    "correlation_id",
    "trace_id",
    "span_id",
    "task_id",
    "task_type",
    "description",
    "dependencies",
    "status",
    "priority",
    "risk_band",
    "sla_deadline",
    "sla_timeout_ms",
    "sla_max_retries",
    "qos_delivery_mode",
    "qos_consistency",
    "qos_durability",
    "parameters",
    "required_capabilities",
    "security_level",
    "created_at",
    "started_at",
    "completed_at",
    "estimated_duration_ms",
    "actual_duration_ms",
    "retry_count",
    "error_message",
    "compensation_ticket_id",
    "metadata",
    "schema_version",
    "version",
    "updated_at",
    "sla_state",
    "next_due_at",
];

/// `INSERT … ON CONFLICT DO NOTHING`: zero rows affected means the id is taken.
pub static INSERT: LazyLock<String> = LazyLock::new(|| {
    let params: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO execution_tickets ({}) VALUES ({}) ON CONFLICT (ticket_id) DO NOTHING",
        COLUMNS.join(", "),
        params.join(", ")
    )
});

/// The columns a change can touch. The spec (what was asked for) is written once, by the insert, and never
/// changes, so updates leave it alone (less to encode, send and parse on the hottest write path).
pub const LIFECYCLE: [&str; 11] = [
    "status",
    "started_at",
    "completed_at",
    "actual_duration_ms",
    "retry_count",
    "error_message",
    "compensation_ticket_id",
    "version",
    "updated_at",
    "sla_state",
    "next_due_at",
];

/// `UPDATE` of the lifecycle columns, guarded by the expected version (the last parameter): zero rows means a
/// conflict. Parameters: ticket_id, the [`LIFECYCLE`] columns in order ([`bind_lifecycle`]), expected version.
pub static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = LIFECYCLE.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 2)).collect();
    format!(
        "UPDATE execution_tickets SET {} WHERE ticket_id = $1 AND version = ${}",
        sets.join(", "),
        LIFECYCLE.len() + 2
    )
});

/// The lifecycle part of a row.
pub struct LifecycleRow {
    pub ticket_id: String,
    pub status: &'static str,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub sla_state: Json<SlaState>,
    pub next_due_at: Option<DateTime<Utc>>,
}

impl From<&Ticket> for LifecycleRow {
    fn from(t: &Ticket) -> Self {
        LifecycleRow {
            ticket_id: t.ticket_id.clone(),
            status: t.status.as_str(),
            started_at: t.started_at.map(to_time),
            completed_at: t.completed_at.map(to_time),
            actual_duration_ms: t.actual_duration_ms,
            retry_count: t.retry_count,
            error_message: t.error_message.clone(),
            compensation_ticket_id: t.compensation_ticket_id.clone(),
            version: t.version,
            updated_at: to_time(t.updated_at),
            sla_state: Json(t.sla_state.clone()),
            next_due_at: t.sla_state.next_due_at.map(to_time),
        }
    }
}

/// Bind ticket_id and the [`LIFECYCLE`] columns of a [`LifecycleRow`], in order.
pub fn bind_lifecycle<'q, DB: Database, B: Bind<'q, DB>>(b: B, r: LifecycleRow) -> B
where
    for<'s> &'s str: Encode<'s, DB> + Type<DB>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    b.value(r.ticket_id)
        .value(r.status)
        .value(r.started_at)
        .value(r.completed_at)
        .value(r.actual_duration_ms)
        .value(r.retry_count)
        .value(r.error_message)
        .value(r.compensation_ticket_id)
        .value(r.version)
        .value(r.updated_at)
        .value(r.sla_state)
        .value(r.next_due_at)
}

/// `SELECT` of all columns, for appending a `WHERE`.
pub static SELECT: LazyLock<String> = LazyLock::new(|| format!("SELECT {} FROM execution_tickets", COLUMNS.join(", ")));

/// One row, with the types both drivers bind and decode.
#[derive(Debug, sqlx::FromRow)]
pub struct TicketRow {
    pub ticket_id: String,
    pub plan_id: String,
    pub intent_id: String,
    pub decision_id: String,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub task_id: String,
    pub task_type: String,
    pub description: String,
    pub dependencies: Json<Vec<String>>,
    pub status: String,
    pub priority: String,
    pub risk_band: String,
    pub sla_deadline: DateTime<Utc>,
    pub sla_timeout_ms: i64,
    pub sla_max_retries: i32,
    pub qos_delivery_mode: String,
    pub qos_consistency: String,
    pub qos_durability: String,
    pub parameters: Json<serde_json::Map<String, serde_json::Value>>,
    pub required_capabilities: Json<Vec<String>>,
    pub security_level: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub estimated_duration_ms: Option<i64>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    pub metadata: Json<Metadata>,
    pub schema_version: i32,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub sla_state: Json<SlaState>,
    pub next_due_at: Option<DateTime<Utc>>,
}

/// Bind every column of a [`TicketRow`], in [`COLUMNS`] order: to a query's parameters, or to a row of a
/// multi-row `VALUES` (see [`Bind`]); the list of binds is written once.
pub fn bind_row<'q, DB: Database, B: Bind<'q, DB>>(b: B, r: TicketRow) -> B
where
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    b.value(r.ticket_id)
        .value(r.plan_id)
        .value(r.intent_id)
        .value(r.decision_id)
        .value(r.correlation_id)
        .value(r.trace_id)
        .value(r.span_id)
        .value(r.task_id)
        .value(r.task_type)
        .value(r.description)
        .value(r.dependencies)
        .value(r.status)
        .value(r.priority)
        .value(r.risk_band)
        .value(r.sla_deadline)
        .value(r.sla_timeout_ms)
        .value(r.sla_max_retries)
        .value(r.qos_delivery_mode)
        .value(r.qos_consistency)
        .value(r.qos_durability)
        .value(r.parameters)
        .value(r.required_capabilities)
        .value(r.security_level)
        .value(r.created_at)
        .value(r.started_at)
        .value(r.completed_at)
        .value(r.estimated_duration_ms)
        .value(r.actual_duration_ms)
        .value(r.retry_count)
        .value(r.error_message)
        .value(r.compensation_ticket_id)
        .value(r.metadata)
        .value(r.schema_version)
        .value(r.version)
        .value(r.updated_at)
        .value(r.sla_state)
        .value(r.next_due_at)
}

/// What values are bound to, one after another: a query's parameters ([`Query::bind`]), or one row of a
/// multi-row `VALUES` ([`Separated::push_bind`]).
pub trait Bind<'q, DB: Database>: Sized {
    fn value<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self;
}

impl<'q, DB: Database> Bind<'q, DB> for Query<'q, DB, <DB as Database>::Arguments<'q>> {
    fn value<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self {
        self.bind(value)
    }
}

impl<'q, DB: Database, Sep: std::fmt::Display> Bind<'q, DB> for &mut Separated<'_, 'q, DB, Sep> {
    fn value<T: 'q + Encode<'q, DB> + Type<DB>>(self, value: T) -> Self {
        self.push_bind(value)
    }
}

pub fn to_time(ms: Millis) -> DateTime<Utc> {
    // Validation bounds every timestamp to year 9999, which chrono represents.
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl From<&Ticket> for TicketRow {
    fn from(t: &Ticket) -> Self {
        let s = &t.spec;
        TicketRow {
            ticket_id: t.ticket_id.clone(),
            plan_id: s.plan_id.clone(),
            intent_id: s.intent_id.clone(),
            decision_id: s.decision_id.clone(),
            correlation_id: s.correlation_id.clone(),
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            task_id: s.task_id.clone(),
            task_type: s.task_type.as_str().to_owned(),
            description: s.description.clone(),
            dependencies: Json(s.dependencies.clone()),
            status: t.status.as_str().to_owned(),
            priority: s.priority.as_str().to_owned(),
            risk_band: s.risk_band.as_str().to_owned(),
            sla_deadline: to_time(s.sla.deadline),
            sla_timeout_ms: s.sla.timeout_ms,
            sla_max_retries: s.sla.max_retries,
            qos_delivery_mode: s.qos.delivery_mode.as_str().to_owned(),
            qos_consistency: s.qos.consistency.as_str().to_owned(),
            qos_durability: s.qos.durability.as_str().to_owned(),
            parameters: Json(s.parameters.clone()),
            required_capabilities: Json(s.required_capabilities.clone()),
            security_level: s.security_level.as_str().to_owned(),
            created_at: to_time(t.created_at),
            started_at: t.started_at.map(to_time),
            completed_at: t.completed_at.map(to_time),
            estimated_duration_ms: s.estimated_duration_ms,
            actual_duration_ms: t.actual_duration_ms,
            retry_count: t.retry_count,
            error_message: t.error_message.clone(),
            compensation_ticket_id: t.compensation_ticket_id.clone(),
            metadata: Json(s.metadata.clone()),
            schema_version: s.schema_version,
            version: t.version,
            updated_at: to_time(t.updated_at),
            sla_state: Json(t.sla_state.clone()),
            next_due_at: t.sla_state.next_due_at.map(to_time),
        }
    }
}

fn parse<T: std::str::FromStr<Err = actors::enums::UnknownVariant>>(v: &str) -> Result<T, StoreError> {
    v.parse().map_err(|e: actors::enums::UnknownVariant| StoreError::Corrupt(e.to_string()))
}

impl TryFrom<TicketRow> for Ticket {
    type Error = StoreError;
    fn try_from(r: TicketRow) -> Result<Self, StoreError> {
        Ok(Ticket {
            ticket_id: r.ticket_id,
            spec: TicketSpec {
                plan_id: r.plan_id,
                intent_id: r.intent_id,
                decision_id: r.decision_id,
                correlation_id: r.correlation_id,
                trace_id: r.trace_id,
                span_id: r.span_id,
                task_id: r.task_id,
                task_type: parse(&r.task_type)?,
                description: r.description,
                dependencies: r.dependencies.0,
                priority: parse(&r.priority)?,
                risk_band: parse(&r.risk_band)?,
                sla: Sla {
                    deadline: r.sla_deadline.timestamp_millis(),
                    timeout_ms: r.sla_timeout_ms,
                    max_retries: r.sla_max_retries,
                },
                qos: Qos {
                    delivery_mode: parse(&r.qos_delivery_mode)?,
                    consistency: parse(&r.qos_consistency)?,
                    durability: parse(&r.qos_durability)?,
                },
                parameters: r.parameters.0,
                required_capabilities: r.required_capabilities.0,
                security_level: parse(&r.security_level)?,
                estimated_duration_ms: r.estimated_duration_ms,
                metadata: r.metadata.0,
                schema_version: r.schema_version,
            },
            status: parse::<TicketStatus>(&r.status)?,
            created_at: r.created_at.timestamp_millis(),
            started_at: r.started_at.map(|t| t.timestamp_millis()),
            completed_at: r.completed_at.map(|t| t.timestamp_millis()),
            actual_duration_ms: r.actual_duration_ms,
            retry_count: r.retry_count,
            error_message: r.error_message,
            compensation_ticket_id: r.compensation_ticket_id,
            version: r.version,
            updated_at: r.updated_at.timestamp_millis(),
            sla_state: r.sla_state.0,
        })
    }
}

/// The audit outbox columns written by an insert, in bind order (`seq` and `txid` take their defaults).
pub const AUDIT_COLUMNS: &str =
    "event_id, ticket_id, kind, from_status, to_status, version, actor, at, details, traceparent";

/// An outbox row as read back: the writing transaction, the sequence number, then [`AUDIT_COLUMNS`].
pub type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
    i64,
    Json<serde_json::Value>,
    Option<String>,
);

pub fn audit_event(
    (_, _, event_id, ticket_id, kind, from_status, to_status, version, actor, at, details, traceparent): AuditRow,
) -> actors::history::AuditEvent {
    actors::history::AuditEvent {
        event_id,
        ticket_id,
        kind,
        from_status,
        to_status,
        version,
        actor,
        at,
        details: details.0,
        traceparent,
    }
}
